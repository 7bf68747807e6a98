// Package facts is the node-facts stage of an ADD: what the node says
// about a request before anything is allocated, and the checks against
// it. It takes the NICs of the request (package request, with their pools)
// and the node's netlink handles, and gives the NICs with what was read:
// each sriov NIC's VF and its settings before the ADD, each pool's node
// addresses, the annotation's routes on the NIC whose subnet holds their
// gateway; or the error that refuses the request: a master or bond slave
// missing, an interface already in the pod, a static address that is the
// node's; after the allocation, an address the node turns out to have. It
// creates nothing.
package facts

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/plan"
	"github.com/spinneret-cni/spinneret/request"
)

// RefusedError is an allocated address the pod may not have.
type RefusedError struct{ Err error }

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// NodeAddrRule keeps the node's own addresses from the pod, before
// anything is allocated: the node routes every pod address into the pod
// (table 500), so a pod holding the node's address, or its gateway, would
// take the node's own traffic. The NICs' pools learn the node's addresses
// inside their subnets (never handed out), and a static address that is
// the node's, the gateway, a network or broadcast address, or excluded is
// refused, naming the annotation entry.
func NodeAddrRule(host *netlink.Handle, nics []plan.NIC, nodeIPs []netip.Addr, serviceCIDRs []netip.Prefix) error {
	var subnets []netip.Prefix
	for _, n := range nics {
		for _, pl := range n.Network.Pools {
			subnets = append(subnets, pl.Subnet)
		}
	}
	if len(subnets) == 0 {
		return nil
	}
	addrs := append(coordinator.NodeAddrsIn(host, subnets), nodeIPs...)
	for i := range nics {
		pools := slices.Clone(nics[i].Network.Pools) // the catalogue's own stay as configured
		for k := range pools {
			pools[k].ServiceCIDRs = nil
			for _, sc := range serviceCIDRs {
				if sc.Overlaps(pools[k].Subnet) {
					pools[k].ServiceCIDRs = append(pools[k].ServiceCIDRs, sc)
				}
			}
			pools[k].NodeAddrs = nil
			for _, a := range addrs {
				if pools[k].Subnet.Contains(a) && !slices.Contains(pools[k].NodeAddrs, a) {
					pools[k].NodeAddrs = append(pools[k].NodeAddrs, a)
				}
			}
		}
		nics[i].Network.Pools = pools
		for _, a := range nics[i].Static {
			field := fmt.Sprintf("%s[%d].ips", request.AnnotNetworks, i-1)
			if coordinator.IsNodeAddr(host, a) {
				return fmt.Errorf("%s: %s: static address %s is an address of the node", field, nics[i].IfName, a)
			}
			if k := slices.IndexFunc(pools, func(pl conf.Pool) bool { return pl.Subnet.Contains(a) }); k >= 0 {
				if why := pools[k].Refusal(a); why != "" {
					return fmt.Errorf("%s: %s: static address %s %s", field, nics[i].IfName, a, why)
				}
			}
		}
	}
	return nil
}

// AllocatedAddrs are the NICs' addresses, in order.
func AllocatedAddrs(nics []plan.NIC) []netip.Addr {
	var out []netip.Addr
	for _, n := range nics {
		for _, a := range n.Addrs {
			out = append(out, a.Address.Addr())
		}
	}
	return out
}

// CheckAllocated refuses an allocated address that the node has (on an
// interface NodeAddrRule did not read; routes are AllocatedAddrs' routes)
// and, from a delegated IPAM plugin (whose pools spinneret does not know),
// one that is its own gateway or its subnet's IPv4 network or broadcast
// address.
func CheckAllocated(nics []plan.NIC, routes []coordinator.AddrRoute, serviceCIDRs []netip.Prefix) error {
	i := 0
	for _, n := range nics {
		for _, al := range n.Addrs {
			a, local := al.Address.Addr(), routes[i].Local
			i++
			from := "pool " + al.Pool
			if d := n.Network.DelegateIPAM; d != nil {
				from = "IPAM plugin " + d.Type
			}
			why, hint := "", " (exclude it there)"
			switch sub := al.Address.Masked(); {
			case n.Network.AddressSpace != nil && !slices.ContainsFunc(n.Network.AddressSpace, func(p netip.Prefix) bool { return p.Contains(a) }):
				why, hint = "outside the address space the cluster admin allows NADs (nadSubnets in the CNI config: "+prefixes(n.Network.AddressSpace)+")", ""
			case local:
				why = "an address of the node"
			case slices.ContainsFunc(serviceCIDRs, func(p netip.Prefix) bool { return p.Contains(a) }):
				why = "inside the cluster's service CIDR"
			case n.Network.DelegateIPAM == nil:
			case a == al.Gateway:
				why = "its own gateway"
			case a.Is4() && sub.Bits() <= 30 && (a == sub.Addr() || a == conf.LastAddr(sub)):
				why = "the network or broadcast address of " + sub.String()
			case a.Is6() && sub.Bits() <= 126 && a == sub.Addr():
				why = "the subnet-router anycast address of " + sub.String()
			}
			if why != "" {
				return &RefusedError{fmt.Errorf("%s: %s gave %s, %s%s", n.IfName, from, a, why, hint)}
			}
		}
		if err := defaultRouteGWs(n); err != nil {
			return err
		}
	}
	return nil
}

func prefixes(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return strings.Join(out, ", ")
}

// defaultRouteGWs refuses a networks annotation "default-route" value that
// is not a gateway of its NIC: the default route goes through the NIC's
// gateways, so any other value could not be honoured.
func defaultRouteGWs(n plan.NIC) error {
	for _, gw := range n.DefaultRouteGWs {
		if slices.ContainsFunc(n.Addrs, func(al ipam.Allocation) bool { return al.Gateway == gw }) {
			continue
		}
		var gws []string
		for _, al := range n.Addrs {
			if al.Gateway.IsValid() {
				gws = append(gws, al.Gateway.String())
			}
		}
		if len(gws) == 0 {
			gws = []string{"none"}
		}
		return &RefusedError{fmt.Errorf("%s: default-route %s is not a gateway of the NIC (its gateways: %s)", n.IfName, gw, strings.Join(gws, ", "))}
	}
	return nil
}

// NodeIPs are the node's addresses the pod reaches through its veth: the
// node conf's nodeIPs (configured), or else those coordinator.NodeIPs
// finds from the routes to the pod's addresses.
func NodeIPs(configured []netip.Addr, routes []coordinator.AddrRoute) []netip.Addr {
	if len(configured) > 0 {
		return configured
	}
	return coordinator.NodeIPs(routes)
}

// checkParents checks what a NIC hangs off before anything is created: the
// master (with its MTU), or, for parents the ifacer ensures, what they are
// made of (a VLAN's parent, a bond's slaves) and that the VLAN link's name
// fits.
func checkParents(host *netlink.Handle, n *plan.NIC) error {
	nw := &n.Network
	if nw.VLAN != 0 {
		if name := n.LinkMaster(); len(name) > 15 {
			return fmt.Errorf("%s: VLAN link %s is longer than an interface name may be (15)", n.IfName, name)
		}
	}
	if nw.Bond != nil {
		for _, s := range nw.Bond.Slaves {
			if _, err := host.LinkByName(s); err != nil {
				return fmt.Errorf("%s: bond %s: slave %q not found", n.IfName, nw.Bond.Name, s)
			}
		}
		return nil
	}
	if nw.VLAN != 0 {
		return drivers.CheckMaster(host, "VLAN "+strconv.Itoa(nw.VLAN)+" for "+nw.Driver, n.IfName, nw.Master, nw.MTU)
	}
	return drivers.CheckMaster(host, nw.Driver, n.IfName, nw.Master, nw.MTU)
}

// Precheck validates the NICs against the host and the pod before
// anything is allocated or created, and reads each VF's settings before
// this ADD (VFOrig, journaled with the plan so an undo restores them).
func Precheck(env *txn.Env, nics []plan.NIC) error {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	pod, err := env.Handle(txn.Pod)
	if err != nil {
		return fmt.Errorf("pod netns %s: %w", env.PodNetNS, err)
	}
	kinds := map[string]string{} // master -> the driver of the pod's first NIC on it
	for i := range nics {
		n := nics[i]
		if n.Network.Delegate != nil {
			continue // its CNI makes it, and checks what it needs
		}
		if n.VF != nil {
			// the VF's settings before this ADD: journaled with the plan
			st, err := drivers.ReadVFState(host, n.VF)
			if err != nil {
				return err
			}
			nics[i].VFOrig = st
			if n.Userspace() {
				continue
			}
		} else if err := checkParents(host, &n); err != nil {
			return err
		}
		if m := n.LinkMaster(); n.VF == nil {
			if d, ok := kinds[m]; ok && d != n.Network.Driver {
				return fmt.Errorf("%s: %s and %s links cannot share master %s (the kernel gives a master one kind of child)", n.IfName, d, n.Network.Driver, m)
			}
			kinds[m] = n.Network.Driver
		}
		if n.Network.Driver == vocab.Ipvlan && n.PodMAC {
			return fmt.Errorf("%s: an ipvlan link has its master's MAC; the requested MAC %s cannot apply", n.IfName, n.MAC)
		}
		if _, err := pod.LinkByName(n.IfName); err == nil {
			return fmt.Errorf("interface %s already exists in pod netns %s", n.IfName, env.PodNetNS)
		} else if !netops.Gone(err) {
			return err
		}
	}
	return nil
}

// AssignRoutes gives each route of spinneret.io/routes to the NIC whose
// subnet holds its gateway.
func AssignRoutes(nics []plan.NIC, routes []request.Route) error {
	for _, r := range routes {
		k := slices.IndexFunc(nics, func(n plan.NIC) bool {
			return slices.ContainsFunc(n.Network.Pools, func(p conf.Pool) bool { return p.Subnet.Contains(r.GW) })
		})
		if k < 0 {
			return fmt.Errorf("%s.gw: %s is in the subnet of none of the pod's NICs", r.Field, r.GW)
		}
		nics[k].ExtraRoutes = append(nics[k].ExtraRoutes, plan.Route{Dst: r.Dst, GW: r.GW})
	}
	return nil
}
