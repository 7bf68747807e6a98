package txn

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// newerOp is a step of a kind only a "newer binary" knows: the test
// registers its kinds, writes journals, then unregisters them to read
// those journals as an older binary would.
type newerOp struct {
	kind  string
	Name  string `json:"name"`
	Makes string `json:"makes,omitempty"` // a link it creates
	On    string `json:"on,omitempty"`    // the link it lives on
}

// newerHeld is a ledger entry of a newer binary's backend.
type newerHeld struct {
	Key string `json:"key"`
}

var newerUndone []string

// knownLink and knownOnLink are fakeLink and fakeOnLink as kinds of their
// own, read back from journals as what they are.
type knownLink struct{ fakeLink }
type knownOnLink struct{ fakeOnLink }

func (*knownLink) Kind() string   { return "test.link" }
func (*knownOnLink) Kind() string { return "test.onlink" }

func link(name string) *knownLink { return &knownLink{fakeLink{fakeOp{Name: name}}} }
func onLink(name, l string) *knownOnLink {
	return &knownOnLink{fakeOnLink{fakeOp: fakeOp{Name: name}, Link: l}}
}
func plain(name string) *fakeOp { return &fakeOp{Name: name} }

func (o *newerOp) Kind() string      { return o.kind }
func (o *newerOp) String() string    { return "newer " + o.Name }
func (o *newerOp) Do(*Env) error     { return nil }
func (o *newerOp) Check(*Env) error  { return nil }
func (o *newerOp) Undo(*Env) error   { newerUndone = append(newerUndone, o.Name); return nil }
func (o *newerOp) DependsOn() string { return map[bool]string{true: "link/" + o.On}[o.On != ""] }
func (o *newerOp) Creates() []string {
	if o.Makes == "" {
		return nil
	}
	return []string{"link/" + o.Makes}
}

type newerDurable struct{ newerOp }

func (o *newerDurable) UndoEarlierBoot(*Env) error {
	newerUndone = append(newerUndone, "disk "+o.Name)
	return nil
}

func (h *newerHeld) Kind() string     { return "test.newer.held" }
func (h *newerHeld) HeldKey() string  { return h.Key }
func (h *newerHeld) String() string   { return "newer held " + h.Key }
func (h *newerHeld) Do(*Env) error    { return nil }
func (h *newerHeld) Check(*Env) error { return nil }
func (h *newerHeld) Undo(*Env) error  { newerUndone = append(newerUndone, "release "+h.Key); return nil }

var newerKinds = map[string]func() Op{
	"test.newer":         func() Op { return &newerOp{kind: "test.newer"} },
	"test.newer.durable": func() Op { return &newerDurable{newerOp{kind: "test.newer.durable"}} },
	"test.newer.held":    func() Op { return &newerHeld{} },
}

// asOlderBinary unregisters the newer kinds until the test ends, or
// until the returned function (the node upgraded again) restores them.
func asOlderBinary(t *testing.T) (upgrade func()) {
	for k := range newerKinds {
		delete(registry, k)
	}
	upgrade = func() {
		for k, f := range newerKinds {
			registry[k] = f
		}
	}
	t.Cleanup(upgrade)
	return upgrade
}

func init() {
	Register("test.link", func() Op { return &knownLink{} })
	Register("test.onlink", func() Op { return &knownOnLink{} })
	for k, f := range newerKinds {
		Register(k, f)
	}
}

// writeNewer writes, as a newer binary (format Format+1, a header field
// this binary does not know, a known kind's step marked "min"), the
// journal of an attachment: ledger entries of a known and a newer
// backend; a known link with a newer step on it; a newer host object
// with a known step on it; a known step marked for the newer format.
func writeNewer(t *testing.T, dir string, plan []Op, held ...Held) *Journal {
	t.Helper()
	j := NewJournal(dir, "net", "c1", "eth0", "/run/netns/gone", 7)
	j.Format = Format + 1
	for _, h := range held {
		if err := j.Hold(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := Apply(NewEnv("", 0), j, plan); err != nil {
		t.Fatal(err)
	}
	if err := j.Commit([]byte(`{"cniVersion":"1.1.0"}`)); err != nil {
		t.Fatal(err)
	}
	decodedLog = nil // what the newer binary did
	b, _ := os.ReadFile(j.Path())
	s := strings.Replace(string(b), `"format":2`, `"format":2,"shard":"b7"`, 1)
	s = strings.Replace(s, `{"kind":"test.fake","op":{"name":"marked"}}`, `{"kind":"test.fake","op":{"name":"marked","table":"vrf-b"},"min":2}`, 1)
	os.WriteFile(j.Path(), []byte(s), 0o600)
	return j
}

func stepNames(j *Journal) []string {
	var out []string
	for _, s := range j.Steps {
		out = append(out, s.Op.String())
	}
	return out
}

// TestForeignSteps: an older binary meeting a newer binary's journal (a
// node rolled back with pods running) reads it, undoes what it
// understands, keeps the rest with the whole ledger, and writes the kept
// steps back byte for byte with the newer header; upgraded again, the
// newer binary undoes the rest from that journal and releases the ledger.
func TestForeignSteps(t *testing.T) {
	released, newerUndone, decodedLog = nil, nil, nil
	plan := []Op{
		link("eth0"),
		&newerOp{kind: "test.newer", Name: "eth0-qdisc", On: "eth0"},
		&newerOp{kind: "test.newer", Name: "host-vrf", Makes: "vrf0"},
		onLink("vrf-route", "vrf0"),
		plain("marked"),
		plain("sysctl"),
	}
	j := writeNewer(t, t.TempDir(), plan, &fakeHeld{Key: "local"}, &newerHeld{Key: "blocks"})
	orig, _ := os.ReadFile(j.Path())
	upgrade := asOlderBinary(t)

	old, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatalf("an older binary refuses a newer journal: %v", err)
	}
	want := []string{"held local ", "test.newer.held step (a kind this binary does not know)", "fake eth0",
		"test.newer step (a kind this binary does not know)", "test.newer step (a kind this binary does not know)", "fake vrf-route",
		"test.fake step for journal format 2 (this binary reads 1)", "fake sysctl"}
	if got := stepNames(old); !slices.Equal(got, want) || old.State != StateCommitted || old.Format != Format+1 {
		t.Fatalf("read as %q (%s, format %d)\nwant %q", got, old.State, old.Format, want)
	}
	env := NewEnv("", 0)
	if err := Rollback(env, old); err != nil {
		t.Fatalf("rollback of what it understands: %v", err)
	}
	// eth0 (and the newer step on it) goes; the newer host object, the
	// known route on it, the marked step and the ledger stay
	if got := strings.Join(decodedLog, ","); got != "undo sysctl,undo eth0" {
		t.Errorf("undone %s, want sysctl and eth0", got)
	}
	if len(released) != 0 || len(newerUndone) != 0 {
		t.Errorf("released %q, newer steps undone %q: an older binary must not", released, newerUndone)
	}
	if !old.Kept() || len(env.Foreign) != 2 {
		t.Fatalf("kept %v, env.Foreign %q", old.Kept(), env.Foreign)
	}
	want = []string{"held local ", "test.newer.held step (a kind this binary does not know)",
		"test.newer step (a kind this binary does not know)", "fake vrf-route", "test.fake step for journal format 2 (this binary reads 1)"}
	if got := stepNames(old); !slices.Equal(got, want) {
		t.Fatalf("kept %q\nwant %q", got, want)
	}
	if err := old.Save(); err != nil {
		t.Fatal(err)
	}
	saved, _ := os.ReadFile(old.Path())
	origLines := strings.Split(string(orig), "\n")
	for _, l := range strings.Split(strings.TrimSpace(string(saved)), "\n") {
		if strings.Contains(l, "newer") || strings.Contains(l, `"min"`) || strings.Contains(l, `"header"`) {
			if !slices.Contains(origLines, l) {
				t.Errorf("written back changed: %s\nfrom:\n%s", l, orig)
			}
		}
	}
	if !strings.Contains(string(saved), `"shard":"b7"`) {
		t.Errorf("the newer header's field lost:\n%s", saved)
	}
	// a second DEL by the older binary: nothing more to do, the same kept
	decodedLog = nil
	again, err := LoadJournal(old.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := Rollback(NewEnv("", 0), again); err != nil || !again.Kept() || len(decodedLog) != 0 || len(again.Steps) != 5 {
		t.Fatalf("second rollback: %v, kept %d, undone %q", err, len(again.Steps), decodedLog)
	}

	// upgraded again: the rest is undone, the ledger released (the
	// marked step's format is this test binary's too, once unmarked)
	upgrade()
	decodedLog = nil
	b, _ := os.ReadFile(old.Path())
	os.WriteFile(old.Path(), []byte(strings.Replace(string(b), `,"min":2`, "", 1)), 0o600)
	newer, err := LoadJournal(old.Path())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range newer.Steps {
		if IsForeign(s.Op) {
			t.Errorf("the newer binary reads %s as foreign", s.Op)
		}
	}
	env = NewEnv("", 0)
	if err := Rollback(env, newer); err != nil || newer.Kept() {
		t.Fatalf("the newer binary's rollback: %v, kept %q", err, stepNames(newer))
	}
	if got := strings.Join(append(decodedLog, newerUndone...), ","); got != "undo marked,host-vrf,release blocks" || !slices.Equal(released, []string{"local:"}) {
		t.Errorf("undone %s, released %q", got, released)
	}
}

// TestForeignStepOnKnownLink: a newer step living on a link this binary
// creates goes with the link; nothing is kept and the ledger is released.
func TestForeignStepOnKnownLink(t *testing.T) {
	released, newerUndone, decodedLog = nil, nil, nil
	j := writeNewer(t, t.TempDir(), []Op{
		link("eth0"),
		&newerOp{kind: "test.newer", Name: "eth0-qdisc", On: "eth0"},
	}, &fakeHeld{Key: "local"})
	asOlderBinary(t)
	old, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	env := NewEnv("", 0)
	if err := Rollback(env, old); err != nil || old.Kept() || len(env.Foreign) != 0 {
		t.Fatalf("rollback: %v, kept %q, foreign %q", err, stepNames(old), env.Foreign)
	}
	if !slices.Equal(released, []string{"local:"}) || !slices.Equal(decodedLog, []string{"undo eth0"}) {
		t.Errorf("released %q, undone %q", released, decodedLog)
	}
}

// TestForeignEarlierBoot: a newer journal of an earlier boot: the newer
// kernel steps went with the boot (left alone), a newer step with state
// on disk is kept, and so is the ledger.
func TestForeignEarlierBoot(t *testing.T) {
	released, newerUndone, decodedLog = nil, nil, nil
	j := writeNewer(t, t.TempDir(), []Op{
		link("eth0"),
		&newerOp{kind: "test.newer", Name: "host-vrf", Makes: "vrf0"},
		&newerDurable{newerOp{kind: "test.newer.durable", Name: "parent-users"}},
	}, &fakeHeld{Key: "local"})
	b, _ := os.ReadFile(j.Path())
	os.WriteFile(j.Path(), []byte(strings.Replace(string(b), `"bootID":"`+BootID()+`"`, `"bootID":"an-earlier-boot"`, 1)), 0o600)
	asOlderBinary(t)
	old, err := LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !old.EarlierBoot() {
		t.Fatal("not of an earlier boot")
	}
	env := NewEnv("", 0)
	if err := Rollback(env, old); err != nil {
		t.Fatal(err)
	}
	if got := stepNames(old); !slices.Equal(got, []string{"held local ", "test.newer.durable step (a kind this binary does not know)"}) {
		t.Errorf("kept %q", got)
	}
	if len(env.LeftAlone) != 2 || len(released) != 0 || len(decodedLog) != 0 {
		t.Errorf("left alone %q, released %q, undone %q", env.LeftAlone, released, decodedLog)
	}
}

// TestUnknownRecord: a kind of record a newer binary wrote is damage,
// not skipped: LoadJournal refuses, LoadJournalPrefix reads up to it.
func TestUnknownRecord(t *testing.T) {
	var log []string
	j := NewJournal(t.TempDir(), "net", "c1", "eth0", "", 0)
	if err := Apply(NewEnv("", 0), j, ops(&log, "a")); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(j.Path(), os.O_WRONLY|os.O_APPEND, 0)
	json.NewEncoder(f).Encode(map[string]any{"fence": map[string]int{"index": 0}})
	f.WriteString(`{"step":{"kind":"test.fake","op":{"name":"b"}}}` + "\n")
	f.Close()
	if _, err := LoadJournal(j.Path()); err == nil || !strings.Contains(err.Error(), "a record this binary does not know") {
		t.Fatalf("unknown record: %v", err)
	}
	p, damage, err := LoadJournalPrefix(j.Path())
	if err != nil || damage == nil || len(p.Steps) != 1 {
		t.Fatalf("prefix: %v, %v, %d steps", err, damage, len(p.Steps))
	}
}
