//go:build testhooks

package testhook

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Test builds read four variables:
//
//	SPINNERET_TEST_BOOT_ID=ID    the node's boot ID is ID (a "reboot" is a
//	                             call with another ID)
//	SPINNERET_TEST_KILL_AT=NAME  the process SIGKILLs itself at Point(NAME)
//	SPINNERET_TEST_FAIL_STEP=N   step N (0-based) fails after it is journaled
//	SPINNERET_TEST_KILL_STEP=N   the process SIGKILLs itself after journaling
//	                             step N; N = len(plan) kills after the last step
var (
	killAt            = os.Getenv("SPINNERET_TEST_KILL_AT")
	failStep, failSet = envInt("SPINNERET_TEST_FAIL_STEP")
	killStep, killSet = envInt("SPINNERET_TEST_KILL_STEP")
)

// BootID is SPINNERET_TEST_BOOT_ID when set, else real.
func BootID(real string) string {
	if id := os.Getenv("SPINNERET_TEST_BOOT_ID"); id != "" {
		return id
	}
	return real
}

// Point SIGKILLs the process when SPINNERET_TEST_KILL_AT names it.
func Point(name string) {
	if killAt == name {
		kill()
	}
}

// Step kills the process or fails the step as the variables say.
func Step(i int) error {
	if killSet && i == killStep {
		kill()
	}
	if failSet && i == failStep {
		return fmt.Errorf("injected fault at step %d", i)
	}
	return nil
}

func kill() {
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func envInt(name string) (int, bool) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}
