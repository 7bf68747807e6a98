package tests

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/request"
)

// TestNodeAddressRule: a pod may not have the node's address, its gateway,
// a network or broadcast address or an excluded one. The node routes every
// pod address into the pod (table 500), so such a pod would take the
// node's own traffic: each static is refused with 104 before anything is
// allocated or created, and the node still reaches its gateway. Pools
// never hand out the node's addresses.
func TestNodeAddressRule(t *testing.T) {
	e := newEnv(t)
	conflist := func(ranges4 string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"rule","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
			"capabilities":{"io.kubernetes.cri.pod-annotations":true},"networks":[
			{"name":"underlay","master":"uplink","ipam":{"pools":[{"name":"u-v4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.200","end":"192.0.2.210"}],"gateway":"192.0.2.1"}]}},
			{"name":"blue","master":"uplink","ipam":{"pools":[
				{"name":"blue-v4","subnet":"192.0.2.0/24",%s"gateway":"192.0.2.1","exclude":["192.0.2.12"]},
				{"name":"blue-v6","subnet":"2001:db8:0:1::/64","gateway":"2001:db8:0:1::1"}]}}]}]}`, e.dir, ranges4)
	}
	l := e.confListRaw(conflist(""))
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	for _, c := range []struct{ static, msg string }{
		{"192.0.2.1", "static address 192.0.2.1 is the gateway of pool blue-v4"},
		{netlab.NodeIP4.String(), "static address 192.0.2.2 is an address of the node"},
		{"192.0.2.0", "static address 192.0.2.0 is the network address of subnet 192.0.2.0/24"},
		{"192.0.2.255", "static address 192.0.2.255 is the broadcast address of subnet 192.0.2.0/24"},
		{"192.0.2.12", "static address 192.0.2.12 is excluded from pool blue-v4 (192.0.2.12/32)"},
		{"2001:db8:0:1::1", "static address 2001:db8:0:1::1 is the gateway of pool blue-v6"},
		{netlab.NodeIP6.String(), "static address 2001:db8:0:1::2 is an address of the node"},
		{"2001:db8:0:1::", "static address 2001:db8:0:1:: is the subnet-router anycast address of subnet 2001:db8:0:1::/64"},
	} {
		t.Run(c.static, func(t *testing.T) {
			ann := map[string]string{request.AnnotNetworks: fmt.Sprintf(`[{"name":"blue","ips":["%s"]}]`, c.static)}
			_, err := e.add(l, podRT("c1", p, ann))
			wantErr(t, err, cni.ErrBadRequest, "k8s.v1.cni.cncf.io/networks[0].ips: ")
			wantErr(t, err, cni.ErrBadRequest, c.msg)
			e.sameAs(before, p)
		})
	}
	for _, gw := range []netip.Addr{netlab.Gateway4, netlab.Gateway6} {
		if err := e.topo.Node.Ping(gw, 5*time.Second); err != nil {
			t.Errorf("the node no longer reaches its gateway %s: %v", gw, err)
		}
	}

	before = e.snapshot(p) // with the node's neighbour entries for its gateway
	// a pool whose range holds the node's address skips it
	l = e.confListRaw(conflist(`"ranges":[{"start":"192.0.2.2","end":"192.0.2.3"}],`))
	r := e.mustAdd(l, podRT("c2", p, map[string]string{request.AnnotNetworks: "blue"}))
	if got := nicAddr(t, r, "net1", true); got.String() != "192.0.2.3" {
		t.Fatalf("net1 got %s from a range holding the node's 192.0.2.2", got)
	}
	e.mustDel(l, podRT("c2", p, map[string]string{request.AnnotNetworks: "blue"}))
	e.sameAs(before, p)
}
