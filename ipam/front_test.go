package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// fakeKube is a kubernetes backend without an API server: it allocates
// from a list, and its ledger entries are fakeKubeHeld.
type fakeKube struct {
	addrs     []netip.Prefix
	fail      bool // Allocate fails after the first address
	allocated bool
	got       []string // names it "created"
}

type fakeKubeHeld struct {
	Objects  []string `json:"objects"`
	Complete bool     `json:"complete"`
}

var kubeReleased []string

func (h *fakeKubeHeld) Kind() string      { return "test.kube" }
func (h *fakeKubeHeld) HeldKey() string   { return "ipam.kube" }
func (h *fakeKubeHeld) String() string    { return "kube " + strings.Join(h.Objects, ",") }
func (h *fakeKubeHeld) Do(*txn.Env) error { return nil }
func (h *fakeKubeHeld) Check(*txn.Env) error {
	return nil
}
func (h *fakeKubeHeld) Undo(*txn.Env) error {
	if !h.Complete {
		kubeReleased = append(kubeReleased, "by-sandbox")
	}
	kubeReleased = append(kubeReleased, h.Objects...)
	return nil
}

func init() { txn.Register("test.kube", func() txn.Op { return &fakeKubeHeld{} }) }

func (k *fakeKube) Ledger(Owner) txn.Held {
	if !k.allocated {
		return &fakeKubeHeld{}
	}
	return &fakeKubeHeld{Objects: k.got, Complete: true}
}
func (k *fakeKube) Failed(Owner) txn.Held { return &fakeKubeHeld{Complete: true} }
func (k *fakeKube) Allocate(o Owner, reqs []Request) ([]Allocation, error) {
	k.allocated = true
	var out []Allocation
	for i, r := range reqs {
		if k.fail && i > 0 {
			return nil, Exhausted([]string{"k2"})
		}
		k.got = append(k.got, "obj-"+r.IfName)
		out = append(out, Allocation{IfName: r.IfName, Pool: "k", Address: k.addrs[i]})
	}
	return out, nil
}
func (k *fakeKube) Holds(a netip.Addr) bool                             { return false }
func (k *fakeKube) Quarantine(o Owner, a netip.Addr, t time.Time) error { return nil }

// fakePlugin writes a delegated IPAM plugin (a shell script) that answers
// ADD with addr and records each command it is run with in log.
func fakePlugin(t *testing.T, dir, addr string) (path, log string) {
	t.Helper()
	log = filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$CNI_COMMAND $CNI_IFNAME\" >> " + log + "\n" +
		"[ \"$CNI_COMMAND\" = ADD ] && echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"" + addr + "\"}]}'\nexit 0\n"
	if err := os.WriteFile(filepath.Join(dir, "fake-ipam"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, log
}

func calls(log string) string {
	b, _ := os.ReadFile(log)
	return strings.TrimSpace(string(b))
}

// TestFrontLedger drives the front against each backend at once: the
// local store, a kubernetes backend and a delegated plugin. Each entry is
// in the journal before its backend runs, the kubernetes one amended with
// its objects; a rollback of the journal releases every kind, and a
// failed ADD's rollback gives back only what it created.
func TestFrontLedger(t *testing.T) {
	dir := t.TempDir()
	bin, log := fakePlugin(t, dir, "10.7.0.5/24")
	j := txn.NewJournal(dir, "n", "c1", "eth0", "/run/netns/p", 0)
	local := NewLocal(dir)
	kube := &fakeKube{addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}}
	f := &Front{Journal: j, Owner: Owner{ContainerID: "c1", IfName: "eth0", Network: "n"}, Local: local, Kube: kube, Path: bin, NetNS: "/run/netns/p"}
	needs := []Need{
		{Request: Request{IfName: "eth0", Pools: []conf.Pool{pool(t, "l4", "192.0.2.0/24", "192.0.2.10", "192.0.2.20")}}},
		{Request: Request{IfName: "net1"}, Kube: true},
		{Request: Request{IfName: "net2"}, Delegate: &conf.DelegateIPAM{Type: "fake-ipam", Conf: json.RawMessage(`{"cniVersion":"1.0.0","name":"d","ipam":{"type":"fake-ipam"}}`)}},
	}
	got, err := f.Allocate(needs)
	if err != nil {
		t.Fatal(err)
	}
	if addrs(got.Addrs) != "192.0.2.10/24,198.51.100.7/24" || got.Delegated["net2"] == nil || got.Delegated["net2"].IPs[0].Address.String() != "10.7.0.5/24" {
		t.Fatalf("allocated %s, delegated %v", addrs(got.Addrs), got.Delegated)
	}
	if calls(log) != "ADD net2" {
		t.Fatalf("plugin calls %q", calls(log))
	}
	back, err := txn.LoadJournal(j.Path())
	if err != nil {
		t.Fatal(err)
	}
	var ledger []string
	for _, s := range back.Ledger() {
		ledger = append(ledger, s.Op.String())
	}
	if want := "addresses of c1:eth0 in the local store|kube obj-net1|addresses of net2 from IPAM plugin fake-ipam"; strings.Join(ledger, "|") != want {
		t.Fatalf("ledger on disk %q, want %q", strings.Join(ledger, "|"), want)
	}
	kubeReleased = nil
	env := txn.NewEnv("", 0)
	env.StateDir = dir
	if err := txn.Rollback(env, back); err != nil || len(back.Steps) != 0 {
		t.Fatalf("rollback: %v, left %d", err, len(back.Steps))
	}
	if c, _ := local.Claims(); len(c) != 0 {
		t.Fatalf("local claims left: %v", c)
	}
	if strings.Join(kubeReleased, ",") != "obj-net1" || calls(log) != "ADD net2\nDEL net2" {
		t.Fatalf("kube released %v, plugin calls %q", kubeReleased, calls(log))
	}
}

// TestFrontFailed: the kubernetes backend failing half way leaves its
// entry naming what the pod holds, the delegated plugin is never run, and
// Failed makes the rollback give back only what this ADD created.
func TestFrontFailed(t *testing.T) {
	dir := t.TempDir()
	bin, log := fakePlugin(t, dir, "10.7.0.5/24")
	j := txn.NewJournal(dir, "n", "c1", "eth0", "", 0)
	kube := &fakeKube{addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}, fail: true}
	f := &Front{Journal: j, Owner: Owner{ContainerID: "c1", IfName: "eth0", Network: "n"}, Local: NewLocal(dir), Kube: kube, Path: bin}
	needs := []Need{
		{Request: Request{IfName: "eth0", Pools: []conf.Pool{pool(t, "l4", "192.0.2.0/24", "192.0.2.10", "192.0.2.20")}}},
		{Request: Request{IfName: "net1"}, Kube: true},
		{Request: Request{IfName: "net2"}, Kube: true},
		{Request: Request{IfName: "net3"}, Delegate: &conf.DelegateIPAM{Type: "fake-ipam", Conf: json.RawMessage(`{"cniVersion":"1.0.0","name":"d"}`)}},
	}
	if _, err := f.Allocate(needs); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate: %v", err)
	}
	if calls(log) != "" {
		t.Fatalf("the delegated plugin ran after a backend failed: %q", calls(log))
	}
	if l := j.Ledger(); len(l) != 2 || !l[1].Op.(*fakeKubeHeld).Complete {
		t.Fatalf("ledger %v", l)
	}
	f.Failed()
	kubeReleased = nil
	env := txn.NewEnv("", 0)
	env.StateDir = dir
	if err := txn.Rollback(env, j); err != nil {
		t.Fatal(err)
	}
	if len(kubeReleased) != 0 {
		t.Fatalf("a failed ADD released what the pod held before: %v", kubeReleased)
	}
	if c, _ := f.Local.Claims(); len(c) != 0 {
		t.Fatalf("local claims left: %v", c)
	}
}

// TestFrontRecordsBeforeAllocating: a ledger entry that cannot be
// written stops the front before the kubernetes backend or a delegated
// plugin runs. (The local store's entry goes with the next write: its
// owner record is on disk before any claim.)
func TestFrontRecordsBeforeAllocating(t *testing.T) {
	dir := t.TempDir()
	bin, log := fakePlugin(t, dir, "10.7.0.5/24")
	notDir := filepath.Join(dir, "file") // a state dir that is a file: no journal can be written, even by root
	os.WriteFile(notDir, nil, 0o600)
	for _, need := range []Need{
		{Request: Request{IfName: "net1"}, Kube: true},
		{Request: Request{IfName: "net2"}, Delegate: &conf.DelegateIPAM{Type: "fake-ipam", Conf: json.RawMessage(`{"cniVersion":"1.0.0","name":"d"}`)}},
	} {
		kube := &fakeKube{addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}}
		j := txn.NewJournal(notDir, "n", "c1", "eth0", "", 0)
		f := &Front{Journal: j, Owner: Owner{ContainerID: "c1", IfName: "eth0", Network: "n"}, Local: NewLocal(dir), Kube: kube, Path: bin}
		if _, err := f.Allocate([]Need{need}); err == nil {
			t.Fatalf("%s: Allocate succeeded without its ledger entry", need.IfName)
		}
		if kube.allocated || calls(log) != "" {
			t.Fatalf("%s: a backend ran without its ledger entry (kube %v, plugin %q)", need.IfName, kube.allocated, calls(log))
		}
	}
}

// TestFrontStatics: a static address is honoured or refused, never
// dropped. One of a family the NIC's pools lack is refused before any
// backend runs; a delegated plugin is asked for it as CNI's ips capability
// (runtimeConfig.ips), and a result without it is refused with
// ErrStaticRefused, the plugin's run in the ledger for the rollback.
func TestFrontStatics(t *testing.T) {
	dir := t.TempDir()
	bin, log := fakePlugin(t, dir, "10.7.0.5/24")
	// the plugin's config as it was run: written by the fake on ADD
	script, _ := os.ReadFile(filepath.Join(bin, "fake-ipam"))
	os.WriteFile(filepath.Join(bin, "fake-ipam"), []byte(strings.Replace(string(script), "#!/bin/sh\n", "#!/bin/sh\ncat > "+filepath.Join(dir, "stdin")+"\n", 1)), 0o755)
	newFront := func() *Front {
		j := txn.NewJournal(dir, "n", "c1", "eth0", "", 0)
		return &Front{Journal: j, Owner: Owner{ContainerID: "c1", IfName: "eth0", Network: "n"}, Local: NewLocal(dir), Path: bin}
	}
	v4 := pool(t, "l4", "192.0.2.0/24", "192.0.2.10", "192.0.2.20")
	f := newFront()
	_, err := f.Allocate([]Need{
		{Request: Request{IfName: "net1", Pools: []conf.Pool{v4}, Static: []netip.Addr{netip.MustParseAddr("192.0.2.15"), netip.MustParseAddr("2001:db8::15")}}},
		{Request: Request{IfName: "net2"}, Delegate: &conf.DelegateIPAM{Type: "fake-ipam", Conf: json.RawMessage(`{"cniVersion":"1.0.0","name":"d"}`)}},
	})
	if !errors.Is(err, ErrStaticOutside) || !strings.Contains(err.Error(), "net1: static address 2001:db8::15: the network has no IPv6 pool (l4)") {
		t.Fatalf("Allocate: %v", err)
	}
	if c, _ := f.Local.Claims(); len(c) != 0 || calls(log) != "" || len(f.Journal.Ledger()) != 0 {
		t.Fatalf("refused statics took something: claims %v, plugin calls %q, ledger %v", c, calls(log), f.Journal.Ledger())
	}

	for _, c := range []struct {
		static string
		err    bool
	}{{"10.7.0.5", false}, {"10.7.0.9", true}} {
		f := newFront()
		got, err := f.Allocate([]Need{{Request: Request{IfName: "net2", Static: []netip.Addr{netip.MustParseAddr(c.static)}},
			Delegate: &conf.DelegateIPAM{Type: "fake-ipam", Conf: json.RawMessage(`{"cniVersion":"1.0.0","name":"d","runtimeConfig":{"other":1}}`)}}})
		var stdin struct {
			RuntimeConfig map[string]any `json:"runtimeConfig"`
		}
		b, _ := os.ReadFile(filepath.Join(dir, "stdin"))
		json.Unmarshal(b, &stdin)
		if ips := stdin.RuntimeConfig["ips"]; fmt.Sprint(ips) != "["+c.static+"]" || stdin.RuntimeConfig["other"] == nil {
			t.Fatalf("static %s: the plugin was run with runtimeConfig %v, want ips and the config's own", c.static, stdin.RuntimeConfig)
		}
		if !c.err {
			if err != nil || got.Delegated["net2"] == nil {
				t.Fatalf("static %s the plugin gave: %v", c.static, err)
			}
			continue
		}
		if !errors.Is(err, ErrStaticRefused) || !strings.Contains(err.Error(), "IPAM plugin fake-ipam did not honour it (gave 10.7.0.5/24") {
			t.Fatalf("static %s the plugin ignored: %v", c.static, err)
		}
		if l := f.Journal.Ledger(); len(l) != 1 {
			t.Fatalf("the plugin's run is not in the ledger for the rollback: %v", l)
		}
	}
}
