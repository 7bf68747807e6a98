// Package coordinator plans what Spiderpool's coordinator does as
// operations of the pod's one transaction. In underlay mode: a veth pair
// from the pod to its node, so the pod reaches its node and the cluster's
// service and pod CIDRs through the node's stack, and host routes so the
// node reaches the pod. In overlay mode eth0 is the cluster's CNI's, and
// its veth does the same for the pod's underlay NICs. The layouts are
// written up in README.md.
package coordinator

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// PodVeth is the pod end of the veth pair.
const PodVeth = "veth0"

// HostRulePriority is the priority of the node's "from all lookup
// <hostRuleTable>" rule: before the main table.
const HostRulePriority = 1000

// NIC is what the coordinator needs of one pod NIC.
type NIC struct {
	IfName string
	Addrs  []netip.Prefix
	// Table is the NIC's policy table; 0 means main (the default-route NIC).
	Table int
	// RulePriority is the priority of its "from <address>" rules.
	RulePriority int
}

// Input is everything the coordinator's plan depends on.
type Input struct {
	ContainerID string
	NICs        []NIC
	// NodeIPs are the node's addresses the pod must reach through veth0.
	NodeIPs []netip.Addr
	Conf    conf.Coordinator
	// Overlay is eth0 as its delegate made it, in overlay mode.
	Overlay *Overlay
}

// HostVethName is the node end of a pod's veth: "spn" and 12 hex digits of
// the container ID's hash (fits IFNAMSIZ; container IDs that share a prefix
// do not collide).
func HostVethName(containerID string) string {
	h := sha256.Sum256([]byte(containerID))
	return "spn" + hex.EncodeToString(h[:6])
}

// vethMAC is a stable, locally administered unicast MAC for one end of a
// pod's veth, chosen by the plan so neighbour entries can be planned too.
func vethMAC(containerID, end string) string {
	h := sha256.Sum256([]byte(containerID + "/" + end))
	h[0] = (h[0] | 0x02) &^ 0x01
	return net.HardwareAddr(h[:6]).String()
}

// Plan returns the coordinator's operations for a pod, after its NICs'.
func Plan(in Input) []txn.Op {
	c := in.Conf
	if !c.Enabled() || len(in.NICs) == 0 {
		return nil
	}
	if c.Overlay() {
		return overlayPlan(in)
	}
	sysctls := podSysctls(in)
	host := HostVethName(in.ContainerID)
	hostMAC, podMAC := vethMAC(in.ContainerID, "host"), vethMAC(in.ContainerID, "pod")
	podV6 := slices.ContainsFunc(in.NICs, func(n NIC) bool { return addrOf(n, false).IsValid() })
	ops := []txn.Op{
		&Veth{Host: host, Pod: PodVeth, HostMAC: hostMAC, PodMAC: podMAC, MTU: c.VethMTU,
			NoLinkLocal: !podV6 || firstOf(in.NodeIPs, false).IsValid()},
		&netops.LinkUp{NS: txn.Host, Link: host},
		&netops.LinkUp{NS: txn.Pod, Link: PodVeth},
	}
	// the node reaches every pod address through the veth
	for _, n := range in.NICs {
		for _, a := range n.Addrs {
			ip := a.Addr()
			ops = append(ops,
				&netops.NeighAdd{NS: txn.Host, Link: host, IP: ip, MAC: podMAC},
				&HostRoute{Dst: netip.PrefixFrom(ip, ip.BitLen()), Link: host, Table: c.HostRuleTable, RulePriority: HostRulePriority, Src: firstOf(in.NodeIPs, ip.Is4())})
		}
	}
	// the pod reaches the node's addresses and the cluster's CIDRs through
	// the veth, from main and from every NIC's own table
	for _, ip := range in.NodeIPs {
		ops = append(ops, &netops.NeighAdd{NS: txn.Pod, Link: PodVeth, IP: ip, MAC: hostMAC})
	}
	hijack := append(append(append([]netip.Prefix{}, c.ServiceCIDR...), c.PodCIDR...), c.HijackCIDR...)
	for _, n := range in.NICs {
		for _, ip := range in.NodeIPs {
			src := addrOf(n, ip.Is4())
			if !src.IsValid() {
				continue // the NIC has no address of this family
			}
			ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: PodVeth, Dst: netip.PrefixFrom(ip, ip.BitLen()), Table: n.Table, Src: src})
		}
		for _, cidr := range hijack {
			gw := firstOf(in.NodeIPs, cidr.Addr().Is4())
			src := addrOf(n, cidr.Addr().Is4())
			if !gw.IsValid() || !src.IsValid() {
				continue
			}
			ops = append(ops, &netops.RouteAdd{NS: txn.Pod, Link: PodVeth, Dst: cidr, GW: gw, Table: n.Table, Src: src})
		}
	}
	// replies to connections that came in through veth0 go back through it
	if len(in.NodeIPs) > 0 {
		ops = append(ops, &ReplyPath{Veth: PodVeth})
		def := in.NICs[0]
		for _, n := range in.NICs {
			if n.Table == 0 {
				def = n
			}
		}
		for _, v4 := range []bool{true, false} {
			gw, src := firstOf(in.NodeIPs, v4), addrOf(def, v4)
			for _, n := range in.NICs {
				if !src.IsValid() {
					src = addrOf(n, v4)
				}
			}
			if !gw.IsValid() || !src.IsValid() {
				continue
			}
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if !v4 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			ops = append(ops,
				&netops.RouteAdd{NS: txn.Pod, Link: PodVeth, Dst: netip.PrefixFrom(gw, gw.BitLen()), Table: ReplyTable, Src: src},
				&netops.RouteAdd{NS: txn.Pod, Link: PodVeth, Dst: dst, GW: gw, Table: ReplyTable, Src: src},
				&netops.RuleAdd{NS: txn.Pod, Priority: ReplyRulePriority, Mark: ReplyMark, Table: ReplyTable, V6: !v4})
		}
	}
	return append(ops, sysctls...)
}

// PrefixMAC is the MAC podMACPrefix gives a NIC: the 2-byte prefix, then
// the 4 bytes of the NIC's IPv4 address, or else the last 4 bytes of its
// IPv6 address. ok is false for a NIC without addresses.
func PrefixMAC(prefix [2]byte, addrs []netip.Prefix) (mac string, ok bool) {
	var tail []byte
	for _, a := range addrs {
		if a.Addr().Is4() {
			b := a.Addr().As4()
			tail = b[:]
			break
		}
		if tail == nil {
			b := a.Addr().As16()
			tail = b[12:]
		}
	}
	if tail == nil {
		return "", false
	}
	return net.HardwareAddr(append(prefix[:], tail...)).String(), true
}

// podSysctls are the pod-wide settings: rp_filter (all, default and each
// NIC, since the kernel uses the larger of "all" and the interface's) and
// IPv6 enabled when the pod has IPv6 addresses.
func podSysctls(in Input) []txn.Op {
	op := &netops.Sysctls{NS: txn.Pod}
	if v := in.Conf.PodRPFilter; v >= 0 {
		keys := []string{"all", "default"}
		for _, n := range in.NICs {
			keys = append(keys, n.IfName)
		}
		for _, k := range keys {
			op.Values = append(op.Values, netops.Sysctl{Key: "net/ipv4/conf/" + k + "/rp_filter", Value: fmt.Sprint(v)})
		}
	}
	for _, n := range in.NICs {
		if addrOf(n, false).IsValid() {
			op.Values = append(op.Values, netops.Sysctl{Key: "net/ipv6/conf/all/disable_ipv6", Value: "0"})
			break
		}
	}
	if len(op.Values) == 0 {
		return nil
	}
	return []txn.Op{op}
}

// addrOf is the NIC's first address of a family.
func addrOf(n NIC, v4 bool) netip.Addr {
	for _, a := range n.Addrs {
		if a.Addr().Is4() == v4 {
			return a.Addr()
		}
	}
	return netip.Addr{}
}

func firstOf(ips []netip.Addr, v4 bool) netip.Addr {
	for _, ip := range ips {
		if ip.Is4() == v4 {
			return ip
		}
	}
	return netip.Addr{}
}
