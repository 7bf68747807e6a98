package coordinator

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// skipLinks are host interfaces whose addresses are not the node's (the
// same list Spiderpool uses).
var skipLinks = []string{"docker", "cbr", "dummy", "virbr", "lxcbr", "veth", "cali", "flannel", "kube-ipvs", "cni", "vx-submariner", "cilium", "spn"}

// NodeIPs learns the node's addresses a pod must reach through its veth:
// for each pod address, the source the node would use towards it, then
// every global address on the node's own interfaces; IPv4 first, no
// duplicates.
func NodeIPs(h *netlink.Handle, podAddrs []netip.Addr) ([]netip.Addr, error) {
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, p := range podAddrs {
		if rs, err := h.RouteGet(p.AsSlice()); err == nil {
			for _, r := range rs {
				a, _ := netip.AddrFromSlice(r.Src)
				add(a.Unmap())
			}
		}
	}
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		name := l.Attrs().Name
		if name == "lo" || slices.ContainsFunc(skipLinks, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			add(ip.Unmap())
		}
	}
	slices.SortStableFunc(out, func(a, b netip.Addr) int {
		switch {
		case a.Is4() && !b.Is4():
			return -1
		case !a.Is4() && b.Is4():
			return 1
		}
		return 0
	})
	return out, nil
}
