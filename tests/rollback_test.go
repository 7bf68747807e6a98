package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/cni"
	_ "github.com/spinneret-cni/spinneret/drivers"         // registers op kinds
	_ "github.com/spinneret-cni/spinneret/internal/netops" // registers op kinds
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// planSteps runs one ADD and DEL to learn the plan's length for a family.
func planSteps(t *testing.T, e *env, fam family) int {
	t.Helper()
	l := e.confList("1.1.0", fam, "")
	p, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("probe", p))
	j, err := txn.LoadJournal(txn.JournalPath(e.stateDir(), "underlay", "probe", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	e.mustDel(l, rtConf("probe", p))
	e.topo.RemovePod(p)
	return len(j.Steps)
}

// TestRollback fails the ADD at each step of the plan in turn (and once
// after the last): the ADD reports the step, and the node, the pod and the
// pool are exactly as before.
func TestRollback(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := newEnv(t)
			n := planSteps(t, e, fam)
			l := e.confList("1.1.0", fam, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			for step := 0; step <= n; step++ {
				t.Setenv("SPINNERET_TEST_FAIL_STEP", strconv.Itoa(step))
				_, err := e.add(l, rtConf("c1", p))
				want := fmt.Sprintf("step %d/%d", min(step, n-1)+1, n)
				wantErr(t, err, cni.ErrStepFailed, want)
				if !strings.Contains(err.Error(), "injected fault") || !strings.Contains(err.Error(), "rolled back") {
					t.Fatalf("step %d: error %q does not name the cause and the rollback", step, err)
				}
				e.sameAs(before, p)
			}
			os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
			e.mustAdd(l, rtConf("c1", p)) // and the pool still serves
			e.mustDel(l, rtConf("c1", p))
		})
	}
}

// TestCrash SIGKILLs the binary after each journal step in turn (and after
// the last step, before the result): a following DEL leaves the node, the
// pod and the pool exactly as before.
func TestCrash(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := newEnv(t)
			n := planSteps(t, e, fam)
			l := e.confList("1.1.0", fam, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			for step := 0; step <= n; step++ {
				t.Setenv("SPINNERET_TEST_KILL_STEP", strconv.Itoa(step))
				_, err := e.add(l, rtConf("c1", p))
				if err == nil || !strings.Contains(err.Error(), "signal: killed") {
					t.Fatalf("kill at step %d: ADD returned %v, want the process killed", step, err)
				}
				journal := filepath.Join(e.stateDir(), "journal", "underlay", "c1.eth0.json")
				j, err := txn.LoadJournal(journal)
				if err != nil {
					t.Fatalf("kill at step %d: the journal must survive the crash: %v", step, err)
				}
				// the step about to run is already recorded (steps on the pod's
				// new link are recorded together with it)
				if len(j.Steps) < min(step+1, n) {
					t.Fatalf("kill at step %d: journal has only %d steps", step, len(j.Steps))
				}
				os.Unsetenv("SPINNERET_TEST_KILL_STEP")
				e.mustDel(l, rtConf("c1", p))
				e.sameAs(before, p)
			}
		})
	}
}
