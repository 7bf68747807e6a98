//go:build vmtest

package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// The VLAN of the ifacer tests: VLAN 100 on the first network's wire, its
// gateway a VLAN link of the gateway's port.
var (
	vlanGW4  = netip.MustParseAddr("203.0.113.1")
	vlanGW6  = netip.MustParseAddr("2001:db8:100::1")
	vlanPool = `{"name":"v100-4","subnet":"203.0.113.0/24","ranges":[{"start":"203.0.113.10","end":"203.0.113.20"}],"gateway":"203.0.113.1"},` +
		`{"name":"v100-6","subnet":"2001:db8:100::/64","ranges":[{"start":"2001:db8:100::10","end":"2001:db8:100::20"}],"gateway":"2001:db8:100::1"}`
)

// ifacerEnv is a node with two more cables (nb0, nb1) to the first
// network's switch, and a gateway with VLAN 100 (gw0.100).
func ifacerEnv(t *testing.T) *env {
	e := newEnv(t)
	for i := range 2 {
		if err := e.topo.Plug(0, fmt.Sprintf("port-nb%d", i), fmt.Sprintf("nb%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	gw := e.topo.Gateway.NL()
	port, err := gw.LinkByName("gw0")
	if err != nil {
		t.Fatal(err)
	}
	v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "gw0.100", ParentIndex: port.Attrs().Index}, VlanId: 100}
	if err := gw.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	if err := gw.LinkSetUp(v); err != nil {
		t.Fatal(err)
	}
	if err := e.topo.Gateway.AddAddrs("gw0.100", netip.PrefixFrom(vlanGW4, 24), netip.PrefixFrom(vlanGW6, 64)); err != nil {
		t.Fatal(err)
	}
	return e
}

// network is a conflist with one network (the spinneret entry's fields).
func (e *env) network(fields string) *libcni.NetworkConfigList {
	return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ifc","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"networks":[{"name":"ifc",%s,"ipam":{"pools":[%s]}}]}]}`, e.dir, fields, vlanPool))
}

func (e *env) ifacerRecords() []string {
	ents, _ := os.ReadDir(filepath.Join(e.stateDir(), "ifacer"))
	var out []string
	for _, x := range ents {
		if strings.HasSuffix(x.Name(), ".json") {
			out = append(out, x.Name())
		}
	}
	return out
}

const bondNet = `"master":"bond0","bond":{"name":"bond0","mode":"active-backup","options":{"miimon":"100"},"slaves":["nb0","nb1"]},"vlan":100`

// TestInVMIfacerBondVLAN (in the VM): the first ADD creates the bond (of
// nb0 and nb1, active-backup, miimon 100) and VLAN 100 on it; macvlan on
// the VLAN on the bond carries IPv4 and IPv6 to the VLAN's gateway; the
// second pod reuses both; they stay while any pod uses them and go with
// the last, the slaves as they were.
func TestInVMIfacerBondVLAN(t *testing.T) {
	e := ifacerEnv(t)
	l := e.network(bondNet)
	p1, _ := e.topo.NewPod()
	p2, _ := e.topo.NewPod()
	before := e.snapshot(p1, p2)
	r1 := e.mustAdd(l, rtConf("c1", p1))
	node := e.topo.Node.NL()
	bond, err := node.LinkByName("bond0")
	if err != nil {
		t.Fatalf("bond0: %v", err)
	}
	if b := bond.(*netlink.Bond); b.Mode != netlink.BOND_MODE_ACTIVE_BACKUP || b.Miimon != 100 || b.Attrs().Flags&1 == 0 {
		t.Errorf("bond0: mode %s miimon %d flags %v", b.Mode, b.Miimon, b.Attrs().Flags)
	}
	for _, s := range []string{"nb0", "nb1"} {
		if sl, _ := node.LinkByName(s); sl == nil || sl.Attrs().MasterIndex != bond.Attrs().Index {
			t.Errorf("%s is not bond0's slave", s)
		}
	}
	vl, err := node.LinkByName("bond0.100")
	if err != nil || vl.(*netlink.Vlan).VlanId != 100 || vl.Attrs().ParentIndex != bond.Attrs().Index {
		t.Fatalf("bond0.100: %v %+v", err, vl)
	}
	a1, b1 := nicAddr(t, r1, "eth0", true), nicAddr(t, r1, "eth0", false)
	if err := p1.PingFrom(a1, vlanGW4, 10*time.Second); err != nil {
		t.Errorf("pod1 -> VLAN gateway over bond: %v", err)
	}
	if err := p1.PingFrom(b1, vlanGW6, 10*time.Second); err != nil {
		t.Errorf("pod1 -> VLAN gateway over bond (IPv6): %v", err)
	}
	r2 := e.mustAdd(l, rtConf("c2", p2))
	if b2, _ := node.LinkByName("bond0"); b2.Attrs().Index != bond.Attrs().Index {
		t.Errorf("the second pod re-created bond0")
	}
	if err := p2.PingFrom(nicAddr(t, r2, "eth0", true), a1, 10*time.Second); err != nil {
		t.Errorf("pod2 -> pod1: %v", err)
	}
	e.mustDel(l, rtConf("c1", p1))
	if _, err := node.LinkByName("bond0.100"); err != nil {
		t.Fatalf("bond0.100 removed while pod2 uses it: %v", err)
	}
	if err := p2.PingFrom(nicAddr(t, r2, "eth0", true), vlanGW4, 10*time.Second); err != nil {
		t.Errorf("pod2 after pod1's DEL: %v", err)
	}
	e.mustDel(l, rtConf("c2", p2))
	e.sameAs(before, p1, p2)
	if r := e.ifacerRecords(); len(r) != 0 {
		t.Errorf("ifacer records left: %v", r)
	}
}

// TestInVMIfacerConflicts (in the VM): an existing bond of another mode or
// other slaves, a VLAN of the ID on the parent under another name, or a
// link of spinneret's VLAN name that is another VLAN: the ADD fails saying
// what differs, and nothing changed.
func TestInVMIfacerConflicts(t *testing.T) {
	e := ifacerEnv(t)
	node := e.topo.Node.NL()
	mk := func(l netlink.Link) {
		t.Helper()
		if err := node.LinkAdd(l); err != nil {
			t.Fatal(err)
		}
	}
	rr := netlink.NewLinkBond(netlink.LinkAttrs{Name: "bondx"})
	rr.Mode = netlink.BOND_MODE_BALANCE_RR
	mk(rr)
	up, _ := node.LinkByName(netlab.Uplink)
	mk(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "vl100", ParentIndex: up.Attrs().Index}, VlanId: 100})
	mk(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "uplink0.300", ParentIndex: up.Attrs().Index}, VlanId: 200})
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	for _, c := range []struct{ fields, want string }{
		{`"master":"bondx","bond":{"name":"bondx","mode":"active-backup","slaves":["nb0"]}`, "bond bondx exists with mode balance-rr, config active-backup; slaves none, config nb0"},
		{`"master":"uplink","vlan":100`, "VLAN 100 on uplink0 exists as vl100 (spinneret's name for it is uplink0.100)"},
		{`"master":"uplink","vlan":300`, "uplink0.300 exists as VLAN 200 on uplink0, config VLAN 300 on uplink0"},
	} {
		_, err := e.add(e.network(c.fields), rtConf("c1", p))
		wantErr(t, err, cni.ErrStepFailed, c.want)
		e.sameAs(before, p)
	}
	if r := e.ifacerRecords(); len(r) != 0 {
		t.Errorf("ifacer records left: %v", r)
	}
}

// TestInVMIfacerRollback (in the VM): an ADD that creates the bond and the
// VLAN, failed at every step or killed after every step (then DEL), leaves
// the node as it was; with another pod on them, the parents stay.
func TestInVMIfacerRollback(t *testing.T) {
	e := ifacerEnv(t)
	l := e.network(bondNet)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	n := 0
	for step := 0; ; step++ {
		t.Setenv("SPINNERET_TEST_FAIL_STEP", fmt.Sprint(step))
		_, err := e.add(l, rtConf("c1", p))
		os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
		if err == nil {
			n = step
			e.mustDel(l, rtConf("c1", p))
			break
		}
		wantErr(t, err, cni.ErrStepFailed, "injected fault")
		e.sameAs(before, p)
	}
	for step := 0; step < n; step += 3 {
		t.Setenv("SPINNERET_TEST_KILL_STEP", fmt.Sprint(step))
		if _, err := e.add(l, rtConf("c1", p)); err == nil {
			t.Fatalf("killed at step %d: ADD succeeded", step)
		}
		os.Unsetenv("SPINNERET_TEST_KILL_STEP")
		e.mustDel(l, rtConf("c1", p))
		e.sameAs(before, p)
	}
	// another pod holds the parents: a failed ADD leaves them
	p2, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("c2", p2))
	t.Setenv("SPINNERET_TEST_FAIL_STEP", "3")
	_, err := e.add(l, rtConf("c1", p))
	os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
	wantErr(t, err, cni.ErrStepFailed, "injected fault")
	if _, err := e.topo.Node.NL().LinkByName("bond0.100"); err != nil {
		t.Fatalf("a failed ADD removed the VLAN another pod uses: %v", err)
	}
	e.mustDel(l, rtConf("c2", p2))
	e.sameAs(before, p)
	if r := e.ifacerRecords(); len(r) != 0 {
		t.Errorf("ifacer records left: %v", r)
	}
}

// TestInVMIfacerConcurrent (in the VM): 50 pods at once (a process each)
// on a network whose master is a bond + VLAN the ifacer ensures: one bond
// and one VLAN link are created, every pod is attached on them, and the
// 50 concurrent DELs remove both with the last, the slaves as they were.
func TestInVMIfacerConcurrent(t *testing.T) {
	const n = 50
	e := ifacerEnv(t)
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ifc","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"networks":[{"name":"ifc",%s,"ipam":{"pools":[{"name":"c100-4","subnet":"203.0.113.0/24","ranges":[{"start":"203.0.113.10","end":"203.0.113.200"}],"gateway":"203.0.113.1"}]}}]}]}`, e.dir, bondNet))
	pods := make([]*netlab.NS, n)
	for i := range pods {
		pods[i], _ = e.topo.NewPod()
	}
	before := e.snapshot(pods...)
	run := func(verb string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range pods {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				rt := rtConf(fmt.Sprintf("c%d", i), pods[i])
				var err error
				if verb == "ADD" {
					_, err = e.add(l, rt)
				} else {
					err = e.del(l, rt)
				}
				if err != nil {
					errs <- fmt.Errorf("%s c%d: %w", verb, i, err)
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	run("ADD")
	node := e.topo.Node.NL()
	links, _ := node.LinkList()
	bonds, vlans := 0, 0
	for _, ln := range links {
		switch ln.Type() {
		case "bond":
			bonds++
		case "vlan":
			vlans++
		}
	}
	if bonds != 1 || vlans != 1 {
		t.Fatalf("%d bonds and %d VLAN links on the node after %d concurrent ADDs, want 1 and 1", bonds, vlans, n)
	}
	for _, p := range []*netlab.NS{pods[0], pods[n-1]} {
		if err := p.Ping(vlanGW4, 10*time.Second); err != nil {
			t.Errorf("a pod -> VLAN gateway over the bond: %v", err)
		}
	}
	run("DEL")
	e.sameAs(before, pods...)
	if r := e.ifacerRecords(); len(r) != 0 {
		t.Errorf("ifacer records left: %v", r)
	}
}

// ifacerUsers reads the users of the ifacer's record of a parent (nil:
// no record).
func (e *env) ifacerUsers(name string) []string {
	b, err := os.ReadFile(filepath.Join(e.stateDir(), "ifacer", name+".json"))
	if err != nil {
		return nil
	}
	var r struct{ Users []string }
	json.Unmarshal(b, &r)
	return r.Users
}

// TestInVMIfacerReboot (in the VM): the ifacer's records survive a reboot,
// the parents they record do not. In the next boot: a VLAN link of the
// same name the admin made is reused but never removed (the earlier
// boot's record makes it no more spinneret's); one spinneret makes again
// gets a record of its new users only, stays up through the earlier
// boot's late DEL and goes with its last user of this boot.
func TestInVMIfacerReboot(t *testing.T) {
	e := ifacerEnv(t)
	l := e.network(`"master":"uplink","vlan":100`)
	node := e.topo.Node.NL()
	const vlan = "uplink0.100"
	// reboot: a pod of the earlier boot made the VLAN; the reboot took
	// it (and the pod), not the record
	reboot := func(from, to, cid string) {
		boot(t, from)
		p, _ := e.topo.NewPod()
		e.mustAdd(l, rtConf(cid, p))
		if u := e.ifacerUsers(vlan); len(u) != 1 || !strings.Contains(u[0], cid+":") {
			t.Fatalf("record of %s in %s: users %v", vlan, from, u)
		}
		restore := e.keepState()
		e.mustDel(l, rtConf(cid, p))
		p.Close()
		restore()
		if _, err := node.LinkByName(vlan); err == nil {
			t.Fatalf("%s survived the \"reboot\"", vlan)
		}
		boot(t, to)
	}

	reboot("boot-1", "boot-2", "old")
	up, _ := node.LinkByName(netlab.Uplink)
	admin := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: vlan, ParentIndex: up.Attrs().Index}, VlanId: 100}
	if err := node.LinkAdd(admin); err != nil {
		t.Fatal(err)
	}
	p, _ := e.topo.NewPod()
	r := e.mustAdd(l, rtConf("new", p))
	if err := p.PingFrom(nicAddr(t, r, "eth0", true), vlanGW4, 10*time.Second); err != nil {
		t.Errorf("pod on the admin's VLAN: %v", err)
	}
	if u := e.ifacerUsers(vlan); u != nil {
		t.Errorf("the admin's %s has a record: users %v", vlan, u)
	}
	e.mustDel(l, rtConf("old", nil))
	e.mustDel(l, rtConf("new", p))
	if _, err := node.LinkByName(vlan); err != nil {
		t.Fatalf("the admin's %s was removed: %v", vlan, err)
	}
	if err := node.LinkDel(admin); err != nil {
		t.Fatal(err)
	}

	reboot("boot-3", "boot-4", "old2")
	r = e.mustAdd(l, rtConf("new2", p))
	if u := e.ifacerUsers(vlan); len(u) != 1 || !strings.Contains(u[0], "new2:") {
		t.Errorf("record of %s made again: users %v, want new2's only", vlan, u)
	}
	e.mustDel(l, rtConf("old2", nil))
	if _, err := node.LinkByName(vlan); err != nil {
		t.Fatalf("the earlier boot's late DEL removed %s, which new2 uses: %v", vlan, err)
	}
	if err := p.PingFrom(nicAddr(t, r, "eth0", true), vlanGW4, 10*time.Second); err != nil {
		t.Errorf("new2 after the late DEL: %v", err)
	}
	e.mustDel(l, rtConf("new2", p))
	if _, err := node.LinkByName(vlan); err == nil {
		t.Errorf("%s left after its last user's DEL", vlan)
	}
	if rs := e.ifacerRecords(); len(rs) != 0 {
		t.Errorf("ifacer records left: %v", rs)
	}
}
