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
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/drivers"
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
// a new pod on the same VF (with a MAC or without one, after a pod with or
// without one), traffic works with the new pod's address.
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
	// a's network runs the underlay coordinator (veth0 to the node,
	// policy routing): the wire traffic below goes through its routes
	if _, err := pa.NL().LinkByName("veth0"); err != nil {
		t.Errorf("pod a (underlay coordinator) has no veth0: %v", err)
	}
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

	// b's VF (no MAC of its own: the VF driver's) to a new pod b2, and a's
	// (whose pods had MACs) to b3 without one: each reached by unicast
	// with its new address, and CHECK finds each as ADD left it. Writing
	// back the MAC the PF reported before ADD (zeros) cleared igb's
	// unicast filter for the VF: broadcast and ARP still arrived, unicast
	// did not, until the VF's driver reset.
	if err := e.rootDel(w100, rtb); err != nil {
		t.Fatal(err)
	}
	pb2, rtb2, macB2, b24, b26 := e.vfPod(t, w100, "b2", vfsB[0])
	for _, c := range [][2]netip.Addr{{a24, b24}} {
		if err := pa2.PingFrom(c[0], c[1], 10*time.Second); err != nil {
			t.Errorf("a2 %s -> b2 %s (b's VF, no MAC set) over the wire: %v", c[0], c[1], err)
		}
	}
	if got := neighMAC(t, pa2, b24); got != macB2 {
		t.Errorf("a2 learnt %s for b2's %s, want %s", got, b24, macB2)
	}
	if err := e.rootDel(w100p, rta2); err != nil {
		t.Fatal(err)
	}
	pb3, rtb3, _, b34, b36 := e.vfPod(t, w100, "b3", vfsA[0])
	for _, c := range [][2]netip.Addr{{b34, b24}, {b36, b26}} {
		if err := pb3.PingFrom(c[0], c[1], 10*time.Second); err != nil {
			t.Errorf("b3 %s (a's VF, MACs before, none now) -> b2 %s: %v", c[0], c[1], err)
		}
	}
	if err := pb2.PingFrom(b26, b36, 10*time.Second); err != nil {
		t.Errorf("b2 %s -> b3 %s: %v", b26, b36, err)
	}
	for _, rt := range []*libcni.RuntimeConf{rtb2, rtb3} {
		if err := e.cni.CheckNetworkList(e.ctx, w100, rt); err != nil {
			t.Errorf("CHECK %s: %v", rt.ContainerID, err)
		}
		if err := e.rootDel(w100, rt); err != nil {
			t.Fatal(err)
		}
	}
	if after := vfSnapshot(t, append(vfsA, vfsB...)); after != before {
		t.Fatalf("VFs after DEL:\n%s", netlab.Diff(before, after))
	}
	// no administrative MAC is left on the VFs: their drivers may change
	// their own (igb refuses that while the PF holds one)
	h := rootHandle(t)
	for i, pci := range append(vfsA, vfsB...) {
		v, err := drivers.LookupVF(pci)
		if err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(v.Netdev)
		if err != nil {
			t.Fatal(err)
		}
		own := l.Attrs().HardwareAddr
		if err := h.LinkSetHardwareAddr(l, net.HardwareAddr{0x0a, 0, 0, 0, 0x0d, byte(i)}); err != nil {
			t.Errorf("VF %s after DEL: its driver may not change its MAC (an administrative MAC left?): %v", pci, err)
		}
		h.LinkSetHardwareAddr(l, own)
	}
}

// etherProto is an EtherType for local experiments (IEEE 802 local
// experimental 1): nothing in the pods answers it.
const etherProto = 0x88b5

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket opens a raw packet socket on p's eth0 for etherProto.
func packetSocket(t *testing.T, p *netlab.NS) (int, int) {
	t.Helper()
	ln, err := p.NL().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	err = p.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(etherProto))); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherProto), Ifindex: ln.Attrs().Index})
	})
	if err != nil {
		t.Fatalf("packet socket in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ln.Attrs().Index
}

// sendFrames sends n frames from src to dst (MACs) with payload tag.
func sendFrames(t *testing.T, fd, ifindex int, src, dst net.HardwareAddr, tag string, n int) {
	t.Helper()
	frame := append(append(append([]byte{}, dst...), src...), byte(etherProto>>8), byte(etherProto&0xff))
	frame = append(frame, []byte(tag)...)
	for len(frame) < 60 {
		frame = append(frame, 0)
	}
	for i := 0; i < n; i++ {
		if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Addr: [8]byte(append(append([]byte{}, dst...), 0, 0))}); err != nil {
			t.Fatalf("send %s: %v", tag, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// received counts the frames with payload tag read from fd within d, and
// the source MAC the last one carried.
func received(fd int, tag string, d time.Duration) (int, string) {
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 2048)
	n, src := 0, ""
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || m < 14 {
			continue
		}
		if strings.HasPrefix(string(buf[14:m]), tag) {
			n++
			src = net.HardwareAddr(buf[6:12]).String()
		}
	}
	return n, src
}

// TestInVMSriovWireEnforcement: what the emulated igb enforces of a VF's
// spoofchk and max_tx_rate on the wire. Frames with a forged source MAC
// are sent from a VF with spoofchk on, then off; UDP is sent as fast as
// the VM can for a second with max_tx_rate 1 Mbit/s, then unlimited.
func TestInVMSriovWireEnforcement(t *testing.T) {
	e := newEnv(t)
	// a fresh VF for each case: a VF given to a second pod without a MAC
	// of its own gets no unicast from the wire in this emulation (see
	// the Wire issue's note)
	pfA, vfsA := sriovPFAt(t, 0, 6)
	_, vfsB := sriovPFAt(t, 1, 1)
	conf := func(name, extra string) *libcni.NetworkConfigList {
		return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
			"capabilities":{"deviceID":true},"coordinator":{"mode":"disable"},"driver":"sriov","vlan":56%s,"ipam":{"pools":[
			{"name":"%s-4","subnet":"10.56.0.0/24","ranges":[{"start":"10.56.0.10","end":"10.56.0.90"}]},
			{"name":"%s-6","subnet":"fd00:56::/64","ranges":[{"start":"fd00:56::10","end":"fd00:56::90"}]}]}}]}`, name, e.dir, extra, name, name))
	}
	pb, rtb, macB, b4, _ := e.vfPod(t, conf("peer", ""), "peer", vfsB[0])
	defer e.rootDel(conf("peer", ""), rtb)
	rx, _ := packetSocket(t, pb)
	dst, _ := net.ParseMAC(macB)
	forged, _ := net.ParseMAC("02:00:00:00:00:99")
	for i, c := range []struct{ name, extra string }{{"spoof-on", `,"spoofchk":"on"`}, {"spoof-off", `,"spoofchk":"off"`}} {
		l := conf(c.name, c.extra)
		pa, rta, macA, _, _ := e.vfPod(t, l, c.name, vfsA[i])
		if st, err := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pfA, Index: i}); err != nil || st.SpoofChk != (c.name == "spoof-on") {
			t.Fatalf("%s: VF through the PF: %+v %v", c.name, st, err)
		}
		tx, idx := packetSocket(t, pa)
		own, _ := net.ParseMAC(macA)
		sendFrames(t, tx, idx, own, dst, c.name+"-own", 5)
		nOwn, _ := received(rx, c.name+"-own", time.Second)
		sendFrames(t, tx, idx, forged, dst, c.name+"-forged", 5)
		nForged, srcSeen := received(rx, c.name+"-forged", time.Second)
		if nOwn != 5 {
			t.Errorf("%s: %d of 5 frames from the VF's own MAC arrived", c.name, nOwn)
		}
		// the emulated igb does not enforce spoofchk: forged frames pass
		// with it on (a test that fails once it does, so this is rewritten)
		if nForged != 5 || srcSeen != forged.String() {
			t.Errorf("%s: %d of 5 forged frames arrived (source %q): the emulation's spoofchk changed", c.name, nForged, srcSeen)
		}
		t.Logf("%s: 5 frames from the VF's own MAC: %d arrived; 5 from forged %s: %d arrived (source seen: %q)", c.name, nOwn, forged, nForged, srcSeen)
		if err := e.rootDel(l, rta); err != nil {
			t.Fatal(err)
		}
	}
	// trust: the PF lets a VF change the MAC it was given only if trusted
	// (enforced by the PF's driver, igb, in the guest)
	for i, c := range []struct {
		name, extra string
		trusted     bool
	}{{"trust-on", `,"mac":"0a:00:00:00:0b:04","trust":"on"`, true}, {"trust-off", `,"mac":"0a:00:00:00:0b:05","trust":"off"`, false}} {
		l := conf(c.name, c.extra)
		pa, rta, _, _, _ := e.vfPod(t, l, c.name, vfsA[4+i])
		ln, _ := pa.NL().LinkByName("eth0")
		other, _ := net.ParseMAC(fmt.Sprintf("0a:00:00:00:0c:0%d", i))
		err := pa.NL().LinkSetHardwareAddr(ln, other)
		switch {
		case c.trusted && err != nil:
			t.Errorf("%s: the pod could not change its VF's MAC: %v", c.name, err)
		case !c.trusted && err == nil:
			t.Errorf("%s: the pod changed its untrusted VF's MAC to %s", c.name, other)
		case c.trusted:
			tx, idx := packetSocket(t, pa)
			sendFrames(t, tx, idx, other, dst, c.name, 5)
			if n, src := received(rx, c.name, time.Second); n != 5 || src != other.String() {
				t.Errorf("%s: %d of 5 frames from the new MAC %s arrived (source %q)", c.name, n, other, src)
			}
		}
		t.Logf("%s: the pod changing its VF's MAC to %s: %v", c.name, other, err)
		if err := e.rootDel(l, rta); err != nil {
			t.Fatal(err)
		}
	}
	rates := map[string]int{}
	for i, c := range []struct{ name, extra string }{{"rate-1", `,"max_tx_rate":1`}, {"rate-0", ``}} {
		l := conf(c.name, c.extra)
		pa, rta, _, a4, _ := e.vfPod(t, l, c.name, vfsA[2+i])
		if st, err := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pfA, Index: 2 + i}); err != nil || st.MaxTxRate != map[string]uint32{"rate-1": 1}[c.name] {
			t.Fatalf("%s: VF through the PF: %+v %v", c.name, st, err)
		}
		got := udpBlast(t, pa, pb, a4, b4, time.Second)
		rates[c.name] = got
		t.Logf("%s: %d bytes of UDP in 1 s (%.1f Mbit/s)", c.name, got, float64(got)*8/1e6)
		if err := e.rootDel(l, rta); err != nil {
			t.Fatal(err)
		}
	}
	if rates["rate-0"] == 0 {
		t.Fatal("no UDP arrived without a rate limit")
	}
	ratio := float64(rates["rate-1"]) / float64(rates["rate-0"])
	t.Logf("max_tx_rate 1 Mbit/s: %.2f of the unlimited VF's throughput", ratio)
	// the emulated igb does not enforce max_tx_rate either (set through
	// the PF, read back above); fails once it does, so this is rewritten.
	// Judged against the limit, not the unlimited VF: the two runs'
	// throughput alone differs 2x on a busy machine (25 vs 53 Mbit/s
	// seen), an enforced limit would be 1 Mbit/s
	if mbit := float64(rates["rate-1"]) * 8 / 1e6; mbit < 10 {
		t.Errorf("max_tx_rate 1 Mbit/s held the VF to %.1f Mbit/s (%.2f of the unlimited VF's): the emulation's rate limiting changed", mbit, ratio)
	}
}

// udpBlast sends UDP from a (in pa) to b (in pb) as fast as it can for d
// and returns how many bytes b received.
func udpBlast(t *testing.T, pa, pb *netlab.NS, a, b netip.Addr, d time.Duration) int {
	t.Helper()
	var rc, sc *net.UDPConn
	if err := pb.Do(func() error {
		var err error
		rc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: b.AsSlice(), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := pa.Do(func() error {
		var err error
		sc, err = net.DialUDP("udp4", &net.UDPAddr{IP: a.AsSlice()}, &net.UDPAddr{IP: b.AsSlice(), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	total := make(chan int)
	go func() {
		n, buf := 0, make([]byte, 2048)
		rc.SetReadDeadline(time.Now().Add(d + time.Second))
		for {
			m, err := rc.Read(buf)
			if err != nil {
				total <- n
				return
			}
			n += m
		}
	}()
	if err := pa.PingFrom(a, b, 5*time.Second); err != nil { // the neighbours resolved first
		t.Fatalf("%s -> %s: %v", a, b, err)
	}
	payload := make([]byte, 1400)
	var werr error
	writes := 0
	for end := time.Now().Add(d); time.Now().Before(end); writes++ {
		if _, err := sc.Write(payload); err != nil && werr == nil {
			werr = err
		}
	}
	n := <-total
	if werr != nil {
		t.Logf("udp %s -> %s: %d writes, first error %v", a, b, writes, werr)
	}
	return n
}

// TestVMBenchSriovFirstPacket (make bench-vm): the time from an SR-IOV
// pod's ADD to its first packet answered over the wire, for a VF given its
// MAC by the pod's network and for one without, each on a fresh VF (the
// VF's carrier dominates: igbvf comes up seconds after it is set up).
func TestVMBenchSriovFirstPacket(t *testing.T) {
	e := newEnv(t)
	_, vfsA := sriovPFAt(t, 0, 4)
	_, vfsB := sriovPFAt(t, 1, 1)
	peer := e.wireConf("fp", 100, 10, 19, `{"mode":"disable"}`)
	_, rtb, _, b4, _ := e.vfPod(t, peer, "peer", vfsB[0])
	defer e.rootDel(peer, rtb)
	for i, c := range []struct{ name, coord string }{{"own-mac", `{"mode":"disable"}`}, {"prefix-mac", `{"podMACPrefix":"0a:1c"}`}, {"own-mac", `{"mode":"disable"}`}, {"prefix-mac", `{"podMACPrefix":"0a:1c"}`}} {
		l := e.wireConf(fmt.Sprintf("fp%d", i), 100, 20+10*i, 29+10*i, c.coord)
		p, _ := e.topo.NewPod()
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("fp%d", i), NetNS: p.Path(), IfName: "eth0", CapabilityArgs: map[string]interface{}{"deviceID": vfsA[i]}}
		start := time.Now()
		r, err := e.rootAdd(l, rt)
		if err != nil {
			t.Fatal(err)
		}
		added := time.Since(start)
		a4 := nicAddr(t, r, "eth0", true)
		for p.PingFrom(a4, b4, 200*time.Millisecond) != nil {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s: no answer over the wire 30 s after ADD", c.name)
			}
		}
		t.Logf("SR-IOV %s (TCG): ADD %v, first packet answered %v after ADD began", c.name, added.Round(time.Millisecond), time.Since(start).Round(10*time.Millisecond))
		if err := e.rootDel(l, rt); err != nil {
			t.Fatal(err)
		}
	}
}
