package tests

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// TestMacvlanModes: each mode behaves as the kernel defines it, proven by
// traffic. bridge: pods on one master talk directly; private: they cannot,
// but reach the gateway; vepa: pod-to-pod goes out to the switch and back,
// so it works only with hairpin on the switch port; passthru: one pod owns
// the master and reaches the gateway.
func TestMacvlanModes(t *testing.T) {
	cases := []struct {
		mode    string
		pods    int
		hairpin bool
		podPod  bool
	}{
		{"bridge", 2, false, true},
		{"private", 2, false, false},
		{"vepa", 2, false, false},
		{"vepa", 2, true, true},
		{"passthru", 1, false, false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/hairpin=%v", c.mode, c.hairpin), func(t *testing.T) {
			e := newEnv(t)
			if c.hairpin {
				port, err := e.topo.Switch.NL().LinkByName("port-node")
				if err != nil {
					t.Fatal(err)
				}
				if err := e.topo.Switch.NL().LinkSetHairpin(port, true); err != nil {
					t.Fatal(err)
				}
			}
			l := e.confList("1.1.0", v4, fmt.Sprintf(`"mode":%q`, c.mode))
			var pods []*netlab.NS
			for i := 0; i < c.pods; i++ {
				p, _ := e.topo.NewPod()
				pods = append(pods, p)
			}
			before := e.snapshot(pods...)
			var addrs []netip.Addr
			for i, p := range pods {
				r := e.mustAdd(l, rtConf(fmt.Sprintf("c%d", i), p))
				addrs = append(addrs, addrOf(t, r, true))
				link, _ := p.NL().LinkByName("eth0")
				if mv, ok := link.(*netlink.Macvlan); !ok || mv.Mode != drivers.MacvlanModes[c.mode] {
					t.Fatalf("eth0 = %#v, want macvlan mode %s", link, c.mode)
				}
				if err := e.check(l, rtConf(fmt.Sprintf("c%d", i), p)); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := pods[0].Ping(netlab.Gateway4, 5*time.Second); err != nil {
				t.Errorf("pod -> gateway: %v", err)
			}
			if c.pods == 2 {
				err := pods[0].Ping(addrs[1], 2*time.Second)
				if c.podPod && err != nil {
					t.Errorf("pod -> pod in %s mode: %v", c.mode, err)
				}
				if !c.podPod && err == nil {
					t.Errorf("pod -> pod in %s mode (hairpin %v) must not work", c.mode, c.hairpin)
				}
			}
			for i, p := range pods {
				e.mustDel(l, rtConf(fmt.Sprintf("c%d", i), p))
			}
			e.sameAs(before, pods...)
		})
	}
}
