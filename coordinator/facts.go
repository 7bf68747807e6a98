package coordinator

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/netops"
)

// AddrRoute is how the node routes one address.
type AddrRoute struct {
	Addr netip.Addr
	// Local: the address is the node's own, on any of its interfaces (the
	// kernel routes it as local).
	Local bool
	// Srcs are the source addresses the node uses towards it.
	Srcs []netip.Addr
}

// RouteAddrs asks the kernel how the node routes each address: one route
// lookup per address, whatever the number of links (listing the node's
// links and addresses would grow with the pods, each of which has a veth
// on the node). An address the node has no route to has neither Local nor
// Srcs.
func RouteAddrs(h *netlink.Handle, addrs []netip.Addr) []AddrRoute {
	out := make([]AddrRoute, len(addrs))
	for i, a := range addrs {
		out[i].Addr = a
		rs, err := h.RouteGet(a.AsSlice())
		if err != nil {
			continue
		}
		for _, r := range rs {
			out[i].Local = out[i].Local || r.Type == unix.RTN_LOCAL
			if src, ok := netip.AddrFromSlice(r.Src); ok {
				out[i].Srcs = append(out[i].Srcs, src.Unmap())
			}
		}
	}
	return out
}

// NodeIPs are the node's addresses a pod must reach through its veth: for
// each pod address (routes, from RouteAddrs), the source address the node
// itself uses towards it (the node's address on the pod's network), IPv4
// first, no duplicates. Node conf "nodeIPs" overrides it.
func NodeIPs(routes []AddrRoute) []netip.Addr {
	var out []netip.Addr
	for _, r := range routes {
		for _, a := range r.Srcs {
			if !a.IsLoopback() && !a.IsLinkLocalUnicast() && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	conf.SortIPv4First(out)
	return out
}

// IsNodeAddr reports whether a is an address of the node, on any of its
// interfaces.
func IsNodeAddr(h *netlink.Handle, a netip.Addr) bool { return RouteAddrs(h, []netip.Addr{a})[0].Local }

// NodeAddrsIn returns the node's addresses inside subnets: for each, the
// source address the node uses towards it (one route lookup per subnet).
// That is the node's address on that network; a secondary address of the
// node inside a pod subnet is not found here, and IsNodeAddr catches it on
// the allocated address instead. Reading the links' addresses was
// measured at +2-3 ms per 3-NIC ADD with 200 pods on the node (netlink's
// AddrList dumps every address, and each pod's veth has one).
func NodeAddrsIn(h *netlink.Handle, subnets []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, s := range subnets {
		rs, err := h.RouteGet(s.Addr().Next().AsSlice())
		if err != nil {
			continue
		}
		for _, r := range rs {
			a, ok := netip.AddrFromSlice(r.Src)
			if a = a.Unmap(); ok && s.Contains(a) && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// Overlay is what the overlay mode needs of eth0, the NIC the cluster's
// CNI (the delegate) made, as read after the delegate's ADD: the link and
// its node end, and the routes the delegate gave it in the pod's main
// table (copied into eth0's policy table).
type Overlay struct {
	// Link is eth0; MAC its address.
	Link, MAC string
	// HostVeth is eth0's veth peer on the node; HostMAC its address.
	HostVeth, HostMAC string
	// Routes are eth0's routes in the pod's main table, but the IPv6
	// link-local and multicast ones every link has.
	Routes []DelegateRoute
}

// DelegateRoute is a route the delegate made through eth0.
type DelegateRoute struct {
	Dst         netip.Prefix
	GW, Src     netip.Addr
	OnLink      bool
	MTU, Metric int
}

// ReadOverlay reads eth0 after its delegate's ADD: it must be a veth whose
// peer is on the node (Calico's cali*, Cilium's lxc*, the ptp plugin's
// veth*); anything else has no node end to route the pod's other
// addresses through, and the overlay mode cannot be built.
func ReadOverlay(pod, host *netlink.Handle, ifname string) (*Overlay, error) {
	l, err := pod.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("%s from the delegate: %w", ifname, err)
	}
	if l.Type() != "veth" {
		return nil, fmt.Errorf("%s from the delegate is a %s link, not a veth to the node: coordinator mode overlay routes the node and the cluster through eth0's node end; set coordinator.mode disable for this delegate", ifname, l.Type())
	}
	peer, err := host.LinkByIndex(l.Attrs().ParentIndex)
	if err != nil || peer.Type() != "veth" || peer.Attrs().ParentIndex != l.Attrs().Index {
		return nil, fmt.Errorf("%s from the delegate: its veth peer (index %d) is not in the node's namespace", ifname, l.Attrs().ParentIndex)
	}
	o := &Overlay{Link: ifname, MAC: l.Attrs().HardwareAddr.String(), HostVeth: peer.Attrs().Name, HostMAC: peer.Attrs().HardwareAddr.String()}
	filter := &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN}
	rs, err := netops.Dump(func() ([]netlink.Route, error) {
		return pod.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("%s from the delegate: its routes: %w", ifname, err)
	}
	for _, r := range rs {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if r.Family == netlink.FAMILY_V6 {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if r.Dst != nil {
			dst, _ = netops.Prefix(r.Dst)
		}
		if a := dst.Addr(); a.Is6() && (a.IsLinkLocalUnicast() || a.IsMulticast()) {
			continue
		}
		dr := DelegateRoute{Dst: dst, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0, MTU: r.MTU, Metric: r.Priority}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			dr.GW = gw.Unmap()
		}
		if src, ok := netip.AddrFromSlice(r.Src); ok {
			dr.Src = src.Unmap()
		}
		o.Routes = append(o.Routes, dr)
	}
	return o, nil
}
