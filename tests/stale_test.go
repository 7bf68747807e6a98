package tests

import (
	"os"
	"testing"

	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// TestRemoveStaleKeepsLiveRuns: the suite's start removes the namespaces a
// killed run left, but not those of a run still going on the same machine
// (a second `go test` beside CI took a live suite's namespaces away).
func TestRemoveStaleKeepsLiveRuns(t *testing.T) {
	// a process ID no process can have: the kernel's PID_MAX_LIMIT (pids
	// are below pid_max, which is at most that)
	const dead = "4194304"
	live, err := netlab.NewNS(netlab.OwnedPrefix("spnstale") + "-node")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	var gone []*netlab.NS
	for _, prefix := range []string{"spnstale-" + dead + "-node", "spnstale-node"} {
		ns, err := netlab.NewNS(prefix)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		gone = append(gone, ns)
	}
	n, err := netlab.RemoveStale("spnstale-")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("RemoveStale removed %d namespaces, want 2 (a dead run's and a name without a pid)", n)
	}
	if _, err := os.Stat(live.Path()); err != nil {
		t.Errorf("the live run's namespace %s was removed: %v", live.Name, err)
	}
	for _, ns := range gone {
		if _, err := os.Stat(ns.Path()); err == nil {
			t.Errorf("the stale namespace %s was kept", ns.Name)
		}
	}
}
