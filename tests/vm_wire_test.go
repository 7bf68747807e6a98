//go:build vmtest

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// The VM's igb PFs are wired to each other through a QEMU hub (vm.sh), so
// VFs of different PFs reach each other over a wire that enforces their
// VLANs.

// wireConf is a conflist whose VF comes from the runtime's deviceID, on
// VLAN vlan, with addresses from the given ranges of 10.55.0.0/24 and
// fd00:55::/64; coordinator is its coordinator settings.
func (e *env) wireConf(name string, vlan int, first, last int, coordinator string) *libcni.NetworkConfigList {
	return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"deviceID":true},"coordinator":%s,"driver":"sriov","vlan":%d,"ipam":{"pools":[
		{"name":"%s-4","subnet":"10.55.0.0/24","ranges":[{"start":"10.55.0.%d","end":"10.55.0.%d"}]},
		{"name":"%s-6","subnet":"fd00:55::/64","ranges":[{"start":"fd00:55::%d","end":"fd00:55::%d"}]}]}}]}`,
		name, e.dir, coordinator, vlan, name, first, last, name, first, last))
}

// vfPod ADDs a pod whose eth0 is VF pci, and waits for the VF's carrier
// (an igbvf link comes up seconds after it is set up).
func (e *env) vfPod(t *testing.T, l *libcni.NetworkConfigList, id, pci string) (*netlab.NS, *libcni.RuntimeConf, string, netip.Addr, netip.Addr) {
	t.Helper()
	p, _ := e.topo.NewPod()
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: p.Path(), IfName: "eth0", CapabilityArgs: map[string]interface{}{"deviceID": pci}}
	start := time.Now()
	r, err := e.rootAdd(l, rt)
	if err != nil {
		t.Fatalf("ADD %s on VF %s: %v", id, pci, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if ln, err := p.NL().LinkByName("eth0"); err == nil && ln.Attrs().RawFlags&unixIffLowerUp != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: VF %s has no carrier 30 s after ADD", id, pci)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s: VF %s carrier %v after ADD", id, pci, time.Since(start).Round(100*time.Millisecond))
	return p, rt, r.Interfaces[0].Mac, nicAddr(t, r, "eth0", true), nicAddr(t, r, "eth0", false)
}

// unixIffLowerUp is IFF_LOWER_UP (the driver has carrier).
const unixIffLowerUp = 1 << 16

// neighMAC is the MAC p's eth0 has learnt for a, from the wire.
func neighMAC(t *testing.T, p *netlab.NS, a netip.Addr) string {
	t.Helper()
	ln, err := p.NL().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := p.NL().NeighList(ln.Attrs().Index, netlink.FAMILY_ALL)
	for _, n := range ns {
		if n.IP.Equal(net.IP(a.AsSlice())) {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// TestInVMSriovWire: two pods, each with a VF of another PF, reach each
// other over the wire, IPv4 and IPv6, on the network's VLAN; a pod on
// another VLAN does not reach them; each VF's MAC (one set by the pod MAC
// prefix) is what the peer learns from the wire; after DEL and an ADD of
// a new pod on the same VF, traffic works with the new pod's address.
func TestInVMSriovWire(t *testing.T) {
	e := newEnv(t)
	_, vfsA := sriovPFAt(t, 0, 2)
	_, vfsB := sriovPFAt(t, 1, 1)
	w100 := e.wireConf("w100", 100, 10, 19, `{"mode":"disable"}`)
	w100p := e.wireConf("w100p", 100, 30, 39, `{"podMACPrefix":"0a:1b"}`)
	w200 := e.wireConf("w200", 200, 20, 29, `{"mode":"disable"}`)
	before := vfSnapshot(t, append(vfsA, vfsB...))

	pa, rta, macA, a4, a6 := e.vfPod(t, w100p, "a", vfsA[0])
	pb, rtb, macB, b4, b6 := e.vfPod(t, w100, "b", vfsB[0])
	if !strings.HasPrefix(macA, "0a:1b:") {
		t.Errorf("pod a's MAC %s does not carry the prefix 0a:1b", macA)
	}
	for _, c := range [][2]netip.Addr{{a4, b4}, {a6, b6}} {
		if err := pa.PingFrom(c[0], c[1], 10*time.Second); err != nil {
			t.Errorf("a %s -> b %s over the wire: %v", c[0], c[1], err)
		}
	}
	if got := neighMAC(t, pb, a4); got != macA {
		t.Errorf("b learnt %s for a's %s from the wire, want a's VF MAC %s", got, a4, macA)
	}
	if got := neighMAC(t, pa, b6); got != macB {
		t.Errorf("a learnt %s for b's %s from the wire, want b's VF MAC %s", got, b6, macB)
	}

	// VLAN 200 on a VF of a's PF: b (VLAN 100, on the other PF) is not
	// reachable, nor is c reachable from b
	pc, rtc, _, c4, c6 := e.vfPod(t, w200, "c", vfsA[1])
	if err := pc.PingFrom(c4, b4, 3*time.Second); err == nil {
		t.Errorf("c on VLAN 200 reached b on VLAN 100 (%s)", b4)
	}
	if err := pb.PingFrom(b6, c6, 3*time.Second); err == nil {
		t.Errorf("b on VLAN 100 reached c on VLAN 200 (%s)", c6)
	}
	if err := e.rootDel(w200, rtc); err != nil {
		t.Fatal(err)
	}

	// a's VF given to a new pod: nothing stale on it
	if err := e.rootDel(w100p, rta); err != nil {
		t.Fatal(err)
	}
	pa2, rta2, macA2, a24, _ := e.vfPod(t, w100p, "a2", vfsA[0])
	if a24 == a4 {
		t.Fatalf("the new pod got the old pod's address %s; the test needs another", a4)
	}
	if err := pa2.PingFrom(a24, b4, 10*time.Second); err != nil {
		t.Errorf("new pod a2 %s -> b %s: %v", a24, b4, err)
	}
	if got := neighMAC(t, pb, a24); got != macA2 {
		t.Errorf("b learnt %s for a2's %s, want %s", got, a24, macA2)
	}
	for _, d := range []struct {
		l  *libcni.NetworkConfigList
		rt *libcni.RuntimeConf
	}{{w100p, rta2}, {w100, rtb}} {
		if err := e.rootDel(d.l, d.rt); err != nil {
			t.Fatal(err)
		}
	}
	if after := vfSnapshot(t, append(vfsA, vfsB...)); after != before {
		t.Fatalf("VFs after DEL:\n%s", netlab.Diff(before, after))
	}
}
