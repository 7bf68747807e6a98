package tests

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// TestDelEdgeCases: DEL with no netns path, for a container that never had
// an ADD, and after the pod netns is gone all succeed and free everything.
func TestDelEdgeCases(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	p1, _ := e.topo.NewPod()
	before := e.snapshot()

	e.mustDel(l, rtConf("never-added", p1))
	e.mustDel(l, rtConf("never-added", nil))

	// empty CNI_NETNS on DEL: the journal knows the namespace
	e.mustAdd(l, rtConf("c1", p1))
	e.mustDel(l, rtConf("c1", nil))
	if _, err := p1.NL().LinkByName("eth0"); err == nil {
		t.Fatal("eth0 still in the pod after DEL without netns path")
	}

	// the pod netns is deleted before DEL: links went with it, addresses
	// must still be released
	p2, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("c2", p2))
	path := p2.Path()
	e.topo.RemovePod(p2)
	e.mustDel(l, rtConf("c2", nil))
	e.mustDel(l, rtConf("c2", nil))
	if _, err := os.Stat(path); err == nil {
		t.Fatal("pod netns still exists")
	}

	// a journal no retry can read (a step without an operation, as a
	// fuzzer found): DEL sets it aside, releases the sandbox's addresses
	// and succeeds, every time
	p3, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("c3", p3))
	jp, _ := filepath.Glob(filepath.Join(e.stateDir(), "journal", "*", "c3:eth0.journal"))
	if len(jp) != 1 {
		t.Fatalf("journal of c3: %v", jp)
	}
	b, _ := os.ReadFile(jp[0])
	os.WriteFile(jp[0], append(b, []byte(`{"amend":{"index":0,"step":{}}}`+"\n")...), 0o600)
	e.topo.RemovePod(p3)
	e.mustDel(l, rtConf("c3", nil))
	e.mustDel(l, rtConf("c3", nil))
	if _, err := os.Stat(jp[0] + ".unreadable"); err != nil {
		t.Fatalf("the unreadable journal was not set aside: %v", err)
	}
	os.Remove(jp[0] + ".unreadable")
	e.sameAs(before)
}

// TestReplacedNetns: a journal whose namespace path now holds another
// namespace must not touch the new one.
func TestReplacedNetns(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.0.0", v4, "")
	p1, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("c1", p1))
	// a new pod gets an eth0 of its own under a different container
	p2, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("c2", p2))
	journal := txn.JournalPath(e.stateDir(), "underlay", "c1", "eth0")
	b, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	// point c1's journal at p2's namespace, as if the path had been reused
	os.WriteFile(journal, []byte(strings.ReplaceAll(string(b), p1.Path(), p2.Path())), 0o600)
	e.mustDel(l, rtConf("c1", nil))
	if _, err := p2.NL().LinkByName("eth0"); err != nil {
		t.Fatalf("DEL of c1 removed c2's eth0 in a namespace it does not own: %v", err)
	}
	e.mustDel(l, rtConf("c2", p2))
}

// TestGC: attachments missing from cni.dev/valid-attachments lose their
// links, journals and addresses; valid ones keep everything.
func TestGC(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	pods := make([]*netlab.NS, 3)
	for i := range pods {
		pods[i], _ = e.topo.NewPod()
	}
	e.mustAdd(l, rtConf("c0", pods[0]))
	before := e.snapshot(pods[0], pods[1], pods[2])
	e.mustAdd(l, rtConf("c1", pods[1]))
	e.mustAdd(l, rtConf("c2", pods[2]))
	// libcni's own cache makes it DEL stale attachments itself; clear the
	// cache so the plugin's GC is what cleans up, as after a runtime restart
	os.RemoveAll(filepath.Join(e.dir, "cache"))
	if err := e.gc(l, types.GCAttachment{ContainerID: "c0", IfName: "eth0"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.sameAs(before, pods[0], pods[1], pods[2])
	if err := e.check(l, rtConf("c0", pods[0])); err != nil {
		t.Fatalf("CHECK of the valid attachment after GC: %v", err)
	}
	e.mustDel(l, rtConf("c0", pods[0]))
}

// TestStatus: STATUS fails with code 50 when a pool is exhausted or the
// state dir is not writable.
func TestStatus(t *testing.T) {
	e := newEnv(t)
	small := `"ipam":{"pools":[{"name":"small","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.10","end":"192.0.2.11"}]}]}`
	l := e.confListRaw(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"spinneret","nodeConf":"` + e.dir + `/node.yaml","master":"uplink",` + small + `}]}`)
	if err := e.status(l); err != nil {
		t.Fatalf("STATUS on an empty pool: %v", err)
	}
	p1, _ := e.topo.NewPod()
	p2, _ := e.topo.NewPod()
	p3, _ := e.topo.NewPod()
	before := e.snapshot(p3)
	e.mustAdd(l, rtConf("c1", p1))
	e.mustAdd(l, rtConf("c2", p2))
	wantErr(t, e.status(l), types.ErrPluginNotAvailable, "small")
	_, err := e.add(l, rtConf("c3", p3))
	wantErr(t, err, cni.ErrPoolExhausted, `pool "small" is exhausted`)
	e.mustDel(l, rtConf("c1", p1))
	if err := e.status(l); err != nil {
		t.Fatalf("STATUS after a release: %v", err)
	}
	e.mustDel(l, rtConf("c2", p2))
	e.sameAs(before, p3)

	// a state dir that cannot be created
	os.WriteFile(filepath.Join(e.dir, "blocker"), nil, 0o644)
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), []byte("stateDir: "+e.dir+"/blocker/state\nlogFile: "+e.dir+"/spinneret.log\n"), 0o644)
	wantErr(t, e.status(l), types.ErrPluginNotAvailable, "state dir")
}

// TestAddErrors: every error a user can cause is reported by name and
// leaves nothing behind.
func TestAddErrors(t *testing.T) {
	e := newEnv(t)
	p, _ := e.topo.NewPod()
	cases := []struct {
		name, extra string
		code        uint
		msg         string
		setup       func()
	}{
		{"unknown field", `"colour":"blue"`, types.ErrInvalidNetworkConfig, `colour: unknown field (value "blue")`, nil},
		{"bad mode", `"mode":"bridgy"`, types.ErrInvalidNetworkConfig, `mode: "bridgy"`, nil},
		{"master missing on node", `"master":"nosuch0"`, types.ErrInvalidNetworkConfig, `master "nosuch0" not found`, nil},
		{"mtu above master", `"mtu":9000`, types.ErrInvalidNetworkConfig, "mtu 9000 is larger than master uplink0's mtu 1500", nil},
		{"interface exists", ``, types.ErrInvalidNetworkConfig, "interface eth0 already exists", func() {
			p.NL().LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.snapshot(p)
			if c.setup != nil {
				c.setup()
				if _, err := p.NL().LinkByName("eth0"); err != nil {
					// no dummy driver in this kernel: use a veth end instead
					p.NL().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"})
				}
				before = e.snapshot(p)
			}
			_, err := e.add(e.confList("1.0.0", dual, c.extra), rtConf("c1", p))
			wantErr(t, err, c.code, c.msg)
			e.sameAs(before, p)
		})
	}
}

// TestBoundedInput: a config larger than 1 MiB is refused before it is
// parsed; an error never echoes unbounded input (a 200 KiB value comes
// back cut, to the runtime and in the log); a reserved CNI_IFNAME is the
// runtime's mistake (code 4), found before anything is allocated.
func TestBoundedInput(t *testing.T) {
	e := newEnv(t)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	_, err := e.add(e.confList("1.0.0", dual, `"pad":"`+strings.Repeat("x", 1<<20)+`"`), rtConf("c1", p))
	wantErr(t, err, types.ErrInvalidNetworkConfig, "stdin: the config is larger than 1048576 bytes")
	long := strings.Repeat("y", 200<<10)
	_, err = e.add(e.confList("1.0.0", dual, `"colour":"`+long+`"`), rtConf("c1", p))
	wantErr(t, err, types.ErrInvalidNetworkConfig, "colour: unknown field")
	if n := len(err.Error()); n > 5000 {
		t.Errorf("the error echoes %d bytes of input", n)
	}
	rt := rtConf("c1", p)
	rt.IfName = "lo"
	_, err = e.add(e.confList("1.0.0", dual, ""), rt)
	wantErr(t, err, types.ErrInvalidEnvironmentVariables, `CNI_IFNAME: "lo" is reserved`)
	e.sameAs(before, p)
	if log, _ := os.ReadFile(filepath.Join(e.dir, "spinneret.log")); strings.Contains(string(log), strings.Repeat("y", 5000)) || !strings.Contains(string(log), `CNI_IFNAME: \"lo\" is reserved`) {
		t.Error("the plugin's log echoes the whole value, or has no line for the failure")
	}
}

// TestAddRefusesNodeNetns: CNI_NETNS naming the plugin's own namespace
// (the node's), PID 1's, or something that is no network namespace is
// refused with code 8 before anything is allocated or created. PID 1's is
// the machine's own namespace: its case names a master that exists
// nowhere, so even a plugin without the check stops before creating
// anything there.
func TestAddRefusesNodeNetns(t *testing.T) {
	e := newEnv(t)
	before := e.snapshot()
	mnt := filepath.Join(e.dir, "not-a-netns")
	os.WriteFile(mnt, nil, 0o644)
	for _, c := range []struct{ name, netns, extra, msg string }{
		{"the node's namespace by path", e.topo.Node.Path(), "", "is the plugin's own network namespace (the node's), not a pod's"},
		{"the plugin's own", "/proc/self/ns/net", "", "is the plugin's own network namespace (the node's), not a pod's"},
		{"PID 1's", "/proc/1/ns/net", `"master":"nosuch0"`, "is the network namespace of PID 1 (the node's), not a pod's"},
		{"a mount namespace", "/proc/self/ns/mnt", "", "not a network namespace"},
		{"a file", mnt, "", "not a network namespace"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rt := rtConf("c1", nil)
			rt.NetNS = c.netns
			msg := c.msg
			if _, err := os.Stat(c.netns); errors.Is(err, os.ErrPermission) {
				// this machine's PID 1 is not ours to look at (another
				// user namespace): refused because it cannot be opened
				msg = "permission denied"
			}
			_, err := e.add(e.confList("1.0.0", dual, c.extra), rt)
			wantErr(t, err, types.ErrInvalidNetNS, msg)
			e.sameAs(before)
		})
	}
}

func (e *env) confListRaw(s string) *libcni.NetworkConfigList {
	e.t.Helper()
	l, err := libcni.NetworkConfFromBytes([]byte(s))
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// TestDelWithBrokenConfig: a config or node conf broken after ADD (here a
// typo'd field) fails ADD, but DEL still cleans up from the journal.
func TestDelWithBrokenConfig(t *testing.T) {
	e := newEnv(t)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	e.mustAdd(e.confList("1.0.0", dual, ""), rtConf("c1", p))
	broken := e.confList("1.0.0", dual, `"mdoe":"bridge"`)
	_, err := e.add(broken, rtConf("c2", p))
	wantErr(t, err, types.ErrInvalidNetworkConfig, "mdoe: unknown field")
	e.mustDel(broken, rtConf("c1", p))
	e.sameAs(before, p)

	// a node conf broken after ADD: DEL still finds the journal in the
	// state dir the broken file names
	l := e.confList("1.0.0", dual, "")
	e.mustAdd(l, rtConf("c3", p))
	good, _ := os.ReadFile(filepath.Join(e.dir, "node.yaml"))
	appendFile(t, filepath.Join(e.dir, "node.yaml"), "colour: blue\napiTimeout: forever\n")
	_, err = e.add(l, rtConf("c4", p))
	wantErr(t, err, types.ErrInvalidNetworkConfig, "colour: unknown field")
	e.mustDel(l, rtConf("c3", p))
	e.sameAs(before, p)

	// one that is no YAML at all but names a state dir: where the journals
	// are is unknown, so DEL fails (a retry after the fix helps) until it
	// is fixed
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), good, 0o644)
	e.mustAdd(l, rtConf("c5", p))
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), append([]byte("\t: [\n"), good...), 0o644)
	err = e.del(l, rtConf("c5", p))
	wantErr(t, err, types.ErrInvalidNetworkConfig, "node conf")
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), good, 0o644)
	e.mustDel(l, rtConf("c5", p))
	e.sameAs(before, p)
}
