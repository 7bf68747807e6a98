package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/ipam"
)

// binDir holds the spinneret binary under test, built with the testhooks
// tag (fault injection and self-SIGKILL at a chosen plan step); prodBinDir
// holds the production build, for benchmarks.
var binDir, prodBinDir string

// prodBuildFlags are the production build's flags (the Makefile's build and
// image targets); the suite's binaries are built with them and
// CGO_ENABLED=0, static as a plugin copied onto a host must be.
var prodBuildFlags = []string{"-trimpath", "-ldflags=-s -w"}

func TestMain(m *testing.M) {
	if mode := os.Getenv("SPINNERET_IPAM_LOADER"); mode != "" {
		runLoader(mode) // a simulated node of TestKubeIPAMScale
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tests: the netns suite needs root (it creates network namespaces); run `make test` as root")
		os.Exit(1)
	}
	// a test binary killed mid-run (a CI timeout) cannot clean up; its
	// namespaces carry the suite's prefixes and are removed here
	if n, err := netlab.RemoveStale("spntest-", "spnbench-"); err != nil {
		fmt.Fprintln(os.Stderr, "tests: removing stale namespaces:", err)
	} else if n > 0 {
		fmt.Fprintf(os.Stderr, "tests: removed %d namespaces left by an earlier run\n", n)
	}
	if pre := os.Getenv("SPINNERET_TEST_PREBUILT"); pre != "" {
		// inside the VM (TestVM): the binaries were built on the host
		binDir, prodBinDir = filepath.Join(pre, "hooks"), filepath.Join(pre, "prod")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "spinneret-bin-")
	if err != nil {
		panic(err)
	}
	binDir, prodBinDir = filepath.Join(dir, "hooks"), filepath.Join(dir, "prod")
	for bin, tags := range map[string]string{binDir: "testhooks", prodBinDir: ""} {
		build := exec.Command("go", append(append([]string{"build", "-tags", tags}, prodBuildFlags...), "-o", filepath.Join(bin, "spinneret"), "..")...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "tests: building spinneret:", err)
			os.Exit(1)
		}
		// the reference plugins (the version go.mod pins): host-local,
		// which NADs written for Multus name and spinneret runs for them;
		// ptp and portmap, the stand-in for a cluster's existing CNI
		// that a delegate network runs; macvlan, for the reference
		// chain BenchmarkOverlay compares with, and tuning for the one
		// BenchmarkCompare does; loopback, which the installer
		// puts where the node has none
		install := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/ipam/host-local@v1.9.1",
			"github.com/containernetworking/plugins/plugins/main/ptp@v1.9.1", "github.com/containernetworking/plugins/plugins/meta/portmap@v1.9.1",
			"github.com/containernetworking/plugins/plugins/main/macvlan@v1.9.1", "github.com/containernetworking/plugins/plugins/main/loopback@v1.9.1",
			"github.com/containernetworking/plugins/plugins/meta/tuning@v1.9.1")
		install.Env = append(os.Environ(), "GOBIN="+bin)
		install.Stdout, install.Stderr = os.Stderr, os.Stderr
		if err := install.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "tests: building the reference plugins:", err)
			os.Exit(1)
		}
	}
	for _, cmd := range []string{"spinneret-controller", "spinneret-node"} {
		build := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd), "../cmd/"+cmd)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "tests: building "+cmd+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's world: a topology, a state dir, a node conf and libcni.
type env struct {
	t     *testing.T
	topo  *netlab.Topology
	dir   string
	cni   *libcni.CNIConfig
	ctx   context.Context
	pools []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	topo, err := netlab.NewTopology(netlab.OwnedPrefix("spntest"))
	if err != nil {
		t.Fatalf("topology: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	dir := t.TempDir()
	writeNodeConf(t, dir, "debug")
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "spinneret.log")); err == nil {
				t.Logf("plugin log:\n%s", b)
			}
		}
	})
	return &env{t: t, topo: topo, dir: dir, ctx: context.Background(),
		cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "cache"), nil)}
}

// writeNodeConf writes dir/node.yaml: state and log under dir, the logical
// master "uplink" mapped to the node's uplink.
func writeNodeConf(t testing.TB, dir, level string) {
	t.Helper()
	nodeConf := fmt.Sprintf("stateDir: %s/state\nlogFile: %s/spinneret.log\nlogLevel: %s\nmasters:\n  uplink: %s\n", dir, dir, level, netlab.Uplink)
	if err := os.WriteFile(filepath.Join(dir, "node.yaml"), []byte(nodeConf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sub is e for a subtest: failures are reported on t.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

func (e *env) stateDir() string { return filepath.Join(e.dir, "state") }

// family selects the pools of a test network.
type family string

const (
	v4   family = "v4"
	v6   family = "v6"
	dual family = "dual"
)

var families = []family{v4, v6, dual}

var poolJSON = map[family][]string{
	v4: {`{"name":"t-v4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.10","end":"192.0.2.60"}],"exclude":["192.0.2.12"],"gateway":"192.0.2.1","routes":[{"dst":"198.51.100.0/24"}]}`},
	v6: {`{"name":"t-v6","subnet":"2001:db8:0:1::/64","ranges":[{"start":"2001:db8:0:1::10","end":"2001:db8:0:1::60"}],"gateway":"2001:db8:0:1::1","routes":[{"dst":"2001:db8:99::/48"}]}`},
}

func init() { poolJSON[dual] = append(append([]string{}, poolJSON[v4]...), poolJSON[v6]...) }

// confList returns a conflist for cniVersion and family; extra is spliced
// into the spinneret entry (e.g. `"mtu": 1400`).
func (e *env) confList(version string, fam family, extra string) *libcni.NetworkConfigList {
	e.t.Helper()
	if extra != "" {
		extra = ", " + extra
	}
	s := fmt.Sprintf(`{"cniVersion":%q,"name":"underlay","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","master":"uplink","capabilities":{"mac":true},"ipam":{"pools":[%s]},"dns":{"nameservers":["192.0.2.53"]}%s}]}`,
		version, e.dir, strings.Join(poolJSON[fam], ","), extra)
	l, err := libcni.NetworkConfFromBytes([]byte(s))
	if err != nil {
		e.t.Fatalf("conflist: %v", err)
	}
	e.pools = nil
	for _, p := range poolJSON[fam] {
		var pj struct{ Name string }
		json.Unmarshal([]byte(p), &pj)
		e.pools = append(e.pools, pj.Name)
	}
	return l
}

func rtConf(id string, pod *netlab.NS) *libcni.RuntimeConf {
	path := ""
	if pod != nil {
		path = pod.Path()
	}
	return &libcni.RuntimeConf{ContainerID: id, NetNS: path, IfName: "eth0"}
}

// add runs ADD from the node namespace.
func (e *env) add(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := e.topo.Node.Do(func() error {
		var err error
		res, err = e.cni.AddNetworkList(e.ctx, l, rt)
		return err
	})
	return res, err
}

func (e *env) mustAdd(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	e.t.Helper()
	res, err := e.add(l, rt)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	cr, err := current.NewResultFromResult(res)
	if err != nil {
		e.t.Fatalf("ADD %s: result: %v", rt.ContainerID, err)
	}
	return cr
}

func (e *env) del(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return e.topo.Node.Do(func() error { return e.cni.DelNetworkList(e.ctx, l, rt) })
}

func (e *env) mustDel(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	e.t.Helper()
	if err := e.del(l, rt); err != nil {
		e.t.Fatalf("DEL %s: %v", rt.ContainerID, err)
	}
}

func (e *env) check(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return e.topo.Node.Do(func() error { return e.cni.CheckNetworkList(e.ctx, l, rt) })
}

func (e *env) gc(l *libcni.NetworkConfigList, valid ...types.GCAttachment) error {
	return e.topo.Node.Do(func() error { return e.cni.GCNetworkList(e.ctx, l, &libcni.GCArgs{ValidAttachments: valid}) })
}

func (e *env) status(l *libcni.NetworkConfigList) error {
	return e.topo.Node.Do(func() error { return e.cni.GetStatusNetworkList(e.ctx, l) })
}

// snapshot is everything an ADD may touch: the node's and the pods' kernel
// state, the allocated addresses and the journals.
func (e *env) snapshot(pods ...*netlab.NS) string {
	e.t.Helper()
	var parts []string
	for _, ns := range append([]*netlab.NS{e.topo.Node}, pods...) {
		d, err := ns.Dump()
		if err != nil {
			e.t.Fatalf("dump %s: %v", ns.Name, err)
		}
		parts = append(parts, "## "+ns.Name+"\n"+d)
	}
	store := ipam.NewLocal(e.stateDir())
	claims, err := store.Claims()
	if err != nil {
		e.t.Fatal(err)
	}
	var lines []string
	for a, c := range claims {
		lines = append(lines, a.String()+" "+c)
	}
	sort.Strings(lines)
	parts = append(parts, "## claims\n"+strings.Join(lines, "\n"))
	owners, _ := store.Owners()
	parts = append(parts, fmt.Sprintf("## owners %v", owners))
	journals, _ := filepath.Glob(filepath.Join(e.stateDir(), "journal", "*", "*.journal"))
	parts = append(parts, fmt.Sprintf("## journals %v", journals))
	return strings.Join(parts, "\n")
}

// sameAs fails the test with a diff if the world changed since before.
func (e *env) sameAs(before string, pods ...*netlab.NS) {
	e.t.Helper()
	if after := e.snapshot(pods...); after != before {
		e.t.Fatalf("state differs from before:\n%s", netlab.Diff(before, after))
	}
}

func currentResult(r types.Result) (*current.Result, error) { return current.NewResultFromResult(r) }

// outputIn runs cmd inside ns (a child started from the namespace's
// thread is in it) and gives its combined output.
func outputIn(ns *netlab.NS, cmd *exec.Cmd) ([]byte, error) {
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return out, err
}

func appendFile(t testing.TB, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
