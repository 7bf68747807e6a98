package txn

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeHeld is a ledger entry that records its release in a package log
// (it is decoded from journals, so it cannot carry a pointer).
type fakeHeld struct {
	Key  string `json:"key"`
	What string `json:"what,omitempty"`
}

var released []string

func (h *fakeHeld) Kind() string     { return "test.held" }
func (h *fakeHeld) HeldKey() string  { return h.Key }
func (h *fakeHeld) String() string   { return "held " + h.Key + " " + h.What }
func (h *fakeHeld) Do(*Env) error    { return nil }
func (h *fakeHeld) Check(*Env) error { return nil }
func (h *fakeHeld) Undo(*Env) error  { released = append(released, h.Key+":"+h.What); return nil }
func (h *fakeHeld) MarshalJSON() ([]byte, error) {
	type plain fakeHeld
	return json.Marshal((*plain)(h))
}

func init() {
	Register("test.held", func() Op { return &fakeHeld{} })
	// the kinds a format 0 journal is read with (package ipam and
	// ipam/kubeipam register the real ones)
	Register("ipam.local", func() Op { return &fakeHeld{Key: "ipam.local"} })
	Register("ipam.kube", func() Op { return &fakeHeld{Key: "ipam.kube"} })
}

// readBack loads j's file and describes its steps.
func readBack(t *testing.T, j *Journal) (*Journal, []string) {
	t.Helper()
	back, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range back.Steps {
		got = append(got, s.Op.String())
	}
	return back, got
}

// TestHoldAmends: a ledger entry is on disk before it takes effect, a
// second Hold of the same key replaces it (an amend line), and the
// journal read back has the amended entry in its place, the plan after it.
func TestHoldAmends(t *testing.T) {
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "/run/netns/x", 7)
	if err := j.Hold(&fakeHeld{Key: "a", What: "intent"}); err != nil {
		t.Fatal(err)
	}
	if back, err := LoadJournal(j.Path()); err != nil || len(back.Steps) != 1 || back.Format != Format || back.BootID != BootID() {
		t.Fatalf("after the first Hold: %+v, %v", back, err)
	}
	var log []string
	j.Hold(&fakeHeld{Key: "b"})
	j.Hold(&fakeHeld{Key: "a", What: "objects"})
	if err := Apply(NewEnv("", 0), j, ops(&log, "x", "y")); err != nil {
		t.Fatal(err)
	}
	back, got := readBack(t, j)
	want := []string{"held a objects", "held b ", "fake x", "fake y"}
	if !slices.Equal(got, want) {
		t.Fatalf("steps read back %q, want %q", got, want)
	}
	if len(back.Ledger()) != 2 || len(back.Plan()) != 2 {
		t.Fatalf("ledger %d, plan %d", len(back.Ledger()), len(back.Plan()))
	}
}

// TestRollbackReleasesLedgerLast: the ledger is released after every plan
// step is undone, in reverse; while a plan step is left, no entry is
// released; RollbackPlan keeps the ledger.
func TestRollbackReleasesLedgerLast(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	j.Hold(&fakeHeld{Key: "a"})
	j.Hold(&fakeHeld{Key: "b"})
	j.Append(Steps(ops(&log, "x?", "y"))...)
	released = nil
	if err := Rollback(NewEnv("", 0), j); err == nil || len(released) != 0 || len(j.Ledger()) != 2 || len(j.Plan()) != 1 {
		t.Fatalf("x could not be undone: err %v, released %v, left %d", err, released, len(j.Steps))
	}
	j.Steps[2].Op.(*fakeOp).FailUndo = false
	if err := RollbackPlan(NewEnv("", 0), j); err != nil || len(released) != 0 || len(j.Steps) != 2 {
		t.Fatalf("RollbackPlan: err %v, released %v, left %d", err, released, len(j.Steps))
	}
	if err := Rollback(NewEnv("", 0), j); err != nil || !slices.Equal(released, []string{"b:", "a:"}) || len(j.Steps) != 0 {
		t.Fatalf("Rollback: err %v, released %v, left %d", err, released, len(j.Steps))
	}
}

// TestCarry: an earlier journal's ledger becomes the first steps of the
// next, written with its first write.
func TestCarry(t *testing.T) {
	dir := t.TempDir()
	old := NewJournal(dir, "net", "c1", "eth0", "", 0)
	old.Hold(&fakeHeld{Key: "a", What: "old"})
	var log []string
	old.Append(Steps(ops(&log, "x"))...)
	j := NewJournal(dir, "net", "c1", "eth0", "", 0)
	j.Carry(old.Ledger())
	j.Hold(&fakeHeld{Key: "a", What: "new"}) // same key: replaces the carried one
	j.Hold(&fakeHeld{Key: "b"})
	_, got := readBack(t, j)
	if want := []string{"held a new", "held b "}; !slices.Equal(got, want) {
		t.Fatalf("steps %q, want %q", got, want)
	}
}

// TestJournalFormat0: a journal without format (eb2b641's) is read as
// format 1 with the local store's entry and, when its header lists
// kubernetes objects, the kubernetes backend's, ahead of its steps.
func TestJournalFormat0(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c1:eth0.journal")
	v0 := `{"header":{"network":"net","containerID":"c1","ifname":"eth0","netns":"/x","ipam":[{"name":"blue-v4.192.0.2.1","rv":"7"}]}}
{"step":{"kind":"test.fake","op":{"name":"x"}}}
`
	os.WriteFile(path, []byte(v0), 0o600)
	j, err := LoadJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if j.Format != Format || len(j.IPAM) != 0 || len(j.Steps) != 3 || j.Steps[0].Op.(Held).HeldKey() != "ipam.local" || j.Steps[1].Op.(Held).HeldKey() != "ipam.kube" || len(j.Plan()) != 1 {
		t.Fatalf("read as %+v", j)
	}
	// a newer format is read (TestForeignSteps), its header as it is:
	// not as format 0 (no ledger entries made up for it)
	os.WriteFile(path, []byte(strings.Replace(v0, `"netns":"/x"`, `"netns":"/x","format":99`, 1)), 0o600)
	if j, err := LoadJournal(path); err != nil || j.Format != 99 || len(j.Steps) != 1 {
		t.Fatalf("format 99: %v, %+v", err, j)
	}
}

// fakeDurable is a step with state on disk besides its kernel objects.
type fakeDurable struct {
	fakeOp
	earlier *[]string
}

func (o *fakeDurable) UndoEarlierBoot(*Env) error {
	*o.earlier = append(*o.earlier, o.Name)
	return nil
}

// TestRollbackEarlierBoot: a journal of an earlier boot is rolled back without undoing a single kernel step: each is
// listed in env.LeftAlone. Durable steps release their disk state
// (UndoEarlierBoot, not Undo) and the ledger is released, last entry
// first; RollbackPlan keeps the ledger. The same journal of this boot
// undoes everything.
func TestRollbackEarlierBoot(t *testing.T) {
	for _, c := range []struct {
		name       string
		boot       string
		keepLedger bool
	}{{"earlier boot", "an-earlier-boot", false}, {"earlier boot, plan only", "an-earlier-boot", true}, {"this boot", BootID(), false}} {
		t.Run(c.name, func(t *testing.T) {
			var log, earlier []string
			released = nil
			j := NewJournal(t.TempDir(), "net", "c1", "eth0", "/run/netns/gone", 7)
			j.BootID = c.boot
			j.Hold(&fakeHeld{Key: "a"})
			j.Hold(&fakeHeld{Key: "b"})
			plan := ops(&log, "link", "route")
			plan = append(plan, &fakeDurable{fakeOp: fakeOp{Name: "parent", log: &log}, earlier: &earlier})
			if err := Apply(NewEnv("", 0), j, plan); err != nil {
				t.Fatal(err)
			}
			log = nil
			env := NewEnv("", 0)
			var err error
			if c.keepLedger {
				err = RollbackPlan(env, j)
			} else {
				err = Rollback(env, j)
			}
			if err != nil {
				t.Fatal(err)
			}
			wantReleased := []string{"b:", "a:"}
			if c.keepLedger {
				wantReleased = nil
			}
			if !slices.Equal(released, wantReleased) {
				t.Errorf("released %q, want %q", released, wantReleased)
			}
			if c.boot == BootID() {
				if want := []string{"undo parent", "undo route", "undo link"}; !slices.Equal(log, want) || len(earlier) != 0 || len(env.LeftAlone) != 0 {
					t.Errorf("this boot: undo %q, earlier-boot undo %q, left alone %q", log, earlier, env.LeftAlone)
				}
				return
			}
			if len(log) != 0 {
				t.Errorf("kernel steps of an earlier boot undone: %q", log)
			}
			if !slices.Equal(earlier, []string{"parent"}) {
				t.Errorf("durable steps released %q, want parent", earlier)
			}
			if want := []string{"step 3 (fake link)", "step 4 (fake route)"}; !slices.Equal(env.LeftAlone, want) {
				t.Errorf("left alone %q, want %q", env.LeftAlone, want)
			}
			if c.keepLedger && (len(j.Ledger()) != 2 || len(j.Plan()) != 0) || !c.keepLedger && len(j.Steps) != 0 {
				t.Errorf("journal after rollback: %d ledger, %d plan steps", len(j.Ledger()), len(j.Plan()))
			}
		})
	}
}
