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
