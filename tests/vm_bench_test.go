//go:build vmtest

package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
)

// The VM benchmark (`make bench-vm`): ipvlan and SR-IOV pods with two NICs
// through the real binary and libcni, against the same netlink work done
// in this process in the same VM. Emulation (TCG) makes absolute times
// slow; the ratios are what carries over.

func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

const benchRounds = 15

// emptyStart runs the empty Go binary TestVM put beside the test binary
// (built as the plugin is) and returns its wall time: the process-start
// floor of the ratios, measured in the same VM, round by round.
func emptyStart(t *testing.T) time.Duration {
	t.Helper()
	return runCost(t, []string{filepath.Join(os.Getenv("SPINNERET_TEST_PREBUILT"), "empty")}, nil, nil).wall
}

// logRatios prints a driver's ratios as make bench does: ADD and DEL p50
// against the in-process floor plus an empty Go binary's start.
func logRatios(t *testing.T, what string, add, del, inAdd, inDel, start []time.Duration) {
	t.Logf("%s: empty Go binary's start p50 %v; ADD/(floor + empty start) %.2f, DEL/(floor + empty start) %.2f",
		what, p50(start), float64(p50(add))/float64(p50(inAdd)+p50(start)), float64(p50(del))/float64(p50(inDel)+p50(start)))
}

// TestVMBenchIpvlan: ADD/DEL of a pod with two ipvlan NICs (two networks,
// coordinator off) vs creating the two links in the pod's netns, an
// address each, up, a default route, and deleting them, in-process.
func TestVMBenchIpvlan(t *testing.T) {
	e := newEnv(t)
	if _, err := e.topo.AddNet(); err != nil {
		t.Fatal(err)
	}
	n := e.topo.Nets
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), []byte(fmt.Sprintf("stateDir: %s/state\nlogFile: %s/spinneret.log\nlogLevel: info\n", e.dir, e.dir)), 0o644)
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"b","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"coordinator":{"mode":"disable"},"networks":[
		{"name":"a","driver":"ipvlan","master":%q,"ipam":{"pools":[{"name":"a4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}]}},
		{"name":"b","driver":"ipvlan","master":%q,"ipam":{"pools":[{"name":"b4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}]}]}}]}]}`,
		e.dir, n[0].Uplink, n[0].Subnet4, nth(n[0].Subnet4, 10), nth(n[0].Subnet4, 60), n[0].GW4, n[1].Uplink, n[1].Subnet4, nth(n[1].Subnet4, 10), nth(n[1].Subnet4, 60)))
	var add, del, inAdd, inDel, start0 []time.Duration
	for i := range benchRounds {
		start0 = append(start0, emptyStart(t))
		p, _ := e.topo.NewPod()
		rt := podRT(fmt.Sprintf("b%d", i), p, map[string]string{"k8s.v1.cni.cncf.io/networks": "b"})
		start := time.Now()
		e.mustAdd(l, rt)
		add = append(add, time.Since(start))
		start = time.Now()
		e.mustDel(l, rt)
		del = append(del, time.Since(start))

		node := e.topo.Node.NL()
		start = time.Now()
		var links []netlink.Link
		for k, name := range []string{"eth0", "net1"} {
			m, _ := node.LinkByName(n[k].Uplink)
			a := netlink.NewLinkAttrs()
			a.Name, a.ParentIndex, a.Namespace = name, m.Attrs().Index, netlink.NsFd(p.Handle())
			if err := node.LinkAdd(&netlink.IPVlan{LinkAttrs: a, Mode: netlink.IPVLAN_MODE_L2}); err != nil {
				t.Fatal(err)
			}
			pl, _ := p.NL().LinkByName(name)
			addr := n[k].Subnet4
			p.NL().AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: nth(addr, 100+i).AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}})
			p.NL().LinkSetUp(pl)
			links = append(links, pl)
		}
		p.NL().RouteAdd(&netlink.Route{LinkIndex: links[0].Attrs().Index, Gw: n[0].GW4.AsSlice()})
		inAdd = append(inAdd, time.Since(start))
		start = time.Now()
		for _, pl := range links {
			p.NL().LinkDel(pl)
		}
		inDel = append(inDel, time.Since(start))
		e.topo.RemovePod(p)
	}
	t.Logf("ipvlan, 2 NICs, %d pods (TCG): plugin ADD p50 %v, DEL p50 %v; in-process netlink ADD p50 %v, DEL p50 %v; ratio ADD %.1fx, DEL %.1fx",
		benchRounds, p50(add), p50(del), p50(inAdd), p50(inDel), float64(p50(add))/float64(p50(inAdd)), float64(p50(del))/float64(p50(inDel)))
	logRatios(t, "ipvlan, 2 NICs", add, del, inAdd, inDel, start0)
}

// TestVMBenchSriov: ADD/DEL of a pod with two VFs (settings through the
// PF, moved in and renamed; restored and returned on DEL) vs the same
// PF calls and moves in-process; and two VF moves one after the other vs
// at once from two goroutines.
func TestVMBenchSriov(t *testing.T) {
	e := newEnv(t)
	pf, vfs := sriovPF(t, 2)
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), []byte(fmt.Sprintf("stateDir: %s/state\nlogFile: %s/spinneret.log\nlogLevel: info\n", e.dir, e.dir)), 0o644)
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"sr","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"coordinator":{"mode":"disable"},"networks":[
		{"name":"a","driver":"sriov","deviceID":%q,"vlan":100,"spoofchk":"off","ipam":{"pools":[{"name":"a4","subnet":"10.10.0.0/24"}]}},
		{"name":"b","driver":"sriov","deviceID":%q,"vlan":200,"ipam":{"pools":[{"name":"b4","subnet":"10.20.0.0/24"}]}}]}]}`, e.dir, vfs[0], vfs[1]))
	h := rootHandle(t)
	pfl, _ := h.LinkByName(pf)
	var add, del, inAdd, inDel, seq, par, start0 []time.Duration
	for i := range benchRounds {
		start0 = append(start0, emptyStart(t))
		p, _ := e.topo.NewPod()
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("s%d", i), NetNS: p.Path(), IfName: "eth0",
			CapabilityArgs: map[string]interface{}{"io.kubernetes.cri.pod-annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": "b"}}}
		start := time.Now()
		if _, err := e.rootAdd(l, rt); err != nil {
			t.Fatal(err)
		}
		add = append(add, time.Since(start))
		start = time.Now()
		if err := e.rootDel(l, rt); err != nil {
			t.Fatal(err)
		}
		del = append(del, time.Since(start))

		// in-process: PF settings, move, rename, address, up; and back
		var names []string
		for _, pci := range vfs {
			nds, _ := filepath.Glob(filepath.Join("/sys/bus/pci/devices", pci, "net", "*"))
			names = append(names, filepath.Base(nds[0]))
		}
		start = time.Now()
		for k, name := range names {
			h.LinkSetVfVlanQos(pfl, k, 100*(k+1), 0)
			h.LinkSetVfSpoofchk(pfl, k, false)
			vl, _ := h.LinkByName(name)
			h.LinkSetDown(vl)
			if err := h.LinkSetNsFd(vl, p.Handle()); err != nil {
				t.Fatal(err)
			}
			pl, _ := p.NL().LinkByName(name)
			p.NL().LinkSetName(pl, fmt.Sprintf("net%d", k))
			p.NL().AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, byte(10*(k+1)), 0, 5), Mask: net.CIDRMask(24, 32)}})
			p.NL().LinkSetUp(pl)
		}
		inAdd = append(inAdd, time.Since(start))
		self, _ := os.Open("/proc/self/ns/net")
		start = time.Now()
		for k, name := range names {
			pl, _ := p.NL().LinkByName(fmt.Sprintf("net%d", k))
			p.NL().LinkSetDown(pl)
			p.NL().LinkSetName(pl, name)
			p.NL().LinkSetNsFd(pl, int(self.Fd()))
			h.LinkSetVfVlanQos(pfl, k, 0, 0)
			h.LinkSetVfSpoofchk(pfl, k, true)
		}
		inDel = append(inDel, time.Since(start))

		// two moves in turn, and at once
		move := func(name string, to int) {
			vl, err := h.LinkByName(name)
			if err != nil {
				t.Error(err)
				return
			}
			h.LinkSetNsFd(vl, to)
		}
		back := func() {
			for _, name := range names {
				if pl, err := p.NL().LinkByName(name); err == nil {
					p.NL().LinkSetNsFd(pl, int(self.Fd()))
				}
			}
		}
		start = time.Now()
		for _, name := range names {
			move(name, p.Handle())
		}
		seq = append(seq, time.Since(start))
		back()
		start = time.Now()
		done := make(chan struct{})
		for _, name := range names {
			go func() { move(name, p.Handle()); done <- struct{}{} }()
		}
		<-done
		<-done
		par = append(par, time.Since(start))
		back()
		self.Close()
		e.topo.RemovePod(p)
	}
	t.Logf("SR-IOV, 2 VFs, %d pods (TCG): plugin ADD p50 %v, DEL p50 %v; in-process netlink ADD p50 %v, DEL p50 %v; ratio ADD %.1fx, DEL %.1fx",
		benchRounds, p50(add), p50(del), p50(inAdd), p50(inDel), float64(p50(add))/float64(p50(inAdd)), float64(p50(del))/float64(p50(inDel)))
	logRatios(t, "SR-IOV, 2 VFs", add, del, inAdd, inDel, start0)
	t.Logf("moving 2 VFs into a netns: one after the other p50 %v, at once from 2 goroutines p50 %v", p50(seq), p50(par))
}
