//go:build vmtest

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// TestInVMIpvlan (in the VM): ipvlan in modes l2, l3 and l3s, dual stack,
// with the coordinator: two pods reach each other and the gateway, the
// node and the service stand-in through veth0, the node reaches them; DEL
// leaves the node and the pods as they were.
func TestInVMIpvlan(t *testing.T) {
	for _, mode := range []string{"l2", "l3", "l3s"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			svc := fmt.Sprintf(`"driver":"ipvlan","mode":%q,"coordinator":{"serviceCIDR":["%s","%s"]}`, mode, netlab.ServiceCIDR4, netlab.ServiceCIDR6)
			l := e.confList("1.1.0", dual, svc)
			p1, _ := e.topo.NewPod()
			p2, _ := e.topo.NewPod()
			before := e.snapshot(p1, p2)
			r1 := e.mustAdd(l, rtConf("c1", p1))
			r2 := e.mustAdd(l, rtConf("c2", p2))
			a1, a2 := nicAddr(t, r1, "eth0", true), nicAddr(t, r2, "eth0", true)
			b1, b2 := nicAddr(t, r1, "eth0", false), nicAddr(t, r2, "eth0", false)
			up, _ := e.topo.Node.NL().LinkByName(netlab.Uplink)
			if mac := r1.Interfaces[0].Mac; mac != up.Attrs().HardwareAddr.String() {
				t.Errorf("ipvlan eth0 MAC %s, want the master's %s", mac, up.Attrs().HardwareAddr)
			}
			if mode != "l2" {
				// in l3 modes the link carries no ARP/NDP: the gateway routes
				// the pods' addresses to the node, as an L3 fabric would
				gw := e.topo.Gateway.NL()
				for _, a := range []netip.Addr{a1, a2, b1, b2} {
					via := netlab.NodeIP4
					if a.Is6() {
						via = netlab.NodeIP6
					}
					if err := gw.RouteAdd(&netlink.Route{Dst: hostPrefix(a), Gw: via.AsSlice()}); err != nil {
						t.Fatalf("gateway route to %s: %v", a, err)
					}
				}
			}
			for _, c := range []struct {
				what     string
				from     *netlab.NS
				src, dst netip.Addr
			}{
				{"pod1 -> pod2", p1, a1, a2}, {"pod1 -> pod2 (IPv6)", p1, b1, b2},
				{"pod1 -> gateway", p1, a1, netlab.Gateway4}, {"pod2 -> gateway (IPv6)", p2, b2, netlab.Gateway6},
				{"pod1 -> node via veth0", p1, a1, netlab.NodeIP4}, {"pod2 -> node via veth0 (IPv6)", p2, b2, netlab.NodeIP6},
				{"pod1 -> service via veth0", p1, a1, netlab.ServiceIP4}, {"pod1 -> service via veth0 (IPv6)", p1, b1, netlab.ServiceIP6},
				{"node -> pod2", e.topo.Node, netip.Addr{}, a2}, {"node -> pod1 (IPv6)", e.topo.Node, netip.Addr{}, b1},
			} {
				if err := c.from.PingFrom(c.src, c.dst, 5*time.Second); err != nil {
					t.Errorf("%s (%s -> %s): %v", c.what, c.src, c.dst, err)
				}
			}
			e.mustDel(l, rtConf("c1", p1))
			e.mustDel(l, rtConf("c2", p2))
			if mode != "l2" {
				for _, a := range []netip.Addr{a1, a2, b1, b2} {
					e.topo.Gateway.NL().RouteDel(&netlink.Route{Dst: hostPrefix(a)})
				}
				// in l3 modes the node's own stack resolved the gateway for
				// the pods: traffic's residue in its neighbour cache, not
				// state the plugin made
				flushDynamicNeigh(t, e.topo.Node, netlab.Uplink)
			}
			e.sameAs(before, p1, p2)
		})
	}
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// TestInVMIpvlanRollback (in the VM): an ipvlan ADD failed at every plan
// step in turn leaves the node and the pod exactly as before.
func TestInVMIpvlanRollback(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, `"driver":"ipvlan","coordinator":{"detectIPConflict":true,"detectOptions":{"retries":1,"timeout":"50ms"}}`)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	for step := 0; ; step++ {
		t.Setenv("SPINNERET_TEST_FAIL_STEP", fmt.Sprint(step))
		_, err := e.add(l, rtConf("c1", p))
		os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
		if err == nil {
			if step < 5 {
				t.Fatalf("the plan has only %d steps", step)
			}
			e.mustDel(l, rtConf("c1", p))
			break
		}
		wantErr(t, err, cni.ErrStepFailed, "injected fault")
		e.sameAs(before, p)
	}
	e.sameAs(before, p)
}

// TestInVMIpvlanMacvlanMaster (in the VM): the kernel gives a master one
// kind of child: an ipvlan NIC on a master with macvlan links (another
// pod's, or the same pod's) is a clear error that leaves nothing.
func TestInVMIpvlanMacvlanMaster(t *testing.T) {
	e := newEnv(t)
	mv := e.confList("1.1.0", v4, "")
	p1, _ := e.topo.NewPod()
	e.mustAdd(mv, rtConf("c1", p1))
	iv := e.confList("1.1.0", v4, `"driver":"ipvlan"`)
	p2, _ := e.topo.NewPod()
	before := e.snapshot(p2)
	_, err := e.add(iv, rtConf("c2", p2))
	wantErr(t, err, cni.ErrStepFailed, "a master carries either macvlan or ipvlan links, never both")
	e.sameAs(before, p2)
	e.mustDel(mv, rtConf("c1", p1))
	before = e.snapshot(p2)

	// one pod asking for both on one master: refused before anything
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"two","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"networks":[
		{"name":"m","master":"uplink","ipam":{"pools":[{"name":"m4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.70","end":"192.0.2.79"}]}]}},
		{"name":"i","driver":"ipvlan","master":"uplink","ipam":{"pools":[{"name":"i4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.80","end":"192.0.2.89"}]}]}}]}]}`, e.dir))
	_, err = e.add(l, podRT("c3", p2, map[string]string{"k8s.v1.cni.cncf.io/networks": "i"}))
	if err == nil || !strings.Contains(err.Error(), "macvlan and ipvlan links cannot share master uplink0") {
		t.Fatalf("both kinds on one master: %v", err)
	}
	e.sameAs(before, p2)
}

// flushDynamicNeigh deletes the learned (not permanent) neighbours of a link.
func flushDynamicNeigh(t *testing.T, ns *netlab.NS, link string) {
	l, err := ns.NL().LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, _ := ns.NL().NeighList(l.Attrs().Index, fam)
		for _, n := range neighs {
			if n.State&netlink.NUD_PERMANENT == 0 {
				ns.NL().NeighDel(&n)
			}
		}
	}
}
