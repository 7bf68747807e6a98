//go:build testhooks

package txn

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Test builds read two variables:
//
//	SPINNERET_TEST_FAIL_STEP=N  step N (0-based) fails after it is journaled
//	SPINNERET_TEST_KILL_STEP=N  the process SIGKILLs itself after journaling
//	                            step N; N = len(plan) kills after the last step
func init() {
	fail, failSet := envInt("SPINNERET_TEST_FAIL_STEP")
	kill, killSet := envInt("SPINNERET_TEST_KILL_STEP")
	if !failSet && !killSet {
		return
	}
	hook = func(step int) error {
		if killSet && step == kill {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		if failSet && step == fail {
			return fmt.Errorf("injected fault at step %d", step)
		}
		return nil
	}
}

func envInt(name string) (int, bool) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}
