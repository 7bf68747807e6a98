//go:build testhooks

package testhook

import (
	"os"
	"syscall"
)

// Point SIGKILLs the process when SPINNERET_TEST_KILL_AT names it.
func Point(name string) {
	if os.Getenv("SPINNERET_TEST_KILL_AT") == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
