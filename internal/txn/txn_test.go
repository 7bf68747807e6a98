package txn

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// decodedLog is the log of fakeOps read from journals.
var decodedLog []string

// fakeOp records Do/Undo calls in a shared log; it fails Do or Undo on demand.
type fakeOp struct {
	Name     string `json:"name"`
	FailDo   bool   `json:"failDo,omitempty"`
	FailUndo bool   `json:"failUndo,omitempty"`
	GiveUp   bool   `json:"giveUp,omitempty"`
	log      *[]string
}

func (o *fakeOp) Kind() string   { return "test.fake" }
func (o *fakeOp) String() string { return "fake " + o.Name }
func (o *fakeOp) Do(*Env) error {
	if o.log == nil {
		o.log = &decodedLog
	}
	*o.log = append(*o.log, "do "+o.Name)
	if o.FailDo {
		return errors.New("boom")
	}
	return nil
}
func (o *fakeOp) Undo(*Env) error {
	if o.log == nil {
		o.log = &decodedLog // read from a journal
	}
	*o.log = append(*o.log, "undo "+o.Name)
	if o.FailUndo {
		return errors.New("stuck")
	}
	if o.GiveUp {
		return Abandon(errors.New("never"))
	}
	return fmt.Errorf("already removed: %w", ErrGone)
}
func (o *fakeOp) Check(*Env) error { return nil }

func init() { Register("test.fake", func() Op { return &fakeOp{} }) }

func ops(log *[]string, names ...string) []Op {
	var out []Op
	for _, n := range names {
		op := &fakeOp{Name: strings.TrimSuffix(strings.TrimSuffix(n, "!"), "?"), FailDo: strings.HasSuffix(n, "!"), FailUndo: strings.HasSuffix(n, "?"), log: log}
		out = append(out, op)
	}
	return out
}

func TestApplySuccessJournalsEveryStep(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	if err := Apply(NewEnv("", 0), j, ops(&log, "a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	if strings.Join(log, ",") != "do a,do b,do c" {
		t.Fatalf("log = %v", log)
	}
	back, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Steps) != 3 || back.Steps[2].Op.(*fakeOp).Name != "c" {
		t.Fatalf("journal steps = %+v", back.Steps)
	}
}

func TestApplyFailureUndoesInReverse(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	err := Apply(NewEnv("", 0), j, ops(&log, "a", "b", "c!", "d"))
	var se *StepError
	if !errors.As(err, &se) || se.Index != 2 || se.UndoErr != nil {
		t.Fatalf("err = %v", err)
	}
	if err.Error() != "step 3/4 (fake c) failed: boom" {
		t.Fatalf("message = %q", err.Error())
	}
	// d was recorded (the whole plan is, up front) but never ran: its undo
	// runs too, and must be harmless
	if got := strings.Join(log, ","); got != "do a,do b,do c,undo d,undo c,undo b,undo a" {
		t.Fatalf("log = %s", got)
	}
	if len(j.Steps) != 0 {
		t.Fatalf("undone steps left in the journal: %v", j.Steps)
	}
}

func TestRollbackKeepsWhatCouldNotBeUndone(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	err := Apply(NewEnv("", 0), j, ops(&log, "a", "b?", "c!"))
	var se *StepError
	if !errors.As(err, &se) || se.UndoErr == nil || !strings.Contains(err.Error(), "rollback incomplete") || !strings.Contains(err.Error(), "undo step 2 (fake b): stuck") {
		t.Fatalf("err = %v", err)
	}
	if len(j.Steps) != 1 || j.Steps[0].Op.(*fakeOp).Name != "b" {
		t.Fatalf("journal keeps %v, want only b", j.Steps)
	}
}

// A step whose undo gives up is dropped from the journal (DEL converges)
// and reported in env.Abandoned; the others are undone as usual.
func TestRollbackDropsAbandonedSteps(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	steps := ops(&log, "a", "b", "c")
	steps[1].(*fakeOp).GiveUp = true
	j.Steps = Steps(steps)
	env := NewEnv("", 0)
	if err := Rollback(env, j); err != nil || len(j.Steps) != 0 {
		t.Fatalf("rollback: %v, left %v", err, j.Steps)
	}
	if len(env.Abandoned) != 1 || !errors.Is(env.Abandoned[0], ErrAbandoned) || !strings.Contains(env.Abandoned[0].Error(), "undo step 2 (fake b)") {
		t.Fatalf("abandoned %v", env.Abandoned)
	}
	if strings.Join(log, ",") != "undo c,undo b,undo a" {
		t.Fatalf("log %v", log)
	}
}

func TestStepJSONRoundTrip(t *testing.T) {
	var log []string
	b, err := json.Marshal(Steps(ops(&log, "x")))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `[{"kind":"test.fake","op":{"name":"x"}}]` {
		t.Fatalf("encoded %s", b)
	}
	// a kind this binary does not know is Foreign, and written back as
	// it was read, hints and all
	foreign := `[{"kind":"nope","op":{"a":1},"creates":["link/x"],"on":"link/y"}]`
	var back []Step
	if err := json.Unmarshal([]byte(foreign), &back); err != nil || !IsForeign(back[0].Op) {
		t.Fatalf("unknown kind: %v, %T", err, back[0].Op)
	}
	if b, err := json.Marshal(back); err != nil || string(b) != foreign {
		t.Fatalf("written back as %s (%v)", b, err)
	}
	// a step without kind or operation is damage, not a newer binary's
	for _, bad := range []string{`[{"op":{}}]`, `[{"kind":"x"}]`, `[{"kind":"x","op":null}]`, `[{}]`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s read as %T", bad, back[0].Op)
		}
	}
	// the hints a known step is written with, for an older binary
	b, _ = json.Marshal(Steps([]Op{&fakeLink{fakeOp{Name: "l"}}, &fakeOnLink{fakeOp: fakeOp{Name: "r"}, Link: "l"}, &fakeHeld{Key: "k"}}))
	if want := `[{"kind":"test.fake","op":{"name":"l"},"creates":["link/l"]},{"kind":"test.fake","op":{"name":"r","link":"l"},"on":"link/l"},{"kind":"test.held","op":{"key":"k"},"held":"k"}]`; string(b) != want {
		t.Fatalf("encoded %s\nwant    %s", b, want)
	}
}

func TestListAndRemoveJournals(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"a", "b"} {
		if err := NewJournal(dir, "net", id, "eth0", "", 0).Save(); err != nil {
			t.Fatal(err)
		}
	}
	js, err := ListJournals(dir, "net")
	if err != nil || len(js) != 2 {
		t.Fatalf("ListJournals = %v %v", js, err)
	}
	js[0].Remove()
	js[0].Remove()
	if _, err := LoadJournal(js[0].Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed journal: %v", err)
	}
	if js, _ := ListJournals(dir, "other"); len(js) != 0 {
		t.Fatal("journals of another network listed")
	}
}

func TestEnvPodGone(t *testing.T) {
	e := NewEnv("/nonexistent/netns", 0)
	if _, err := e.Handle(Pod); !errors.Is(err, ErrGone) {
		t.Fatalf("missing netns: %v", err)
	}
	if _, err := NewEnv("", 0).Handle(Pod); !errors.Is(err, ErrGone) {
		t.Fatalf("empty path: %v", err)
	}
	if _, err := NewEnv(os.DevNull, 0).Handle(Pod); err == nil || errors.Is(err, ErrGone) {
		t.Fatalf("a file that is not a netns: %v", err)
	}
}

type fakeLink struct{ fakeOp }

func (o *fakeLink) Creates() []string { return []string{"link/" + o.Name} }

type fakeOnLink struct {
	fakeOp
	Link string `json:"link"`
}

func (o *fakeOnLink) DependsOn() string { return "link/" + o.Link }

// TestRollbackSkipsWhatGoesWithItsLink: steps living on a link the journal
// created are not undone one by one; they go with the link. If deleting the
// link fails they stay in the journal with it.
func TestRollbackSkipsWhatGoesWithItsLink(t *testing.T) {
	for _, failLink := range []bool{false, true} {
		var log []string
		j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
		j.Steps = Steps([]Op{
			&fakeOnLink{fakeOp: fakeOp{Name: "host-route", log: &log}, Link: "host0"}, // not created here: undone
			&fakeLink{fakeOp{Name: "eth0", FailUndo: failLink, log: &log}},
			&fakeOnLink{fakeOp: fakeOp{Name: "addr", log: &log}, Link: "eth0"},
			&fakeOnLink{fakeOp: fakeOp{Name: "route", log: &log}, Link: "eth0"},
			&fakeOp{Name: "other", log: &log},
		})
		err := Rollback(NewEnv("", 0), j)
		if got := strings.Join(log, ","); got != "undo other,undo eth0,undo host-route" {
			t.Fatalf("failLink=%v: undo order %s", failLink, got)
		}
		if !failLink && (err != nil || len(j.Steps) != 0) {
			t.Fatalf("rollback: %v, left %v", err, j.Steps)
		}
		if failLink {
			var names []string
			for _, s := range j.Steps {
				names = append(names, s.Op.String())
			}
			if err == nil || strings.Join(names, ",") != "fake eth0,fake addr,fake route" {
				t.Fatalf("left after a failed link delete: %v (err %v)", names, err)
			}
		}
	}
}

// peekOp reads the journal back when it runs.
type peekOp struct {
	fakeOp
	j     *Journal
	saved *[]int
}

func (o *peekOp) Do(*Env) error {
	back, err := LoadJournal(o.j.Path())
	if err != nil {
		return err
	}
	*o.saved = append(*o.saved, len(back.Steps))
	return nil
}

// TestApplyRecordsThePlanFirst: the whole plan is on disk, in one write,
// before the first step runs.
func TestApplyRecordsThePlanFirst(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	var saved []int
	var plan []Op
	for _, op := range ops(&log, "a", "b", "c") {
		plan = append(plan, &peekOp{fakeOp: *op.(*fakeOp), j: j, saved: &saved})
	}
	if err := Apply(NewEnv("", 0), j, plan); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(saved) != "[3 3 3]" {
		t.Fatalf("journal lengths seen by steps = %v", saved)
	}
}

// TestJournalTornLine: a line torn by a crash (its step never ran) is
// ignored; everything before it is read back, and so is a commit.
func TestJournalTornLine(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "/run/netns/x", 42)
	if err := Apply(NewEnv("", 0), j, ops(&log, "a", "b")); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(j.Path(), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"step":{"kind":"test.fake","op":{"na`)
	f.Close()
	back, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Steps) != 2 || back.NetNS != "/run/netns/x" || back.NetNSIno != 42 || back.State != StateApplying {
		t.Fatalf("read back %+v", back)
	}
	if err := j.Commit([]byte(`{"cniVersion":"1.1.0"}`)); err != nil {
		t.Fatal(err)
	}
	if back, _ = LoadJournal(j.Path()); back.State != StateApplying {
		t.Fatal("a commit after a torn line must not be trusted")
	}
	j2 := NewJournal(t.TempDir(), "net", "c2", "eth0", "", 0)
	Apply(NewEnv("", 0), j2, ops(&log, "a"))
	j2.Commit([]byte(`{"cniVersion":"1.1.0"}`))
	if back, _ = LoadJournal(j2.Path()); back.State != StateCommitted || string(back.Result) != `{"cniVersion":"1.1.0"}` {
		t.Fatalf("commit read back as %s %s", back.State, back.Result)
	}
}

type fakeSweep struct {
	fakeOp
	gone bool // the namespace is gone
}

func (o *fakeSweep) Sweeps(key string) bool { return strings.HasPrefix(key, "link/") }

func (o *fakeSweep) Undo(env *Env) error {
	*o.log = append(*o.log, "undo "+o.Name)
	switch {
	case o.FailUndo:
		return errors.New("stuck")
	case o.gone:
		return ErrGone
	}
	return nil
}

// TestRollbackSweepsLinksTogether: links a sweeper covers are not deleted
// one by one; the sweeper's undo (recorded first, so undone last) removes
// them; if it fails they stay in the journal.
func TestRollbackSweepsLinksTogether(t *testing.T) {
	for _, failSweep := range []bool{false, true} {
		var log []string
		j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
		j.Steps = Steps([]Op{
			&fakeSweep{fakeOp: fakeOp{Name: "sweep", FailUndo: failSweep, log: &log}},
			&fakeLink{fakeOp{Name: "eth0", log: &log}},
			&fakeOnLink{fakeOp: fakeOp{Name: "addr", log: &log}, Link: "eth0"},
			&fakeOp{Name: "rule", log: &log},
			&fakeLink{fakeOp{Name: "net1", log: &log}},
		})
		err := Rollback(NewEnv("", 0), j)
		if got := strings.Join(log, ","); got != "undo rule,undo sweep" {
			t.Fatalf("failSweep=%v: undo order %s", failSweep, got)
		}
		var names []string
		for _, s := range j.Steps {
			names = append(names, s.Op.String())
		}
		if failSweep && (err == nil || strings.Join(names, ",") != "fake sweep,fake eth0,fake addr,fake net1") {
			t.Fatalf("after a failed sweep the journal keeps %v (err %v)", names, err)
		}
		if !failSweep && (err != nil || len(names) != 0) {
			t.Fatalf("after a sweep the journal keeps %v (err %v)", names, err)
		}
	}
}

// TestRollbackSweepGone: when the sweep finds its namespace gone, the links
// it would have deleted are undone one by one (a veth's other end may live
// in another namespace).
func TestRollbackSweepGone(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	j.Steps = Steps([]Op{
		&fakeSweep{fakeOp: fakeOp{Name: "sweep", log: &log}, gone: true},
		&fakeLink{fakeOp{Name: "veth", log: &log}},
		&fakeOnLink{fakeOp: fakeOp{Name: "neigh", log: &log}, Link: "veth"},
	})
	if err := Rollback(NewEnv("", 0), j); err != nil || len(j.Steps) != 0 {
		t.Fatalf("rollback: %v, left %v", err, j.Steps)
	}
	if got := strings.Join(log, ","); got != "undo sweep,undo veth" {
		t.Fatalf("undo order %s", got)
	}
}
