package coordinator

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/conf"
)

// NodeIPs learns the node's addresses a pod must reach through its veth:
// for each pod address, the source address the node itself would use
// towards it (the node's address on the pod's network), IPv4 first, no
// duplicates. One route lookup per pod address: unlike listing the node's
// links and addresses, this does not grow with the number of pods (each
// has a veth on the node). Node conf "nodeIPs" overrides it.
func NodeIPs(h *netlink.Handle, podAddrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, p := range podAddrs {
		rs, err := h.RouteGet(p.AsSlice())
		if err != nil {
			continue // the node has no route to that network
		}
		for _, r := range rs {
			a, _ := netip.AddrFromSlice(r.Src)
			if a = a.Unmap(); a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	conf.SortIPv4First(out)
	return out
}

// IsNodeAddr reports whether a is an address of the node, on any of its
// interfaces: the kernel routes it as local. One route lookup, whatever the
// number of links.
func IsNodeAddr(h *netlink.Handle, a netip.Addr) bool {
	rs, err := h.RouteGet(a.AsSlice())
	if err != nil {
		return false // unroutable: not the node's
	}
	return slices.ContainsFunc(rs, func(r netlink.Route) bool { return r.Type == unix.RTN_LOCAL })
}

// NodeAddrsIn returns the node's addresses inside subnets, read from the
// links that face them: the given links (the NICs' masters), the link the
// node routes each subnet through, and lo. Listing every link's addresses
// would grow with the pods (each has a veth on the node with an IPv6
// link-local address).
func NodeAddrsIn(h *netlink.Handle, links []string, subnets []netip.Prefix) []netip.Addr {
	idx := map[int]bool{1: true} // lo
	for _, name := range links {
		if l, err := h.LinkByName(name); err == nil {
			idx[l.Attrs().Index] = true
		}
	}
	for _, s := range subnets {
		if rs, err := h.RouteGet(s.Addr().Next().AsSlice()); err == nil {
			for _, r := range rs {
				idx[r.LinkIndex] = true
			}
		}
	}
	var out []netip.Addr
	for i := range idx {
		l, err := h.LinkByIndex(i)
		if err != nil {
			continue
		}
		as, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range as {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ip = ip.Unmap(); ok && !slices.Contains(out, ip) && slices.ContainsFunc(subnets, func(s netip.Prefix) bool { return s.Contains(ip) }) {
				out = append(out, ip)
			}
		}
	}
	return out
}
