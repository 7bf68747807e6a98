package cpupin

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// allowed gives each thread's Cpus_allowed_list.
func allowed(t *testing.T) map[string]string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads: %v", err)
	}
	out := map[string]string{}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
				out[p] = strings.TrimSpace(v)
			}
		}
	}
	return out
}

// TestPinRestore pins a running Go process (threads started before and
// after) to one CPU and gives it back what it had.
func TestPinRestore(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Fatal("the test needs 2 CPUs to tell a pin from the default")
	}
	was := allowed(t)
	if !Pin() {
		t.Fatal("Pin failed")
	}
	done := make(chan struct{})
	go func() { // a thread started after the pin
		runtime.LockOSThread()
		<-done
	}()
	defer close(done)
	for th, cpus := range allowed(t) {
		if strings.ContainsAny(cpus, "-,") {
			t.Errorf("%s: CPUs %s after Pin, want one", th, cpus)
		}
	}
	Restore()
	first := ""
	for _, cpus := range was {
		first = cpus
	}
	for th, cpus := range allowed(t) {
		if cpus != first {
			t.Errorf("%s: CPUs %s after Restore, want %s", th, cpus, first)
		}
	}
	Restore() // a second Restore does nothing
}
