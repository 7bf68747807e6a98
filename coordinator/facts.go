package coordinator

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

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
