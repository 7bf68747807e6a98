package coordinator

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
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
// Srcs. h must be the handle of the namespace the calling thread is in
// (the node's): the IPv6 shortcut of routeSrcs reads the link's addresses
// from the thread's namespace.
func RouteAddrs(h *netlink.Handle, addrs []netip.Addr) []AddrRoute {
	var d addrDump
	defer d.close()
	out := make([]AddrRoute, len(addrs))
	for i, a := range addrs {
		out[i].Addr = a
		out[i].Local, out[i].Srcs, _ = routeSrcs(h, &d, a)
	}
	return out
}

// routeSrcs is what a route lookup of a tells: whether it is the node's
// own address, and the source addresses the node uses towards it.
//
// For IPv6 a plain lookup is not flat: the kernel chooses the source
// (ipv6_dev_get_saddr) among every address of every link in the
// namespace, and each pod has a veth there (0.2 ms a lookup with 1000
// pods on the node, in a perf profile of BenchmarkFlat). So IPv6 asks for
// the route alone (RTM_F_FIB_MATCH: no source chosen) and reads the
// addresses of its outgoing link only, a dump the kernel filters by link
// (strict checking). Towards a global destination, where that link has
// exactly one usable address of global scope, that is the one the kernel would choose (RFC 6724: rule 5,
// prefer the outgoing interface, after rules 1-4, which tie: not the
// destination itself, the same scope, not deprecated; rule 4, a mobile
// IPv6 home address on another link, is not looked for);
// a route's preferred source is taken as the kernel takes it. Any other
// case (no usable address or several on the link, several paths) is the
// plain lookup.
func routeSrcs(h *netlink.Handle, d *addrDump, a netip.Addr) (local bool, srcs []netip.Addr, err error) {
	if a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && !siteLocal.Contains(a) {
		rs, err := h.RouteGetWithOptions(a.AsSlice(), &netlink.RouteGetOptions{FIBMatch: true})
		if err != nil {
			return false, nil, err
		}
		if len(rs) == 1 && len(rs[0].MultiPath) == 0 {
			r := rs[0]
			if ones, bits := r.Dst.Mask.Size(); r.Type == unix.RTN_LOCAL && r.Dst != nil && ones == 128 && bits == 128 {
				return true, []netip.Addr{a}, nil // an address of the node: rule 1, the address itself
			}
			if src, ok := netip.AddrFromSlice(r.Src); ok {
				return false, []netip.Addr{src.Unmap()}, nil
			}
			if r.Type == unix.RTN_UNICAST && r.LinkIndex > 0 { // a local prefix (AnyIP) is the plain lookup's
				if src, ok := d.soleGlobal6(r.LinkIndex); ok {
					return false, []netip.Addr{src}, nil
				}
			}
		}
	}
	rs, err := h.RouteGet(a.AsSlice())
	if err != nil {
		return false, nil, err
	}
	for _, r := range rs {
		local = local || r.Type == unix.RTN_LOCAL
		if src, ok := netip.AddrFromSlice(r.Src); ok {
			srcs = append(srcs, src.Unmap())
		}
	}
	return local, srcs, nil
}

// siteLocal are the IPv6 addresses of site scope (deprecated, but the
// kernel still scopes them so): a global address is not the source it
// would choose towards them.
var siteLocal = netip.MustParsePrefix("fec0::/10")

// addrDump reads one link's addresses, opening its netlink socket (in the
// calling thread's namespace, with strict checking, so that the kernel
// dumps that link alone) on first use; after an error it reads no more.
type addrDump struct {
	s   *nl.SocketHandle
	err error
}

// soleGlobal6 is the one IPv6 address of global scope on link that a
// source may be (not tentative, failed, deprecated, optimistic or a home
// address), if there is exactly one.
func (d *addrDump) soleGlobal6(link int) (netip.Addr, bool) {
	if d.s == nil && d.err == nil {
		var s *nl.NetlinkSocket
		if s, d.err = nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE); d.err == nil {
			d.s = &nl.SocketHandle{Socket: s} // one sequence for every request on it
			if d.err = unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); d.err != nil {
				d.close()
			}
		}
	}
	if d.err != nil {
		return netip.Addr{}, false
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(&nl.IfAddrmsg{IfAddrmsg: unix.IfAddrmsg{Family: unix.AF_INET6, Index: uint32(link)}})
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: d.s}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil {
		// a dump cut short may leave replies on the socket: no more
		// requests on it
		d.err = err
		d.close()
		return netip.Addr{}, false
	}
	var found netip.Addr
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			return netip.Addr{}, false
		}
		msg := nl.DeserializeIfAddrmsg(m)
		if int(msg.Index) != link {
			return netip.Addr{}, false // not filtered: do not guess
		}
		if msg.Family != unix.AF_INET6 || msg.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
		if err != nil {
			return netip.Addr{}, false
		}
		flags := uint32(msg.Flags)
		var addr netip.Addr
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFA_ADDRESS:
				addr, _ = netip.AddrFromSlice(at.Value)
			case unix.IFA_FLAGS:
				if len(at.Value) == 4 {
					flags = binary.NativeEndian.Uint32(at.Value)
				}
			}
		}
		if !addr.IsValid() {
			return netip.Addr{}, false
		}
		if flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED|unix.IFA_F_DEPRECATED|unix.IFA_F_OPTIMISTIC|unix.IFA_F_HOMEADDRESS) != 0 {
			return netip.Addr{}, false // the kernel's rules weigh these: ask it
		}
		if found.IsValid() {
			return netip.Addr{}, false
		}
		found = addr
	}
	return found, found.IsValid()
}

func (d *addrDump) close() {
	if d.s != nil {
		d.s.Socket.Close()
		d.s = nil
	}
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
// AddrList dumps every address, and each pod's veth has one). h is the
// handle of the namespace the calling thread is in, as for RouteAddrs.
func NodeAddrsIn(h *netlink.Handle, subnets []netip.Prefix) []netip.Addr {
	var d addrDump
	defer d.close()
	var out []netip.Addr
	for _, s := range subnets {
		_, srcs, err := routeSrcs(h, &d, s.Addr().Next())
		if err != nil {
			continue
		}
		for _, a := range srcs {
			if s.Contains(a) && !slices.Contains(out, a) {
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
