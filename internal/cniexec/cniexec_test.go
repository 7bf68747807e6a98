package cniexec

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/internal/cpupin"
)

// TestChildUnpinned: a program run through Exec by a pinned plugin does
// not inherit the pin.
func TestChildUnpinned(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Fatal("the test needs 2 CPUs to tell a pin from the default")
	}
	if !cpupin.Pin() {
		t.Fatal("Pin failed")
	}
	out, err := Exec.ExecPlugin(context.Background(), "/bin/sh", []byte("grep Cpus_allowed_list /proc/self/status"), []string{"PATH=/usr/bin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if cpus := strings.TrimSpace(strings.TrimPrefix(string(out), "Cpus_allowed_list:")); !strings.ContainsAny(cpus, "-,") {
		t.Fatalf("the child runs on CPUs %q: pinned", cpus)
	}
}
