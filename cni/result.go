package cni

import (
	"fmt"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/plan"
)

// buildResult reads each NIC's MAC and MTU back from the pod namespace and
// returns the CNI result: every interface with its sandbox, every address
// with its interface index and gateway, the routes (as the plan laid them
// out) and the DNS settings.
func buildResult(env *txn.Env, netnsPath string, in plan.Input, routes []plan.Routing, dns types.DNS) (*current.Result, error) {
	nics := in.NICs
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: dns}
	nd := plan.NetdevNICs(nics)
	for _, n := range nics {
		iface := &current.Interface{Name: n.IfName, Sandbox: netnsPath}
		if n.VF != nil {
			iface.PciID = n.VF.PCI
		}
		if n.Userspace() {
			// no netdev: the PF's view of the VF
			host, err := env.Handle(txn.Host)
			if err != nil {
				return nil, err
			}
			st, err := drivers.ReadVFState(host, n.VF)
			if err != nil {
				return nil, err
			}
			iface.Mac, iface.Sandbox = st.MAC, ""
		} else {
			_, l, err := netops.Link(env, txn.Pod, n.IfName)
			if err != nil {
				return nil, fmt.Errorf("read back %s: %w", n.IfName, err)
			}
			iface.Mac, iface.Mtu = l.Attrs().HardwareAddr.String(), l.Attrs().MTU
		}
		idx := len(res.Interfaces)
		res.Interfaces = append(res.Interfaces, iface)
		for _, a := range n.Addrs {
			ipc := &current.IPConfig{Interface: current.Int(idx), Address: *netops.IPNet(a.Address)}
			if a.Gateway.IsValid() {
				ipc.Gateway = net.IP(a.Gateway.AsSlice())
			}
			res.IPs = append(res.IPs, ipc)
		}
		k := slices.IndexFunc(nd, func(x plan.NIC) bool { return x.IfName == n.IfName })
		if k < 0 {
			continue
		}
		add := func(r plan.Route, table int) {
			rt := &types.Route{Dst: *netops.IPNet(r.Dst)}
			if r.GW.IsValid() {
				rt.GW = net.IP(r.GW.AsSlice())
			}
			if table != 0 {
				rt.Table = &table
			}
			res.Routes = append(res.Routes, rt)
		}
		for _, r := range routes[k].Routes {
			add(r, routes[k].Table)
		}
		for _, r := range routes[k].Main { // the same routes, in main too
			add(r, 0)
		}
	}
	// a delegate's interfaces on the node (its veth's node end)
	for _, n := range nics {
		res.Interfaces = append(res.Interfaces, n.HostIfaces...)
	}
	// the coordinator's veth: the node end, then the pod end
	if len(nics) > 0 && nics[0].Network.Coordinator.Underlay() {
		for _, end := range []struct{ ns, name, sandbox string }{
			{txn.Host, coordinator.HostVethName(in.ContainerID), ""}, {txn.Pod, coordinator.PodVeth, netnsPath},
		} {
			_, l, err := netops.Link(env, end.ns, end.name)
			if err != nil {
				return nil, fmt.Errorf("read back %s: %w", end.name, err)
			}
			res.Interfaces = append(res.Interfaces, &current.Interface{Name: end.name, Mac: l.Attrs().HardwareAddr.String(), Mtu: l.Attrs().MTU, Sandbox: end.sandbox})
		}
	}
	return res, nil
}

// forVersion is res as a caller of cniVersion v can read it: before CNI 1.1
// a route has no table (a route of a NIC's own table would read as one of
// main) and an interface no pciID, so those are left out.
func forVersion(res *current.Result, v string) *current.Result {
	if gt, err := version.GreaterThanOrEqualTo(v, "1.1.0"); err != nil || gt {
		return res
	}
	out := *res
	out.Routes = nil
	for _, r := range res.Routes {
		if r.Table == nil {
			out.Routes = append(out.Routes, r)
		}
	}
	out.Interfaces = nil
	for _, i := range res.Interfaces {
		c := *i
		c.PciID = ""
		out.Interfaces = append(out.Interfaces, &c)
	}
	return &out
}
