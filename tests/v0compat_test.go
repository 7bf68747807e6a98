package tests

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/request"
)

// v0Fixtures holds the state dir (journal and local IPAM store) that the
// binary of eb2b641, whose journals carry no format version ("v0"), left
// after ADD of v0Scenario's pod. Regenerate it (only if the scenario
// changes) with an eb2b641 build:
//
//	SPINNERET_V0_BIN=<its directory> go test -count=1 -run TestJournalV0 ./tests/
const v0Fixtures = "testdata/v0"

// v0Scenario is the pod the fixtures describe: eth0, net1 and net2 on
// three networks, dual stack, the underlay coordinator on (veth, node
// routes in table 500, policy routing in the pod).
func v0Scenario(t *testing.T, e *env, bin string) (*libcni.NetworkConfigList, *libcni.RuntimeConf, *netlab.NS) {
	t.Helper()
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(e.dir, "cache"), nil)
	p, err := e.topo.NewPod()
	if err != nil {
		t.Fatal(err)
	}
	return e.multiConf(dual, ""), podRT("v0pod", p, map[string]string{request.AnnotNetworks: "blue, green"}), p
}

// v0Placeholders are what differs between runs: the pod netns path and
// inode, and the state dir.
func v0Placeholders(e *env, p *netlab.NS) [][2]string {
	ino, _ := txn.PodNetNSInode(p.Path())
	return [][2]string{{e.stateDir(), "{{STATEDIR}}"}, {p.Path(), "{{NETNS}}"}, {`"netnsInode":` + strconv.FormatUint(ino, 10), `"netnsInode":{{INO}}`}}
}

// copyState copies a state dir's files (not its lock stripes) from src to
// dst, replacing each placeholder pair's first string with its second.
func copyState(t *testing.T, src, dst string, repl [][2]string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if strings.HasPrefix(rel, "locks"+string(filepath.Separator)) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o700); err != nil {
			return err
		}
		subst := func(b []byte) []byte {
			for _, r := range repl {
				b = bytes.ReplaceAll(b, []byte(r[0]), []byte(r[1]))
			}
			return b
		}
		if d.Type()&fs.ModeSymlink != 0 { // a local IPAM claim: its text is the link's target
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(string(subst([]byte(target))), filepath.Join(dst, rel))
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), subst(b), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestJournalV0: journals and state written by eb2b641 are understood by
// this binary. The pod is attached by this binary (so the kernel holds
// what the fixture's journal describes), its state dir is then replaced by
// the fixtures; CHECK finds no drift, and DEL, or GC, leaves the node,
// the pod and the IPAM store exactly as before the ADD.
func TestJournalV0(t *testing.T) {
	if bin := os.Getenv("SPINNERET_V0_BIN"); bin != "" {
		e := multiEnv(t)
		l, rt, p := v0Scenario(t, e, bin)
		e.mustAdd(l, rt)
		os.RemoveAll(v0Fixtures)
		inv := v0Placeholders(e, p)
		copyState(t, e.stateDir(), v0Fixtures, inv)
		e.mustDel(l, rt)
		t.Logf("fixtures written to %s from %s", v0Fixtures, bin)
		return
	}
	for _, verb := range []string{"DEL", "GC"} {
		t.Run(verb, func(t *testing.T) {
			e := multiEnv(t)
			l, rt, p := v0Scenario(t, e, prodBinDir)
			before := e.snapshot(p)
			e.mustAdd(l, rt)
			var back [][2]string
			for _, r := range v0Placeholders(e, p) {
				back = append(back, [2]string{r[1], r[0]})
			}
			// the kernel gave this ADD's links other MACs than the
			// fixture's: the fixture's, interface by interface, become these
			back = append(back, macsOf(t, filepath.Join(v0Fixtures, "journal/multi/v0pod:eth0.journal"), filepath.Join(e.stateDir(), "journal/multi/v0pod:eth0.journal"))...)
			os.RemoveAll(e.stateDir())
			copyState(t, v0Fixtures, e.stateDir(), back)
			if err := e.check(l, rt); err != nil {
				t.Fatalf("CHECK on the v0 journal: %v", err)
			}
			if verb == "DEL" {
				e.mustDel(l, rt)
			} else if err := e.gc(l); err != nil {
				t.Fatalf("GC: %v", err)
			}
			e.sameAs(before, p)
		})
	}
}

// macsOf pairs each interface's MAC in the result of journal old with its
// MAC in the result of journal cur.
func macsOf(t *testing.T, old, cur string) [][2]string {
	t.Helper()
	macs := func(path string) map[string]string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			Interfaces []struct{ Name, Mac, Sandbox string }
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			if bytes.HasPrefix(line, []byte(`{"commit":`)) { // the header holds placeholders: not JSON
				var rec struct{ Commit json.RawMessage }
				if err := json.Unmarshal(line, &rec); err != nil || json.Unmarshal(rec.Commit, &res) != nil {
					t.Fatalf("%s: commit line: %v", path, err)
				}
			}
		}
		out := map[string]string{}
		for _, i := range res.Interfaces {
			out[i.Name+"@"+strconv.FormatBool(i.Sandbox != "")] = i.Mac
		}
		return out
	}
	o, c := macs(old), macs(cur)
	var out [][2]string
	for name, m := range o {
		if c[name] == "" {
			t.Fatalf("interface %s of the fixture is not in this ADD's result %v", name, c)
		}
		out = append(out, [2]string{m, c[name]})
	}
	return out
}

// TestJournalNewer: a node rolled back to this binary with pods attached
// by a newer one meets journals of a newer format, with steps of kinds it
// does not know. A step that lives on a pod link (its "on" hint) goes
// with the link: DEL leaves nothing. A step of its own (a host object)
// is kept: DEL succeeds, undoes everything else (the node and the pod are
// as before the ADD), and keeps that step and the addresses in the
// journal, again at every DEL and GC; the binary that wrote the step,
// once it has undone it (here: the line removed), finds a journal it can
// finish, and the node is then as before.
func TestJournalNewer(t *testing.T) {
	for _, c := range []struct{ name, step string }{
		{"on a pod link", `{"step":{"kind":"future.qdisc","op":{"dev":"eth0","rate":"1g"},"on":"pod/link/eth0"}}`},
		{"of its own", `{"step":{"kind":"future.hostobject","op":{"name":"spn-b7"},"creates":["host/future/spn-b7"]}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := multiEnv(t)
			l, rt, p := v0Scenario(t, e, prodBinDir)
			before := e.snapshot(p)
			dumps := func() string {
				n, _ := e.topo.Node.Dump()
				d, _ := p.Dump()
				return n + "\n" + d
			}
			kernelBefore := dumps()
			e.mustAdd(l, rt)
			path := txn.JournalPath(e.stateDir(), "multi", rt.ContainerID, "eth0")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// as the newer binary wrote it: format 2, a header field and
			// a step this binary does not know, before the commit
			s := strings.Replace(string(b), `"format":1`, `"format":2,"shard":"b7"`, 1)
			i := strings.Index(s, `{"commit":`)
			s = s[:i] + c.step + "\n" + s[i:]
			os.WriteFile(path, []byte(s), 0o600)
			if err := e.check(l, rt); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			if c.name == "on a pod link" {
				e.sameAs(before, p)
				return
			}
			if got := dumps(); got != kernelBefore {
				t.Fatalf("DEL left kernel state:\n%s", netlab.Diff(kernelBefore, got))
			}
			for _, verb := range []string{"DEL", "GC"} {
				if verb == "DEL" {
					e.mustDel(l, rt)
				} else if err := e.gc(l); err != nil {
					t.Fatalf("GC: %v", err)
				}
				kept, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("after %s: the journal of a newer binary's step is gone: %v", verb, err)
				}
				claims, _ := ipam.NewLocal(e.stateDir()).Claims()
				if !strings.Contains(string(kept), c.step) || !strings.Contains(string(kept), `"shard":"b7"`) || len(claims) == 0 {
					t.Fatalf("after %s: kept %d claims and journal\n%s", verb, len(claims), kept)
				}
			}
			// the newer binary undid its step
			kept, _ := os.ReadFile(path)
			os.WriteFile(path, bytes.Replace(kept, []byte(c.step+"\n"), nil, 1), 0o600)
			e.mustDel(l, rt)
			e.sameAs(before, p)
		})
	}
}
