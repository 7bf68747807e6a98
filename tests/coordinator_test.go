package tests

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/tests/harness"
)

// sentBy runs fn and reports whether the pod's link sent at least n
// packets meanwhile.
func sentBy(t *testing.T, pod *harness.NS, link string, n uint64, fn func() error) error {
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
			svc := fmt.Sprintf(`"coordinator":{"serviceCIDR":["%s","%s"]}`, harness.ServiceCIDR4, harness.ServiceCIDR6)
			l := e.multiConf(fam, svc)
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			rt := podRT("c1", p, map[string]string{cni.AnnotNetworks: "blue"})
			r := e.mustAdd(l, rt)
			for _, v4 := range fam.versions() {
				node := map[bool]netip.Addr{true: harness.NodeIP4, false: harness.NodeIP6}[v4]
				svcIP := map[bool]netip.Addr{true: harness.ServiceIP4, false: harness.ServiceIP6}[v4]
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

// TestHostRuleShared: the node's "from all lookup 500" rule exists once
// however many pods, stays while any pod needs it, and goes with the last.
func TestHostRuleShared(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	before := e.snapshot()
	var pods []*harness.NS
	for i := 0; i < 3; i++ {
		p, _ := e.topo.NewPod()
		pods = append(pods, p)
		e.mustAdd(l, rtConf(fmt.Sprintf("c%d", i), p))
	}
	count := func() int {
		n := 0
		for _, fam := range []int{4, 6} {
			rules, _ := e.topo.Node.NL().RuleList(map[int]int{4: 2, 6: 10}[fam])
			for _, r := range rules {
				if r.Table == 500 && r.Priority == 1000 {
					n++
				}
			}
		}
		return n
	}
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

// nicAddrOf reads eth0's first address of a family from the pod itself.
func nicAddrOf(t *testing.T, p *harness.NS, v4 bool) netip.Addr {
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
