package tests

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/request"
)

// sentBy runs fn and reports whether the pod's link sent at least n
// packets meanwhile.
func sentBy(t *testing.T, pod *netlab.NS, link string, n uint64, fn func() error) error {
	t.Helper()
	before, err := pod.TxPackets(link)
	if err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	after, _ := pod.TxPackets(link)
	if after-before < n {
		return fmt.Errorf("%s sent %d packets, want at least %d", link, after-before, n)
	}
	return nil
}

// TestCoordinatorPaths proves the coordinator's paths with traffic, for
// every family: the pod reaches its node and a service address (a stand-in
// ClusterIP the node serves) through veth0, not through the underlay; the
// node reaches the pod through the host veth; with two NICs, traffic from
// net1's address reaches the node too (net1's table has the node's routes).
func TestCoordinatorPaths(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := multiEnv(t)
			svc := fmt.Sprintf(`"coordinator":{"serviceCIDR":["%s","%s"]}`, netlab.ServiceCIDR4, netlab.ServiceCIDR6)
			l := e.multiConf(fam, svc)
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue"})
			r := e.mustAdd(l, rt)
			// the node end has no IPv6 address, link-local included: an
			// fe80::/64 route per pod on the node would grow the kernel's
			// work with the pods (coordinator.Veth), and the paths below
			// work without
			links, err := e.topo.Node.NL().LinkList()
			if err != nil {
				t.Fatal(err)
			}
			var hostVeths []string
			for _, hl := range links {
				if hl.Type() == "veth" && strings.HasPrefix(hl.Attrs().Name, "spn") {
					hostVeths = append(hostVeths, hl.Attrs().Name)
					if a, err := e.topo.Node.NL().AddrList(hl, netlink.FAMILY_V6); err != nil || len(a) != 0 {
						t.Errorf("node veth %s: IPv6 addresses %v (%v), want none", hl.Attrs().Name, a, err)
					}
				}
			}
			if len(hostVeths) != 1 {
				t.Errorf("node veths %v, want one", hostVeths)
			}
			for _, v4 := range fam.versions() {
				node := map[bool]netip.Addr{true: netlab.NodeIP4, false: netlab.NodeIP6}[v4]
				svcIP := map[bool]netip.Addr{true: netlab.ServiceIP4, false: netlab.ServiceIP6}[v4]
				for _, dst := range []netip.Addr{node, svcIP} {
					if err := sentBy(t, p, "veth0", 1, func() error { return p.Ping(dst, 5*time.Second) }); err != nil {
						t.Errorf("pod -> %s through veth0: %v", dst, err)
					}
					if err := p.PingFrom(nicAddr(t, r, "net1", v4), dst, 5*time.Second); err != nil {
						t.Errorf("pod (from net1's address) -> %s: %v", dst, err)
					}
				}
				for _, nic := range []string{"eth0", "net1"} {
					if err := e.topo.Node.Ping(nicAddr(t, r, nic, v4), 5*time.Second); err != nil {
						t.Errorf("node -> pod's %s: %v", nic, err)
					}
				}
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			e.sameAs(before, p)
		})
	}
}

// TestNodeWithoutIPv6Address: a node with no IPv6 address of its own but
// link-local ones still reaches an IPv6 pod through the veth. Its route to
// the pod has no source then, the kernel speaks from the node end's
// link-local address and the pod answers it over veth0: the node end keeps
// one here (an IPv4 pod's does not need it and goes without).
func TestNodeWithoutIPv6Address(t *testing.T) {
	e := multiEnv(t)
	h := e.topo.Node.NL()
	for _, a := range []struct {
		link string
		addr netip.Prefix
	}{{e.topo.Nets[0].Uplink, netip.PrefixFrom(netlab.NodeIP6, e.topo.Nets[0].Subnet6.Bits())}, {"lo", netip.PrefixFrom(netlab.ServiceIP6, 128)}} {
		l, err := h.LinkByName(a.link)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrDel(l, &netlink.Addr{IPNet: netops.IPNet(a.addr)}); err != nil {
			t.Fatalf("remove %s from the node's %s: %v", a.addr, a.link, err)
		}
	}
	for _, fam := range []family{v6, v4} {
		t.Run(string(fam), func(t *testing.T) {
			l := e.multiConf(fam, "")
			p, err := e.topo.NewPod()
			if err != nil {
				t.Fatal(err)
			}
			rt := podRT("c-"+string(fam), p, nil)
			r := e.mustAdd(l, rt)
			defer e.mustDel(l, rt)
			veth := coordinator.HostVethName("c-" + string(fam))
			hl, err := h.LinkByName(veth)
			if err != nil {
				t.Fatal(err)
			}
			addrs, err := h.AddrList(hl, netlink.FAMILY_V6)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[family]int{v6: 1, v4: 0}[fam]; len(addrs) != want {
				t.Errorf("node veth %s: IPv6 addresses %v, want %d (link-local)", veth, addrs, want)
			}
			if fam == v6 {
				if err := e.topo.Node.Ping(nicAddr(t, r, "eth0", false), 5*time.Second); err != nil {
					t.Errorf("node -> pod's eth0 with no IPv6 address on the node: %v", err)
				}
			}
		})
	}
}

// TestHostRuleShared: the node's "from all lookup 500" rule exists once
// however many pods, stays while any pod needs it, and goes with the last.
func TestHostRuleShared(t *testing.T) {
	e, l, before, pods := threeDualPods(t)
	count := func() int { return hostRuleCount(e) }
	if n := count(); n != 2 {
		t.Fatalf("%d host rules for 3 pods, want one per family", n)
	}
	for i, p := range pods {
		if err := e.topo.Node.Ping(nicAddrOf(t, p, true), 5*time.Second); err != nil {
			t.Fatalf("node -> pod %d: %v", i, err)
		}
	}
	for i := 0; i < 2; i++ {
		e.mustDel(l, rtConf(fmt.Sprintf("c%d", i), pods[i]))
		if n := count(); n != 2 {
			t.Fatalf("after %d DELs: %d host rules, want 2 while a pod is left", i+1, n)
		}
	}
	if err := e.topo.Node.Ping(nicAddrOf(t, pods[2], true), 5*time.Second); err != nil {
		t.Errorf("node -> last pod: %v", err)
	}
	e.mustDel(l, rtConf("c2", pods[2]))
	for _, p := range pods {
		e.topo.RemovePod(p)
	}
	e.sameAs(before)
}

// threeDualPods attaches three dual-stack pods (c0, c1, c2) with the
// underlay coordinator, and returns the world, its conflist, the node as
// it was before and the pods.
func threeDualPods(t *testing.T) (*env, *libcni.NetworkConfigList, string, []*netlab.NS) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	before := e.snapshot()
	var pods []*netlab.NS
	for i := 0; i < 3; i++ {
		p, _ := e.topo.NewPod()
		pods = append(pods, p)
		e.mustAdd(l, rtConf(fmt.Sprintf("c%d", i), p))
	}
	return e, l, before, pods
}

// hostRuleCount counts the node's shared host rules (table 500, priority
// 1000), both families.
func hostRuleCount(e *env) int {
	n := 0
	for _, fam := range []int{2, 10} {
		rules, _ := e.topo.Node.NL().RuleList(fam)
		for _, r := range rules {
			if r.Table == 500 && r.Priority == 1000 {
				n++
			}
		}
	}
	return n
}

// TestHostRuleUpgrade: the host rule's users are counted in the state dir;
// pods attached before that count existed (a binary before it: no count
// at all) are counted from the table by the first DEL after the upgrade,
// which must not remove the rule the others still need.
func TestHostRuleUpgrade(t *testing.T) {
	e, l, before, pods := threeDualPods(t)
	users := filepath.Join(e.stateDir(), "host-rules")
	count := func(fam string) int {
		ents, err := os.ReadDir(filepath.Join(users, "500-"+fam))
		if err != nil {
			t.Fatalf("the host rule's users: %v", err)
		}
		return len(ents)
	}
	if n4, n6 := count("v4"), count("v6"); n4 != 3 || n6 != 3 {
		t.Fatalf("%d IPv4 and %d IPv6 users of the host rule for 3 dual-stack pods, want 3 and 3", n4, n6)
	}
	// as a binary before the count left the node
	if err := os.RemoveAll(users); err != nil {
		t.Fatal(err)
	}
	e.mustDel(l, rtConf("c0", pods[0]))
	if n := hostRuleCount(e); n != 2 {
		t.Fatalf("the first DEL after the upgrade left %d host rules, want 2: two pods still need them", n)
	}
	if n4, n6 := count("v4"), count("v6"); n4 != 2 || n6 != 2 {
		t.Fatalf("counted from the table: %d IPv4 and %d IPv6 users, want 2 and 2", n4, n6)
	}
	for i, p := range pods[1:] {
		if err := e.topo.Node.Ping(nicAddrOf(t, p, true), 5*time.Second); err != nil {
			t.Fatalf("node -> pod %d: %v", i+1, err)
		}
	}
	e.mustDel(l, rtConf("c1", pods[1]))
	if n := hostRuleCount(e); n != 2 {
		t.Fatalf("%d host rules with one pod left, want 2", n)
	}
	e.mustDel(l, rtConf("c2", pods[2]))
	if n := hostRuleCount(e); n != 0 {
		t.Fatalf("%d host rules with no pod left, want 0", n)
	}
	for _, p := range pods {
		e.topo.RemovePod(p)
	}
	e.sameAs(before)
}

// nicAddrOf reads eth0's first address of a family from the pod itself.
func nicAddrOf(t *testing.T, p *netlab.NS, v4 bool) netip.Addr {
	t.Helper()
	l, err := p.NL().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := p.NL().AddrList(l, map[bool]int{true: 2, false: 10}[v4])
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); !ip.IsLinkLocalUnicast() {
			return ip.Unmap()
		}
	}
	t.Fatalf("eth0 has no address of that family")
	return netip.Addr{}
}

// TestPodKnobs: podMACPrefix (from the IPv4 address, else the last 4
// bytes of the IPv6 one), txQueueLen and podRPFilter are applied inside the
// pod (txqueuelen never on the node's interfaces), and CHECK sees them.
func TestPodKnobs(t *testing.T) {
	for _, c := range []struct {
		fam     family
		wantMAC string
	}{{v4, "0a:1b:c0:00:02:0a"}, {v6, "0a:1b:00:00:00:10"}, {dual, "0a:1b:c0:00:02:0a"}} {
		t.Run(string(c.fam), func(t *testing.T) {
			e := newEnv(t)
			l := e.confList("1.1.0", c.fam, `"coordinator":{"podMACPrefix":"0a:1b","txQueueLen":2000,"podRPFilter":2}`)
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			uplink, _ := e.topo.Node.NL().LinkByName(netlab.Uplink)
			r := e.mustAdd(l, rtConf("c1", p))
			eth0, _ := p.NL().LinkByName("eth0")
			if eth0.Attrs().HardwareAddr.String() != c.wantMAC || r.Interfaces[0].Mac != c.wantMAC {
				t.Errorf("eth0 mac %s (result %s), want %s", eth0.Attrs().HardwareAddr, r.Interfaces[0].Mac, c.wantMAC)
			}
			if eth0.Attrs().TxQLen != 2000 {
				t.Errorf("eth0 txqueuelen %d, want 2000", eth0.Attrs().TxQLen)
			}
			if after, _ := e.topo.Node.NL().LinkByName(netlab.Uplink); after.Attrs().TxQLen != uplink.Attrs().TxQLen {
				t.Errorf("the node's %s txqueuelen changed to %d", netlab.Uplink, after.Attrs().TxQLen)
			}
			for _, k := range []string{"all", "default", "eth0"} {
				if v, err := p.SysctlValue("net/ipv4/conf/" + k + "/rp_filter"); v != "2" {
					t.Errorf("pod rp_filter %s = %q (%v), want 2", k, v, err)
				}
			}
			if err := e.check(l, rtConf("c1", p)); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			p.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/conf/all/rp_filter", []byte("0"), 0o644) })
			if err := e.check(l, rtConf("c1", p)); err == nil || !strings.Contains(err.Error(), "net/ipv4/conf/all/rp_filter is 0, want 2") {
				t.Errorf("CHECK after changing rp_filter: %v", err)
			}
			e.mustDel(l, rtConf("c1", p))
			e.sameAs(before, p)
		})
	}
}

// TestReplyPathThroughVeth: a connection that reaches the pod through its
// node (NodePort with externalTrafficPolicy Local: the node forwards the
// client's packet unchanged) is answered back through veth0, not by the
// underlay NIC the client's address would otherwise route to; removing
// the nftables marking breaks it, which proves the marking does the work.
func TestReplyPathThroughVeth(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := newEnv(t)
			clients := map[bool]netip.Prefix{true: netip.MustParsePrefix("198.18.9.1/32"), false: netip.MustParsePrefix("2001:db8:ff:9::1/128")}
			if err := e.topo.Node.AddAddrs("lo", clients[true], clients[false]); err != nil {
				t.Fatal(err)
			}
			l := e.confList("1.1.0", fam, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			r := e.mustAdd(l, rtConf("c1", p))
			for _, v4 := range fam.versions() {
				podIP, client := addrOf(t, r, v4), clients[v4].Addr()
				if err := sentBy(t, p, "veth0", 3, func() error {
					for i := 0; i < 3; i++ {
						if err := e.topo.Node.PingFrom(client, podIP, 5*time.Second); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Errorf("client %s -> pod %s through the node: %v", client, podIP, err)
				}
			}
			// without the marking, the replies take the underlay and are lost
			p.Do(func() error {
				c, err := nftables.New()
				if err != nil {
					return err
				}
				c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "spinneret"})
				return c.Flush()
			})
			for _, v4 := range fam.versions() {
				if err := e.topo.Node.PingFrom(clients[v4].Addr(), addrOf(t, r, v4), time.Second); err == nil {
					t.Errorf("IPv%d: replies found their way back without the reply path: the test proves nothing", map[bool]int{true: 4, false: 6}[v4])
				}
			}
			if err := e.check(l, rtConf("c1", p)); err == nil || !strings.Contains(err.Error(), "nftables table inet spinneret") {
				t.Errorf("CHECK without the nftables table: %v", err)
			}
			e.mustDel(l, rtConf("c1", p))
			e.sameAs(before, p)
		})
	}
}

// TestCoordinatorDisabled: with coordinator.mode "disable" the pod gets its
// NICs only: no veth, nothing on the node, and the pod does not reach the
// node (macvlan bridge mode cannot talk to its own master).
func TestCoordinatorDisabled(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, `"coordinator":{"mode":"disable"}`)
	p, _ := e.topo.NewPod()
	nodeBefore, _ := e.topo.Node.Dump()
	r := e.mustAdd(l, rtConf("c1", p))
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "eth0" {
		t.Fatalf("interfaces %v, want eth0 only", r.Interfaces)
	}
	if _, err := p.NL().LinkByName("veth0"); err == nil {
		t.Fatal("veth0 created with the coordinator disabled")
	}
	if after, _ := e.topo.Node.Dump(); after != nodeBefore {
		t.Fatalf("the node changed:\n%s", netlab.Diff(nodeBefore, after))
	}
	if err := p.Ping(netlab.Gateway4, 5*time.Second); err != nil {
		t.Error(err)
	}
	if err := p.Ping(netlab.NodeIP4, time.Second); err == nil {
		t.Error("the pod reached its node without the veth")
	}
	e.mustDel(l, rtConf("c1", p))
}
