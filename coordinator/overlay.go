package coordinator

import (
	"net/netip"
	"slices"

	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// OverlayTable is eth0's policy table in overlay mode while eth0 holds the
// default route: a copy of eth0's routes, looked up for packets from
// eth0's addresses, so a reply to traffic that came in on eth0 leaves on
// eth0 even where main now routes its destination out of an underlay NIC
// (a subnet of net1's, say). Spiderpool uses the same table.
const OverlayTable = 100

// tuned reports whether the pod's NICs have policy tables at all.
func tuned(in Input) bool {
	return slices.ContainsFunc(in.NICs, func(n NIC) bool { return n.Table != 0 })
}

// eth0Table is eth0's policy table in overlay mode: its own table when
// another NIC holds the default route, else OverlayTable.
func eth0Table(n NIC) int {
	if n.Table != 0 {
		return n.Table
	}
	return OverlayTable
}

// PlanOverlayEth0 returns the overlay mode's steps on eth0, which run
// before the other NICs are made: eth0's routes copied into its policy
// table with "from <eth0's addresses>" rules, and, when another NIC holds
// the default route, eth0's default routes of the families that NIC has
// taken out of main (they are put back when the pod is undone). Nothing when the pod has eth0 alone
// or its routes are not tuned: the delegate's eth0 is then left as it
// made it.
func PlanOverlayEth0(in Input) []txn.Op {
	ov := in.Overlay
	if !in.Conf.Overlay() || ov == nil || len(in.NICs) < 2 || !tuned(in) {
		return nil
	}
	eth0 := in.NICs[0]
	table := eth0Table(eth0)
	var ops []txn.Op
	if eth0.Table != 0 {
		// the default route of a family the default-route NIC has an
		// address of: eth0 keeps the other's
		var def NIC
		if i := slices.IndexFunc(in.NICs, func(n NIC) bool { return n.Table == 0 }); i >= 0 {
			def = in.NICs[i]
		}
		for _, r := range ov.Routes {
			if r.Dst.Bits() == 0 && addrOf(def, r.Dst.Addr().Is4()).IsValid() {
				ops = append(ops, &netops.RouteDel{RouteAdd: *delegateRoute(ov, r, 0)})
			}
		}
	}
	for _, r := range ov.Routes {
		ops = append(ops, delegateRoute(ov, r, table))
	}
	for _, a := range eth0.Addrs {
		ip := a.Addr()
		ops = append(ops, &netops.RuleAdd{NS: txn.Pod, Priority: eth0.RulePriority, Src: netip.PrefixFrom(ip, ip.BitLen()), Table: table, V6: ip.Is6()})
	}
	return ops
}

func delegateRoute(ov *Overlay, r DelegateRoute, table int) *netops.RouteAdd {
	return &netops.RouteAdd{NS: txn.Pod, Link: ov.Link, Dst: r.Dst, GW: r.GW, Src: r.Src, OnLink: r.OnLink, MTU: r.MTU, Metric: r.Metric, Table: table}
}

// overlayPlan is the overlay mode's part after the NICs: the node reaches
// the underlay NICs' addresses through eth0's node end (table 500, as in
// underlay mode, and permanent neighbours for eth0's MAC); each underlay
// NIC's table reaches the node and the cluster's CIDRs through eth0; main
// reaches the node through eth0, and the cluster's CIDRs too when an
// underlay NIC holds the default route (from eth0's address). Nothing for
// a pod with eth0 alone.
func overlayPlan(in Input) []txn.Op {
	ov, c := in.Overlay, in.Conf
	if ov == nil || len(in.NICs) < 2 {
		return nil
	}
	var ops []txn.Op
	eth0 := in.NICs[0]
	under := in.NICs[1:]
	for _, n := range under {
		for _, a := range n.Addrs {
			ip := a.Addr()
			ops = append(ops,
				&netops.NeighAdd{NS: txn.Host, Link: ov.HostVeth, IP: ip, MAC: ov.MAC},
				&HostRoute{Dst: netip.PrefixFrom(ip, ip.BitLen()), Link: ov.HostVeth, Table: c.HostRuleTable, RulePriority: HostRulePriority, Src: firstOf(in.NodeIPs, ip.Is4())})
		}
	}
	if !tuned(in) {
		return append(ops, podSysctls(in)...)
	}
	var inMain []netip.Prefix // eth0's own destinations in main
	for _, r := range ov.Routes {
		inMain = append(inMain, r.Dst.Masked())
	}
	for _, ip := range in.NodeIPs {
		// not the delegate's own next hop (ptp's gateway on the node's
		// veth): its neighbour entry is the delegate's
		if !slices.Contains(inMain, netip.PrefixFrom(ip, ip.BitLen())) {
			ops = append(ops, &netops.NeighAdd{NS: txn.Pod, Link: ov.Link, IP: ip, MAC: ov.HostMAC})
		}
	}
	// every underlay NIC's table: the node and the cluster's CIDRs via
	// eth0; main: the node's addresses always (a node address on an
	// underlay subnet would otherwise go out of that NIC, where a macvlan
	// cannot reach its own node), the cluster's CIDRs when eth0 no longer
	// holds the default route
	hijack := slices.Concat(c.ServiceCIDR, c.PodCIDR, c.HijackCIDR)
	type target struct {
		table int
		src   NIC // whose address the routes prefer
		cidrs []netip.Prefix
	}
	targets := []target{{0, eth0, nil}}
	if eth0.Table != 0 {
		targets[0].cidrs = hijack
	}
	for _, n := range under {
		if n.Table != 0 {
			targets = append(targets, target{n.Table, n, hijack})
		}
	}
	for _, t := range targets {
		skip := func(dst netip.Prefix) bool { return t.table == 0 && slices.Contains(inMain, dst.Masked()) }
		for _, ip := range in.NodeIPs {
			dst := netip.PrefixFrom(ip, ip.BitLen())
			if src := addrOf(t.src, ip.Is4()); src.IsValid() && !skip(dst) {
				ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: ov.Link, Dst: dst, Table: t.table, Src: src})
			}
		}
		for _, cidr := range t.cidrs {
			gw, src := firstOf(in.NodeIPs, cidr.Addr().Is4()), addrOf(t.src, cidr.Addr().Is4())
			if gw.IsValid() && src.IsValid() && !skip(cidr) {
				ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: ov.Link, Dst: cidr, GW: gw, Table: t.table, Src: src})
			}
		}
	}
	return append(ops, podSysctls(in)...)
}
