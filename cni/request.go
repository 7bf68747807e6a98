package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/ipam"
)

// Pod annotations spinneret reads.
const (
	AnnotNetworks        = "k8s.v1.cni.cncf.io/networks"
	AnnotDefaultRouteNIC = "spinneret.io/default-route-nic"
	AnnotIPPools         = "spinneret.io/ippools"
	AnnotRoutes          = "spinneret.io/routes"
)

// selection is one entry of k8s.v1.cni.cncf.io/networks (the Network
// Plumbing WG format), short or JSON form.
type selection struct {
	Name         string   `json:"name"`
	Namespace    string   `json:"namespace,omitempty"`
	Interface    string   `json:"interface,omitempty"`
	IPs          []string `json:"ips,omitempty"`
	MAC          string   `json:"mac,omitempty"`
	DefaultRoute []string `json:"default-route,omitempty"`
}

// parseNetworks reads the networks annotation: a JSON list, or the short
// form "name, ns/name, name@ifname, ns/name@ifname".
func parseNetworks(s string) ([]selection, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "[") {
		var out []selection
		if err := conf.DecodeStrict(AnnotNetworks, []byte(s), &out); err != nil {
			return nil, err
		}
		for i, sel := range out {
			if sel.Name == "" {
				return nil, fmt.Errorf("%s[%d].name: missing", AnnotNetworks, i)
			}
		}
		return out, nil
	}
	var out []selection
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		var sel selection
		name, ifname, hasIf := strings.Cut(item, "@")
		sel.Interface = ifname
		if ns, n, ok := strings.Cut(name, "/"); ok {
			sel.Namespace, name = ns, n
		}
		sel.Name = name
		if sel.Name == "" || strings.ContainsAny(sel.Name, "/@ ") || (hasIf && sel.Interface == "") || (strings.Contains(item, "/") && sel.Namespace == "") {
			return nil, fmt.Errorf("%s: entry %d %q is not name, namespace/name or name@interface", AnnotNetworks, i, strings.TrimSpace(strings.Split(s, ",")[i]))
		}
		out = append(out, sel)
	}
	return out, nil
}

// podAnnotations are the pod's annotations: as the runtime passed them
// (containerd's pod-annotations capability), or else read from the API
// server when the node conf names a kubeconfig. A pod re-created under the
// same name (another UID than CNI_ARGS' K8S_POD_UID) is refused: its
// annotations are not this sandbox's.
func (p *plugin) podAnnotations(args *skel.CmdArgs) (map[string]string, error) {
	if p.cfg.PodAnnotations != nil || p.node.Kubeconfig == "" {
		return p.cfg.PodAnnotations, nil
	}
	pod, err := p.apiPod(args)
	if err != nil || pod == nil {
		return nil, err
	}
	return pod.Annotations, nil
}

// nadNetwork is the network a NetworkAttachmentDefinition of the pod's own
// namespace defines, read from the API server (with a kubeconfig); a name
// in neither the catalogue nor the namespace is an error listing the
// catalogue.
func (p *plugin) nadNetwork(podNS, name string) (*conf.Network, error) {
	notDefined := func() error {
		var known []string
		for _, n := range p.cfg.Networks {
			known = append(known, n.Name)
		}
		return fmt.Errorf("network %q is not defined (networks: %s)", name, strings.Join(known, ", "))
	}
	c, err := p.kubeClient()
	if err != nil {
		return nil, err
	}
	if c == nil || podNS == "" {
		return nil, notDefined()
	}
	nad, err := c.GetNAD(context.Background(), podNS, name)
	if errors.Is(err, kube.ErrNotFound) {
		return nil, fmt.Errorf("%w, nor is a NetworkAttachmentDefinition %s/%s", notDefined(), podNS, name)
	}
	if err != nil {
		return nil, p.apiError(err)
	}
	return p.cfg.NADNetwork(podNS, name, nad.Config, nad.ResourceName)
}

// ippoolsEntry is one entry of spinneret.io/ippools.
type ippoolsEntry struct {
	Interface string   `json:"interface"`
	IPv4      []string `json:"ipv4,omitempty"`
	IPv6      []string `json:"ipv6,omitempty"`
}

// routeEntry is one entry of spinneret.io/routes.
type routeEntry struct {
	Dst string `json:"dst"`
	GW  string `json:"gw"`
}

// resolveNICs turns the request into the pod's NICs, in order: eth0 (the
// CNI_IFNAME) on the primary network, then every network the pod's
// annotations select. Every error names the annotation or field at fault,
// and comes before anything is allocated or created.
func (p *plugin) resolveNICs(args *skel.CmdArgs) ([]NIC, error) {
	ann, err := p.podAnnotations(args)
	if err != nil {
		return nil, err
	}
	podNS := string(p.args.K8S_POD_NAMESPACE)
	primary := p.cfg.Network
	eth0 := NIC{IfName: args.IfName, Network: primary, MAC: primary.MAC}
	if m := string(p.args.MAC); m != "" {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS MAC: %q is not a unicast MAC address", m), "")
		}
		eth0.MAC, eth0.PodMAC = hw.String(), true
	}
	if p.cfg.RuntimeMAC != "" {
		eth0.MAC, eth0.PodMAC = p.cfg.RuntimeMAC, true
	}
	nics := []NIC{eth0}
	sels, err := parseNetworks(ann[AnnotNetworks])
	if err != nil {
		return nil, err
	}
	defaultNIC := -1
	for i, sel := range sels {
		field := fmt.Sprintf("%s[%d]", AnnotNetworks, i)
		if sel.Namespace != "" && podNS != "" && sel.Namespace != podNS {
			return nil, fmt.Errorf("%s: network %s/%s is not in the pod's namespace %s", field, sel.Namespace, sel.Name, podNS)
		}
		nw, ok := p.cfg.Lookup(sel.Name)
		if !ok {
			if nw, err = p.nadNetwork(podNS, sel.Name); err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
		}
		n := NIC{IfName: sel.Interface, Network: *nw, MAC: nw.MAC}
		if sel.Namespace != "" {
			n.StatusName = sel.Namespace + "/" + sel.Name
		}
		if n.IfName == "" {
			n.IfName = fmt.Sprintf("net%d", i+1)
		}
		if !conf.ValidIfName(n.IfName) {
			return nil, fmt.Errorf("%s: interface %q is not a valid interface name", field, n.IfName)
		}
		for _, s := range sel.IPs {
			a, err := parseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%s.ips: %q is not an address", field, s)
			}
			n.Static = append(n.Static, a)
		}
		if sel.MAC != "" {
			hw, err := net.ParseMAC(sel.MAC)
			if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
				return nil, fmt.Errorf("%s.mac: %q is not a unicast MAC address", field, sel.MAC)
			}
			n.MAC, n.PodMAC = hw.String(), true
		}
		if len(sel.DefaultRoute) > 0 {
			if defaultNIC >= 0 {
				return nil, fmt.Errorf("%s.default-route: %s already has the default route", field, nics[defaultNIC].IfName)
			}
			defaultNIC = len(nics)
		}
		nics = append(nics, n)
	}
	if len(nics) > p.cfg.MaxNICs {
		return nil, fmt.Errorf("%s: %d NICs requested, at most %d (maxNICs)", AnnotNetworks, len(nics), p.cfg.MaxNICs)
	}
	for i := range nics {
		for j := range i {
			if nics[i].IfName == nics[j].IfName {
				return nil, fmt.Errorf("%s: interface %s is used twice", AnnotNetworks, nics[i].IfName)
			}
		}
		if b := nics[i].Network.Bond; b != nil {
			// the bond is spinneret's; its slaves are the node's interfaces
			nb := *b
			nb.Slaves = nil
			for _, sl := range b.Slaves {
				real, err := p.node.ResolveMaster(sl)
				if err != nil {
					return nil, fmt.Errorf("network %s: bond %s: %w", nics[i].Network.Name, b.Name, err)
				}
				nb.Slaves = append(nb.Slaves, real)
			}
			nics[i].Network.Bond = &nb
		} else if nics[i].Network.SRIOV != nil {
			// its VF comes from deviceID or the kubelet (assignVFs)
		} else if nics[i].Network.Master, err = p.node.ResolveMaster(nics[i].Network.Master); err != nil {
			return nil, fmt.Errorf("network %s: %w", nics[i].Network.Name, err)
		}
	}
	if err := applyIPPools(nics, ann[AnnotIPPools]); err != nil {
		return nil, err
	}
	if err := p.selectKubePools(args, nics); err != nil {
		return nil, err
	}
	if err := p.assignVFs(args, nics); err != nil {
		return nil, err
	}
	if err := applyRoutes(nics, ann[AnnotRoutes]); err != nil {
		return nil, err
	}
	name := primary.Coordinator.PodDefaultRouteNIC
	field := "coordinator.podDefaultRouteNic"
	if a, ok := ann[AnnotDefaultRouteNIC]; ok {
		name, field = strings.TrimSpace(a), AnnotDefaultRouteNIC
	}
	if defaultNIC < 0 && name != "" {
		if defaultNIC = slices.IndexFunc(nics, func(n NIC) bool { return n.IfName == name }); defaultNIC < 0 {
			return nil, fmt.Errorf("%s: %q is not one of the pod's NICs (%s)", field, name, ifnames(nics))
		}
	}
	if defaultNIC < 0 {
		defaultNIC = 0
	}
	nics[defaultNIC].DefaultRoute = true
	return nics, nil
}

func ifnames(nics []NIC) string {
	var out []string
	for _, n := range nics {
		out = append(out, n.IfName)
	}
	return strings.Join(out, ", ")
}

func nicIndex(nics []NIC, ifname string) int {
	return slices.IndexFunc(nics, func(n NIC) bool { return n.IfName == ifname })
}

// parseAddr reads an address, with or without a prefix length.
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// applyIPPools narrows NICs' pools to those spinneret.io/ippools names.
func applyIPPools(nics []NIC, s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var entries []ippoolsEntry
	if err := conf.DecodeStrict(AnnotIPPools, []byte(s), &entries); err != nil {
		return err
	}
	for i, e := range entries {
		field := fmt.Sprintf("%s[%d]", AnnotIPPools, i)
		k := nicIndex(nics, e.Interface)
		if k < 0 {
			return fmt.Errorf("%s.interface: %q is not one of the pod's NICs (%s)", field, e.Interface, ifnames(nics))
		}
		if nics[k].Network.KubeIPAM {
			// IPPool names: the kubernetes backend checks them
			if len(e.IPv4)+len(e.IPv6) == 0 {
				return fmt.Errorf("%s: names no pool", field)
			}
			nics[k].kubeSel = ipam.KubeSelect{Annotated: true, Annot4: e.IPv4, Annot6: e.IPv6}
			continue
		}
		var pools []conf.Pool
		for _, fam := range []struct {
			key   string
			names []string
			v4    bool
		}{{"ipv4", e.IPv4, true}, {"ipv6", e.IPv6, false}} {
			for j, name := range fam.names {
				pi := slices.IndexFunc(nics[k].Network.Pools, func(p conf.Pool) bool { return p.Name == name })
				if pi < 0 {
					return fmt.Errorf("%s.%s[%d]: pool %q is not a pool of network %s", field, fam.key, j, name, nics[k].Network.Name)
				}
				if nics[k].Network.Pools[pi].Is4() != fam.v4 {
					return fmt.Errorf("%s.%s[%d]: pool %q is not an %s pool", field, fam.key, j, name, fam.key)
				}
				pools = append(pools, nics[k].Network.Pools[pi])
			}
		}
		if len(pools) == 0 {
			return fmt.Errorf("%s: names no pool", field)
		}
		nics[k].Network.Pools = pools
	}
	return nil
}

// applyRoutes gives each route of spinneret.io/routes to the NIC whose
// subnet holds its gateway.
func applyRoutes(nics []NIC, s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var entries []routeEntry
	if err := conf.DecodeStrict(AnnotRoutes, []byte(s), &entries); err != nil {
		return err
	}
	for i, e := range entries {
		field := fmt.Sprintf("%s[%d]", AnnotRoutes, i)
		dst, err := netip.ParsePrefix(e.Dst)
		if err != nil {
			return fmt.Errorf("%s.dst: %q is not a CIDR", field, e.Dst)
		}
		gw, err := netip.ParseAddr(e.GW)
		if err != nil || gw.Is4() != dst.Addr().Is4() {
			return fmt.Errorf("%s.gw: %q is not an address of the destination's family", field, e.GW)
		}
		k := slices.IndexFunc(nics, func(n NIC) bool {
			return slices.ContainsFunc(n.Network.Pools, func(p conf.Pool) bool { return p.Subnet.Contains(gw) })
		})
		if k < 0 {
			return fmt.Errorf("%s.gw: %s is in the subnet of none of the pod's NICs", field, gw)
		}
		nics[k].ExtraRoutes = append(nics[k].ExtraRoutes, Route{Dst: dst.Masked(), GW: gw})
	}
	return nil
}

// ipamRequests is what the NICs ask of the IPAM store.
func ipamRequests(nics []NIC) []ipam.Request {
	var out []ipam.Request
	for _, n := range nics {
		out = append(out, ipam.Request{IfName: n.IfName, Pools: n.Network.Pools, Static: n.Static})
	}
	return out
}
