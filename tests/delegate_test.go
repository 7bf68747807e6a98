package tests

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/request"
)

// forwarding turns forwarding on in the node's namespace, as on a node
// running a CNI (ptp turns it on: IPv6 forwarding adds subnet-router
// anycast routes to every link of the node, which would otherwise show
// as the delegate's leftovers).
func (e *env) forwarding() {
	e.t.Helper()
	if err := e.topo.Node.Do(func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
}

// ptpConflist is a stand-in for a cluster's existing CNI (Calico's shape:
// a point-to-point veth to the node, host-local addresses, portmap) with
// its host-local state under dir.
func ptpConflist(dir string) string { return ptpConflistFam(dir, dual) }

// ptpConflistFam is ptpConflist with eth0's addresses of a family.
func ptpConflistFam(dir string, fam family) string {
	var ranges, routes []string
	if fam.has4() {
		ranges, routes = append(ranges, `[{"subnet":"10.244.1.0/24"}]`), append(routes, `{"dst":"0.0.0.0/0"}`)
	}
	if fam.has6() {
		ranges, routes = append(ranges, `[{"subnet":"fd00:244:1::/64"}]`), append(routes, `{"dst":"::/0"}`)
	}
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
		{"type":"ptp","ipMasq":false,"mtu":1400,"ipam":{"type":"host-local","dataDir":%q,
			"ranges":[%s],"routes":[%s]}},
		{"type":"portmap","capabilities":{"portMappings":true},"snat":false}]}`, filepath.Join(dir, "host-local"), strings.Join(ranges, ","), strings.Join(routes, ","))
}

// TestDelegateNetOp: the delegate step runs a conflist of the reference
// plugins through libcni for eth0 (from the node's namespace, as the
// plugin would): its result has eth0's addresses, the pod reaches the node
// through the delegate's veth, CHECK passes, and its undo (the conflist's
// DEL, from the journaled bytes even once the file is gone) leaves the
// node, the pod and the delegate's IPAM store as before; a second undo
// succeeds too.
func TestDelegateNetOp(t *testing.T) {
	e := newEnv(t)
	p, _ := e.topo.NewPod()
	e.forwarding()
	before := kernel(t, e.topo.Node, p)
	file := filepath.Join(e.dir, "10-ptp.conflist")
	if err := os.WriteFile(file, []byte(ptpConflist(e.dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	op := &drivers.DelegateNet{File: file, Conflist: b, CNIPath: binDir, CacheDir: filepath.Join(e.dir, "delegate-cache"),
		ContainerID: "c1", NetNS: p.Path(), IfName: "eth0", Args: [][2]string{{"K8S_POD_NAME", "web"}, {"IgnoreUnknown", "1"}}}
	var err error
	var addrs []netip.Addr
	err = e.topo.Node.Do(func() error {
		r, err := op.Add(context.Background())
		if err != nil {
			return err
		}
		for _, ip := range r.IPs {
			a, _ := netip.AddrFromSlice(ip.Address.IP)
			addrs = append(addrs, a.Unmap())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("delegate ADD: %v", err)
	}
	if len(addrs) != 2 || !netip.MustParsePrefix("10.244.1.0/24").Contains(addrs[0]) || !netip.MustParsePrefix("fd00:244:1::/64").Contains(addrs[1]) {
		t.Fatalf("delegate result addresses %v", addrs)
	}
	if l, err := p.NL().LinkByName("eth0"); err != nil || l.Type() != "veth" {
		t.Fatalf("eth0 in the pod: %v", err)
	}
	// the node reaches the pod through the delegate's veth
	if err := e.topo.Node.Ping(addrs[0], 5*time.Second); err != nil {
		t.Errorf("node -> pod's eth0: %v", err)
	}
	if err := e.topo.Node.Do(func() error { return op.Check(nil) }); err != nil {
		t.Errorf("delegate CHECK: %v", err)
	}
	held, _ := os.ReadDir(filepath.Join(e.dir, "host-local", "k8s-pod-network"))
	if len(held) < 2 {
		t.Errorf("host-local holds %d files", len(held))
	}
	os.Remove(file) // DEL runs from the journaled bytes
	for i := range 2 {
		if err := e.topo.Node.Do(func() error { return op.Undo(&txn.Env{}) }); err != nil {
			t.Fatalf("delegate DEL %d: %v", i+1, err)
		}
	}
	if after := kernel(t, e.topo.Node, p); after != before {
		t.Errorf("after the delegate's DEL:\n%s", netlab.Diff(before, after))
	}
	if h := e.delegateHeld(); len(h) != 0 {
		t.Errorf("host-local still holds %v", h)
	}
}

// delegateConf is a config whose primary network is a delegate (the ptp
// conflist at file, ready once ready exists if ready is set) and whose
// catalogue has an underlay network, under, for net1.
func (e *env) delegateConf(file, ready string) *libcni.NetworkConfigList {
	rd := ""
	if ready != "" {
		rd = fmt.Sprintf(`,"readinessIndicatorFile":%q`, ready)
	}
	return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ovl","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"coordinator":{"mode":"disable"},"networks":[
		{"name":"pods","delegate":{"conflist":%q%s}},
		{"name":"under","master":"uplink","ipam":{"pools":[%s]}}]}]}`, e.dir, file, rd, strings.Join(poolJSON[dual], ",")))
}

// delegateHeld is the addresses the ptp delegate's host-local store holds.
func (e *env) delegateHeld() []string {
	return hostLocalHeld(filepath.Join(e.dir, "host-local"), "k8s-pod-network")
}

// nothingLeft fails t unless the node and the pods are as before (but the
// neighbours the node learnt) and the delegate holds no address; when
// says at what point of the test.
func (e *env) nothingLeft(t *testing.T, before, when string, pods ...*netlab.NS) {
	t.Helper()
	sameLearnt(t, before, e.snapshot(pods...))
	if h := e.delegateHeld(); len(h) != 0 {
		t.Fatalf("%s the delegate still holds %v", when, h)
	}
}

// killAtEveryStep runs the ADD of rt (eth0 from the delegate) killed after
// the delegate's ledger entry (before it ran), then after each step of
// the plan in turn, each followed by DEL, which must leave nothing, until
// an ADD completes (past the plan's last step).
func (e *env) killAtEveryStep(t *testing.T, l *libcni.NetworkConfigList, before string, p *netlab.NS, rt *libcni.RuntimeConf) {
	t.Helper()
	kills := [][2]string{{"SPINNERET_TEST_KILL_AT", "ledger-delegate"}}
	for i := range 200 {
		kills = append(kills, [2]string{"SPINNERET_TEST_KILL_STEP", fmt.Sprint(i)})
	}
	for _, kill := range kills {
		t.Setenv(kill[0], kill[1])
		_, err := e.add(l, rt)
		os.Unsetenv(kill[0])
		e.mustDel(l, rt)
		e.nothingLeft(t, before, fmt.Sprintf("killed at %s=%s: after DEL", kill[0], kill[1]), p)
		if err == nil {
			if kill[0] != "SPINNERET_TEST_KILL_STEP" || kill[1] == "0" {
				t.Fatalf("the ADD was never killed")
			}
			t.Logf("killed at every step up to %s", kill[1])
			return
		}
	}
	t.Fatal("the ADD was killed at every one of 200 steps")
}

// sameLearnt is sameAs but for the neighbours the node learnt (dynamic
// entries: a forwarding node answers the pod NICs' neighbour discovery,
// as a node running a CNI does).
func sameLearnt(t *testing.T, before, after string) {
	t.Helper()
	strip := func(s string) string {
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if !(strings.HasPrefix(l, "neigh ") && strings.HasSuffix(l, " dynamic")) {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	if b, a := strip(before), strip(after); a != b {
		t.Fatalf("state differs from before:\n%s", netlab.Diff(b, a))
	}
}

// TestDelegatePrimary: eth0 from the delegate network's CNI (the ptp
// conflist, read when the ADD runs), net1 on an underlay network beside
// it. Until the delegate is ready (no conflist yet, no readiness file)
// ADD fails with 11 and takes nothing; then the pod gets both NICs, the
// node reaches it over the delegate's veth and net1 reaches its gateway,
// CHECK passes (the delegate's CHECK too, which finds drift in eth0),
// STATUS follows the delegate's readiness, and DEL leaves the node, the
// pod and the delegate's address store as before. A failure after the
// delegate's ADD (net1's static address outside its pool) rolls the
// delegate back with its DEL.
func TestDelegatePrimary(t *testing.T) {
	e := newEnv(t)
	e.forwarding()
	file, ready := filepath.Join(e.dir, "10-ptp.conflist"), filepath.Join(e.dir, "ptp-ready")
	l := e.delegateConf(file, ready)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	ann := map[string]string{request.AnnotNetworks: "under"}
	rt := podRT("c1", p, ann)

	wantErr(t, e.status(l), types.ErrPluginNotAvailable, "network pods: its CNI is not ready: readiness indicator file")
	_, err := e.add(l, rt)
	wantErr(t, err, types.ErrTryAgainLater, "its CNI is not ready: readiness indicator file")
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = e.add(l, rt)
	wantErr(t, err, types.ErrTryAgainLater, "its CNI is not ready: no conflist "+file+" yet")
	e.sameAs(before, p)
	wantErr(t, e.status(l), types.ErrPluginNotAvailable, "network pods: its CNI is not ready: no conflist "+file+" yet")
	if err := os.WriteFile(file, []byte(ptpConflist(e.dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.status(l); err != nil {
		t.Errorf("STATUS with the delegate ready: %v", err)
	}

	r := e.mustAdd(l, rt)
	eth0, net1 := nicAddr(t, r, "eth0", true), nicAddr(t, r, "net1", true)
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(eth0) || !netip.MustParsePrefix("192.0.2.0/24").Contains(net1) {
		t.Fatalf("eth0 %s (want the delegate's 10.244.1.0/24), net1 %s", eth0, net1)
	}
	if l, err := p.NL().LinkByName("eth0"); err != nil || l.Type() != "veth" {
		t.Fatalf("eth0 is not the delegate's veth: %v", err)
	}
	if err := e.topo.Node.Ping(eth0, 5*time.Second); err != nil {
		t.Errorf("node -> pod over the delegate's eth0: %v", err)
	}
	if err := p.PingFrom(net1, netlab.Gateway4, 5*time.Second); err != nil {
		t.Errorf("net1 -> its gateway: %v", err)
	}
	if err := e.check(l, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// drift in the delegate's eth0 is the delegate's CHECK's to find
	if pl, err := p.NL().LinkByName("eth0"); err == nil {
		addrs, _ := p.NL().AddrList(pl, netlink.FAMILY_V4)
		for _, a := range addrs {
			p.NL().AddrDel(pl, &a)
		}
	}
	if err := e.check(l, rt); err == nil || !strings.Contains(err.Error(), "delegate k8s-pod-network") {
		t.Errorf("CHECK after eth0 lost its IPv4 address: %v, want the delegate's CHECK failing", err)
	}
	if len(e.delegateHeld()) != 2 {
		t.Errorf("the delegate holds %v", e.delegateHeld())
	}
	e.mustDel(l, rt)
	e.nothingLeft(t, before, "after DEL", p)

	// net1 fails after the delegate made eth0: all of it is undone
	bad := podRT("c2", p, map[string]string{request.AnnotNetworks: `[{"name":"under","ips":["198.51.100.7"]}]`})
	_, err = e.add(l, bad)
	if err == nil {
		t.Fatal("ADD with a static address outside net1's pools succeeded")
	}
	e.nothingLeft(t, before, "after the failed ADD", p)
}

// TestDelegateCrash: an ADD with a delegate eth0 killed after its ledger
// entry (before the delegate ran) or after any step of the plan leaves
// nothing once DEL ran: not the delegate's veth or addresses, not net1.
func TestDelegateCrash(t *testing.T) {
	e := newEnv(t)
	e.forwarding()
	file := filepath.Join(e.dir, "10-ptp.conflist")
	if err := os.WriteFile(file, []byte(ptpConflist(e.dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	l := e.delegateConf(file, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	e.killAtEveryStep(t, l, before, p, podRT("c1", p, map[string]string{request.AnnotNetworks: "under"}))
}
