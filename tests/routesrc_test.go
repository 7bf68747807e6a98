package tests

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/netops"
)

// TestRouteAddrsAsTheKernel: for IPv6, RouteAddrs and NodeAddrsIn ask for
// the route alone and read its link's addresses, instead of a lookup
// whose source selection walks every link on the node (one veth per pod).
// What they answer must stay what a plain route lookup answers: the
// node's own addresses (on the uplink, on lo), pod and gateway addresses,
// addresses with no route or only a default one, a route with a preferred
// source, a link with two global addresses, a deprecated one, and a
// node with many veths.
func TestRouteAddrsAsTheKernel(t *testing.T) {
	e := newEnv(t)
	node, n := e.topo.Node, e.topo.Nets[0]
	h := node.NL()
	uplink, err := h.LinkByName(n.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs := []netip.Addr{nth(n.Subnet6, 100), netlab.NodeIP6, n.GW6, netlab.ServiceIP6, netip.MustParseAddr("2001:db8:dead::1"),
		netip.MustParseAddr("2001:db8:77::5"), netip.MustParseAddr("fd00:77::9"), netip.MustParseAddr("fe80::1"),
		netip.MustParseAddr("fec0::5"), netip.MustParseAddr("2001:db8:98::1"), netip.MustParseAddr("2001:db8:99::1"), netip.MustParseAddr("2001:db8:aa::5"), nth(n.Subnet4, 100), netlab.NodeIP4, n.GW4}
	subnets := []netip.Prefix{n.Subnet6, n.Subnet4, netip.MustParsePrefix("2001:db8:77::/64"), netip.MustParsePrefix("fd00:77::/64")}
	plain := func(a netip.Addr) (local bool, srcs []netip.Addr) {
		rs, err := h.RouteGet(a.AsSlice())
		if err != nil {
			return false, nil
		}
		for _, r := range rs {
			local = local || r.Type == unix.RTN_LOCAL
			if src, ok := netip.AddrFromSlice(r.Src); ok {
				srcs = append(srcs, src.Unmap())
			}
		}
		return local, srcs
	}
	compare := func(stage string) {
		t.Helper()
		err := node.Do(func() error {
			for i, got := range coordinator.RouteAddrs(h, addrs) {
				local, srcs := plain(addrs[i])
				if got.Local != local || !slices.Equal(got.Srcs, srcs) {
					t.Errorf("%s: %s: RouteAddrs says local %v, sources %v; the kernel's lookup %v, %v", stage, addrs[i], got.Local, got.Srcs, local, srcs)
				}
			}
			var want []netip.Addr
			for _, s := range subnets {
				_, srcs := plain(s.Addr().Next())
				for _, a := range srcs {
					if s.Contains(a) && !slices.Contains(want, a) {
						want = append(want, a)
					}
				}
			}
			if got := coordinator.NodeAddrsIn(h, subnets); !slices.Equal(got, want) {
				t.Errorf("%s: NodeAddrsIn %v, the kernel's lookups %v", stage, got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	compare("as built")

	// a default route, a route with a preferred source, routes that
	// reject (the kernel puts them on lo, which has a global address), and
	// a local prefix (AnyIP: every address in it is the node's, and the
	// kernel chooses their source as for any other)
	gw := netops.IPNet(netip.PrefixFrom(n.GW6, 128)).IP
	for _, r := range []*netlink.Route{
		{Dst: netops.IPNet(netip.MustParsePrefix("2001:db8:98::/64")), Type: unix.RTN_UNREACHABLE},
		{Dst: netops.IPNet(netip.MustParsePrefix("2001:db8:99::/64")), Type: unix.RTN_BLACKHOLE},
		{LinkIndex: lo.Attrs().Index, Dst: netops.IPNet(netip.MustParsePrefix("2001:db8:aa::/64")), Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL},
		{LinkIndex: uplink.Attrs().Index, Dst: netops.IPNet(netip.MustParsePrefix("::/0")), Gw: gw},
		{LinkIndex: uplink.Attrs().Index, Dst: netops.IPNet(netip.MustParsePrefix("2001:db8:77::/64")), Src: netlab.NodeIP6.AsSlice()},
	} {
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("route %s: %v", r.Dst, err)
		}
	}
	compare("routes")

	// many veths on the node, each with its link-local address
	for i := range 50 {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("rsv%d", i)}, PeerName: fmt.Sprintf("rsp%d", i)}
		if err := h.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(v); err != nil {
			t.Fatal(err)
		}
		if p, err := h.LinkByName(v.PeerName); err == nil {
			h.LinkSetUp(p)
		}
	}
	compare("veths")

	// a second global address on the uplink (another subnet's): the
	// kernel's rules choose, not the shortcut
	second := &netlink.Addr{IPNet: netops.IPNet(netip.MustParsePrefix("fd00:77::1/64")), Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(uplink, second); err != nil {
		t.Fatal(err)
	}
	compare("two addresses")
	if err := h.AddrDel(uplink, second); err != nil {
		t.Fatal(err)
	}

	// the node's address deprecated (preferred lifetime 0)
	dep := &netlink.Addr{IPNet: netops.IPNet(netip.PrefixFrom(netlab.NodeIP6, n.Subnet6.Bits())), Flags: unix.IFA_F_NODAD, PreferedLft: 0, ValidLft: 3600}
	if err := h.AddrReplace(uplink, dep); err != nil {
		t.Fatal(err)
	}
	compare("deprecated")
}
