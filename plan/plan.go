// Package plan is the plan stage of an ADD: a pure function from the pod's
// NICs (the request, with the addresses allocated for them and the VFs
// found for them) and the node facts (node addresses, cluster CIDRs) to a
// Plan, the ordered operations that attach the pod and the routing layout
// of its NICs, computed once. No kernel, no root: tests compare plans as
// data (testdata/plan-*.json).
package plan

import (
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"slices"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/ifacer"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/request"
)

// NIC is one pod interface: what the pod asked for (request.NIC), and what
// the later stages found for it: its addresses, its routes from the
// annotation, its VF.
type NIC struct {
	request.NIC
	Addrs []ipam.Allocation
	// ExtraRoutes come from spinneret.io/routes.
	ExtraRoutes []Route
	// VF is an sriov NIC's virtual function, and VFOrig its settings
	// before the ADD (read when planning, journaled with the plan).
	VF     *drivers.VF
	VFOrig drivers.VFState
	// HostIfaces are a delegate network's interfaces on the node (its
	// veth's node end), as its CNI reported them.
	HostIfaces []*current.Interface
}

// Userspace reports a NIC whose VF is bound to a userspace (DPDK) driver:
// it has no netdev in the pod, so no addresses, routes or coordinator.
func (n *NIC) Userspace() bool { return n.VF != nil && n.VF.Userspace() }

// vfWant is the VF state an sriov NIC asks for: its original settings with
// the network's (and the pod's MAC) applied.
func (n *NIC) vfWant(mac string) drivers.VFState {
	w := n.VFOrig
	sr := n.Network.SRIOV
	if mac != "" {
		w.MAC = mac
	}
	w.VLAN, w.QoS = n.Network.VLAN, sr.VLANQoS
	if sr.SpoofChk != nil {
		w.SpoofChk = *sr.SpoofChk
	}
	if sr.Trust != nil {
		w.Trust = *sr.Trust
	}
	if sr.MinTxRate != nil {
		w.MinTxRate = *sr.MinTxRate
	}
	if sr.MaxTxRate != nil {
		w.MaxTxRate = *sr.MaxTxRate
	}
	if sr.LinkState != "" {
		w.LinkState = drivers.LinkStates[sr.LinkState]
	}
	if n.Network.MTU != 0 {
		w.MTU = n.Network.MTU
	}
	return w
}

// NetdevNICs are the NICs with a netdev in the pod (all but userspace VFs).
func NetdevNICs(nics []NIC) []NIC {
	out := make([]NIC, 0, len(nics))
	for _, n := range nics {
		if !n.Userspace() {
			out = append(out, n)
		}
	}
	return out
}

// Route is a route of a NIC, resolved to a gateway (or on-link).
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// Routes are the NIC's routes: a default route via each pool's gateway
// (unless the pool lists its own default route), the pool's routes (a route
// without gw goes via the pool gateway), and the annotation's routes.
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
	return append(out, n.ExtraRoutes...)
}

// UseDelegated takes a NIC's addresses and routes from the result of the
// IPAM plugin a NAD named; a route without gateway goes via the gateway of
// its family.
func (n *NIC) UseDelegated(res *current.Result) {
	for _, i := range res.Interfaces {
		if i != nil && i.Sandbox == "" && n.Network.Delegate != nil {
			n.HostIfaces = append(n.HostIfaces, i)
		}
	}
	gw := map[bool]netip.Addr{}
	for _, ip := range res.IPs {
		addr, _ := netops.Prefix(&ip.Address)
		al := ipam.Allocation{IfName: n.IfName, Pool: n.delegatedPool(), Address: addr}
		if g, ok := netip.AddrFromSlice(ip.Gateway); ok {
			al.Gateway = g.Unmap()
			gw[al.Gateway.Is4()] = al.Gateway
		}
		n.Addrs = append(n.Addrs, al)
	}
	for _, r := range res.Routes {
		dst, _ := netops.Prefix(&r.Dst)
		rt := Route{Dst: dst}
		if g, ok := netip.AddrFromSlice(r.GW); ok {
			rt.GW = g.Unmap()
		} else {
			rt.GW = gw[rt.Dst.Addr().Is4()]
		}
		n.ExtraRoutes = append(n.ExtraRoutes, rt)
	}
}

// delegatedPool names where a delegated NIC's addresses come from: its
// NAD's IPAM plugin, or its delegate network's CNI.
func (n *NIC) delegatedPool() string {
	if n.Network.Delegate != nil {
		return "delegate:" + n.Network.Name
	}
	return "ipam:" + n.Network.DelegateIPAM.Type
}

func (n *NIC) pool(name string) *conf.Pool {
	for i := range n.Network.Pools {
		if n.Network.Pools[i].Name == name {
			return &n.Network.Pools[i]
		}
	}
	return nil
}

// FirstTable is the policy routing table of the pod's first NIC; NIC i (in
// pod order: eth0, net1, ...) uses FirstTable+i when it does not hold the
// default route. Tables come from the order of the request, never from
// counting the links in the pod.
const FirstTable = 101

// RulePriority is the priority of NIC i's "from <address>" rules: before
// the main table's 32766.
func RulePriority(i int) int { return 30000 + i }

// Routing is where a NIC's routes go: Table 0 is main.
type Routing struct {
	Table  int
	Routes []Route
	// Main are the routes of Routes (of a NIC with its own table) that are
	// in main as well, and MainSubnets the NIC's subnets whose connected
	// route stays in main: those no other NIC of the pod claims.
	Main        []Route
	MainSubnets []netip.Prefix
}

// layout decides each NIC's table and routes. With route tuning on (the
// primary network's coordinator.tunePodRoutes) and several NICs, the NIC
// holding the default route keeps its routes in main and every other NIC
// gets its own table, with its subnet, default and other routes there, and
// "from <its addresses>" rules, so replies leave by the NIC the request
// came in on. A NIC's subnet and its other routes that no other NIC of the
// pod claims are in main as well, so a socket not bound to a NIC reaches a
// peer on net1's subnet out of net1, as with Multus; default routes, and a
// destination two NICs claim, are in the NICs' tables alone, as is a route
// whose gateway is on a subnet that is not in main (unless
// coordinator.strictRouteTables, which keeps all of a NIC's routes in its
// table alone). With tuning off all routes go to main, and only the
// default NIC gets a default route.
func layout(nics []NIC) []Routing {
	tune := len(nics) > 1 && nics[0].Network.Coordinator.TunePodRoutes
	strict := len(nics) > 0 && nics[0].Network.Coordinator.StrictRouteTables
	def := max(0, slices.IndexFunc(nics, func(n NIC) bool { return n.DefaultRoute })) // eth0 unless marked
	// how many NICs claim each destination (a subnet or a route's)
	claims := map[netip.Prefix]int{}
	for _, n := range nics {
		mine := map[netip.Prefix]bool{}
		for _, a := range n.Addrs {
			mine[a.Address.Masked()] = true
		}
		for _, r := range n.Routes() {
			if r.Dst.Bits() != 0 {
				mine[r.Dst.Masked()] = true
			}
		}
		for d := range mine {
			claims[d]++
		}
	}
	out := make([]Routing, len(nics))
	for i, n := range nics {
		if tune && i != def {
			out[i].Table = FirstTable + i
		}
		if n.Network.Delegate != nil {
			// its CNI made its routes in main; the coordinator copies
			// them into its table and takes only its default routes
			// out of main
			out[i].Routes = n.Routes()
			if out[i].Table != 0 {
				for _, r := range out[i].Routes {
					if r.Dst.Bits() != 0 {
						out[i].Main = append(out[i].Main, r)
					}
				}
			}
			continue
		}
		if out[i].Table != 0 && !strict {
			for _, a := range n.Addrs {
				if sub := a.Address.Masked(); claims[sub] == 1 && !slices.Contains(out[i].MainSubnets, sub) {
					out[i].MainSubnets = append(out[i].MainSubnets, sub)
				}
			}
		}
		// a route in main needs its gateway on a subnet main reaches
		// through the NIC
		gwInMain := func(gw netip.Addr) bool {
			return !gw.IsValid() || slices.ContainsFunc(out[i].MainSubnets, func(p netip.Prefix) bool { return p.Contains(gw) })
		}
		for _, r := range n.Routes() {
			if !tune && i != def && r.Dst.Bits() == 0 {
				continue
			}
			out[i].Routes = append(out[i].Routes, r)
			if out[i].Table != 0 && !strict && r.Dst.Bits() != 0 && claims[r.Dst.Masked()] == 1 && gwInMain(r.GW) {
				out[i].Main = append(out[i].Main, r)
			}
		}
	}
	return out
}

// Input is everything a pod's plan depends on.
type Input struct {
	ContainerID string
	NICs        []NIC
	// NodeIPs are the node's addresses (see coordinator.NodeIPs).
	NodeIPs []netip.Addr
	// Cluster are the cluster's CIDRs as the controller published them,
	// for a primary network whose coordinator names none.
	Cluster ClusterCIDRs
	// Overlay is eth0 as its delegate made it (read after the delegate's
	// ADD), for coordinator mode overlay.
	Overlay *coordinator.Overlay
}

// ClusterCIDRs are the cluster's service and pod CIDRs, a node fact: the
// pod's coordinator routes them through the node when the config names
// none.
type ClusterCIDRs struct {
	Service, Pod []netip.Prefix
}

// Plan is how a pod is attached: the ordered operations and the routing
// layout of its NICs with netdevs (their tables and routes, which the CNI
// result reports), computed once.
type Plan struct {
	Ops    []txn.Op
	Layout []Routing // per NIC of NetdevNICs, in order
}

// New plans the pod: for each NIC, create the link in the pod, add its
// addresses, set it up, add its routes and rules; then the coordinator's
// veth and routes. It is a pure function of its input: no kernel, no root.
func New(in Input) *Plan {
	ops := parentOps(in)
	// userspace VFs: set through the PF only; the rest has netdevs
	for _, n := range in.NICs {
		if n.Userspace() {
			ops = append(ops, &drivers.SriovVF{Name: n.IfName, VF: *n.VF, Orig: n.VFOrig, Want: n.vfWant(n.MAC)})
		}
	}
	in.NICs = NetdevNICs(in.NICs)
	routes := layout(in.NICs)
	ci := coordinatorInput(in, routes)
	ops = append(ops, coordinator.PlanOverlayEth0(ci)...) // before another NIC's default route
	ops = append(ops, planNICs(in.NICs, routes)...)
	ops = append(ops, coordinator.Plan(ci)...)
	return &Plan{Ops: ops, Layout: routes}
}

// LinkMaster is the node link the NIC's macvlan or ipvlan hangs off: the
// network's master (or bond), or its VLAN link.
func (n *NIC) LinkMaster() string {
	if n.Network.VLAN != 0 && n.Network.SRIOV == nil {
		return ifacer.VLANName(n.Network.Master, n.Network.VLAN)
	}
	return n.Network.Master
}

// parentOps ensure the bonds and VLAN links the NICs need on the node, each
// once, before anything else (their undo runs after the pod's links are
// gone).
func parentOps(in Input) []txn.Op {
	if len(in.NICs) == 0 {
		return nil
	}
	user := txn.Key(in.ContainerID, in.NICs[0].IfName)
	var ops []txn.Op
	seen := map[string]bool{}
	for _, n := range in.NICs {
		if b := n.Network.Bond; b != nil && !seen[b.Name] {
			seen[b.Name] = true
			ops = append(ops, &ifacer.Bond{Name: b.Name, Mode: b.Mode, Options: b.Options, Slaves: b.Slaves, User: user})
		}
		if m := n.LinkMaster(); m != n.Network.Master && !seen[m] {
			seen[m] = true
			ops = append(ops, &ifacer.VLAN{Name: m, Parent: n.Network.Master, ID: n.Network.VLAN, User: user})
		}
	}
	return ops
}

// coordinatorInput is what the coordinator needs of the pod.
func coordinatorInput(in Input, routes []Routing) coordinator.Input {
	ci := coordinator.Input{ContainerID: in.ContainerID, NodeIPs: in.NodeIPs, Overlay: in.Overlay}
	if len(in.NICs) > 0 {
		ci.Conf = in.NICs[0].Network.Coordinator
		if len(ci.Conf.ServiceCIDR) == 0 && len(ci.Conf.PodCIDR) == 0 {
			ci.Conf.ServiceCIDR, ci.Conf.PodCIDR = in.Cluster.Service, in.Cluster.Pod
		}
	}
	for i, rt := range routes {
		n := coordinator.NIC{IfName: in.NICs[i].IfName, Table: rt.Table, RulePriority: RulePriority(i)}
		for _, a := range in.NICs[i].Addrs {
			n.Addrs = append(n.Addrs, a.Address)
		}
		ci.NICs = append(ci.NICs, n)
	}
	return ci
}

func planNICs(nics []NIC, routes []Routing) []txn.Op {
	// first: its undo deletes all the pod's links at once
	ops := []txn.Op{&netops.LinkSweep{NS: txn.Pod, Group: netops.PodLinkGroup}}
	for i, n := range nics {
		rt := routes[i]
		c := n.Network.Coordinator
		if n.Network.Delegate != nil {
			continue // its CNI made it, with its addresses and routes
		}
		mac := n.MAC
		if c.Enabled() && c.HasMACPrefix && !n.PodMAC {
			var addrs []netip.Prefix
			for _, a := range n.Addrs {
				addrs = append(addrs, a.Address)
			}
			if m, ok := coordinator.PrefixMAC(c.PodMACPrefix, addrs); ok {
				mac = m
			}
		}
		if n.VF != nil {
			ops = append(ops, &drivers.SriovVF{Name: n.IfName, VF: *n.VF, Orig: n.VFOrig, Want: n.vfWant(mac)})
		} else if n.Network.Driver == vocab.Ipvlan {
			ops = append(ops, &drivers.Ipvlan{Name: n.IfName, Master: n.LinkMaster(), Mode: n.Network.Mode, Flag: n.Network.Flag, MTU: n.Network.MTU, TxQLen: c.TxQueueLen})
		} else {
			ops = append(ops, &drivers.Macvlan{Name: n.IfName, Master: n.LinkMaster(), Mode: n.Network.Mode, MTU: n.Network.MTU, MAC: mac, TxQLen: c.TxQueueLen})
		}
		// before the NIC is up: router advertisements on the underlay add
		// no SLAAC address and no default route to it (its addresses and
		// routes are the plan's); then a NAD's tuning sysctls, which may
		// say otherwise
		op := &netops.Sysctls{NS: txn.Pod, Values: []netops.Sysctl{
			{Key: "net/ipv6/conf/" + n.IfName + "/accept_ra", Value: "0", IfPresent: true},
			{Key: "net/ipv6/conf/" + n.IfName + "/autoconf", Value: "0", IfPresent: true},
		}}
		for _, sc := range n.Network.Sysctls {
			op.Values = append(op.Values, netops.Sysctl{Key: sc.Path(n.IfName), Value: sc.Value})
		}
		ops = append(ops, op)
		for _, a := range n.Addrs {
			// the kernel's connected route, in main, only where the
			// layout keeps the subnet there
			ops = append(ops, &netops.AddrAdd{NS: txn.Pod, Link: n.IfName, Addr: a.Address, NoPrefixRoute: rt.Table != 0 && !slices.Contains(rt.MainSubnets, a.Address.Masked())})
		}
		ops = append(ops, &netops.LinkUp{NS: txn.Pod, Link: n.IfName})
		detect := c.Enabled() && (c.DetectIPConflict || c.DetectGateway)
		if detect {
			d := &coordinator.Detect{Link: n.IfName, Retries: c.DetectRetries, Interval: c.DetectInterval, Timeout: c.DetectTimeout}
			for _, a := range n.Addrs {
				if c.DetectIPConflict {
					d.Addrs = append(d.Addrs, a.Address.Addr())
				}
				if c.DetectGateway && a.Gateway.IsValid() {
					d.Gateways = append(d.Gateways, a.Gateway)
				}
			}
			ops = append(ops, d)
		}
		if rt.Table != 0 {
			for _, a := range n.Addrs {
				ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: n.IfName, Dst: a.Address.Masked(), Table: rt.Table})
			}
		}
		for _, r := range rt.Routes {
			ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: n.IfName, Dst: r.Dst, GW: r.GW, Table: rt.Table})
		}
		for _, r := range rt.Main {
			ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: n.IfName, Dst: r.Dst, GW: r.GW})
		}
		if rt.Table != 0 {
			for _, a := range n.Addrs {
				ops = append(ops, &netops.RuleAdd{NS: txn.Pod, Priority: RulePriority(i), Src: netip.PrefixFrom(a.Address.Addr(), a.Address.Addr().BitLen()), Table: rt.Table, V6: a.Address.Addr().Is6()})
			}
		}
		if detect {
			an := &coordinator.Announce{Link: n.IfName}
			for _, a := range n.Addrs {
				an.Addrs = append(an.Addrs, a.Address.Addr())
			}
			ops = append(ops, an)
		}
	}
	return ops
}
