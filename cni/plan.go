package cni

import (
	"net/netip"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
)

// NIC is one resolved pod interface: its network (with the master mapped to
// this node's interface), the MAC to use and its addresses.
type NIC struct {
	IfName  string
	Network conf.Network
	MAC     string
	Addrs   []ipam.Allocation
}

// Route is a route of a NIC, resolved to a gateway (or on-link).
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// Routes are the NIC's routes: a default route via each pool's gateway
// (unless the pool lists its own default route) and the pool's routes, a
// route without gw going via the pool gateway.
func (n *NIC) Routes() []Route {
	var out []Route
	for _, a := range n.Addrs {
		p := n.pool(a.Pool)
		if p == nil {
			continue
		}
		hasDefault := false
		for _, r := range p.Routes {
			hasDefault = hasDefault || r.Dst.Bits() == 0
		}
		if p.Gateway.IsValid() && !hasDefault {
			out = append(out, Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), GW: p.Gateway})
			if p.Is4() {
				out[len(out)-1].Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		}
		for _, r := range p.Routes {
			gw := r.GW
			if !gw.IsValid() {
				gw = p.Gateway
			}
			out = append(out, Route{Dst: r.Dst, GW: gw})
		}
	}
	return out
}

func (n *NIC) pool(name string) *conf.Pool {
	for i := range n.Network.Pools {
		if n.Network.Pools[i].Name == name {
			return &n.Network.Pools[i]
		}
	}
	return nil
}

// Plan is the ordered list of operations that attaches the NICs: for each,
// create the link in the pod, add its addresses, set it up, add its routes.
// It is a pure function of its input: no kernel, no root.
func Plan(nics []NIC) []txn.Op {
	var ops []txn.Op
	for _, n := range nics {
		ops = append(ops, &drivers.Macvlan{Name: n.IfName, Master: n.Network.Master, Mode: n.Network.Mode, MTU: n.Network.MTU, MAC: n.MAC})
		for _, a := range n.Addrs {
			ops = append(ops, &netops.AddrAdd{NS: txn.Pod, Link: n.IfName, Addr: a.Address})
		}
		ops = append(ops, &netops.LinkUp{NS: txn.Pod, Link: n.IfName})
		for _, r := range n.Routes() {
			ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: n.IfName, Dst: r.Dst, GW: r.GW})
		}
	}
	return ops
}
