// Package request is the first stage of an ADD. It takes what the CNI call
// asks for, CNI_IFNAME, CNI_ARGS (parsed once, with the CNI library's
// loader), the validated config and node conf, and the pod's annotations,
// with the NetworkAttachmentDefinitions they name fetched through an
// interface the caller passes in, and gives one validated Request: the
// pod's identity and its NICs in order (eth0 on the primary network, then
// each network the annotations select) with their networks, static
// addresses, MACs, pool choices, default-route NIC and extra routes.
//
// It has no kernel and no I/O of its own, and every user error is found
// here, before anything is allocated; errors name the annotation, entry,
// field and value.
package request

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/conf"
)

// Pod annotations spinneret reads.
const (
	AnnotNetworks        = "k8s.v1.cni.cncf.io/networks"
	AnnotDefaultRouteNIC = "spinneret.io/default-route-nic"
	AnnotIPPools         = "spinneret.io/ippools"
	AnnotRoutes          = "spinneret.io/routes"
	// AnnotDefaultNetwork is Multus' choice of a pod's eth0 network: a
	// catalogue network or a NAD of the pod's namespace, instead of the
	// primary network.
	AnnotDefaultNetwork = "v1.multus-cni.io/default-network"
)

// Args is CNI_ARGS as spinneret reads it: the Kubernetes pod it names, and
// a MAC for eth0. Other keys are the runtime's and ignored.
type Args struct {
	types.CommonArgs
	MAC               types.UnmarshallableString
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
	K8S_POD_UID       types.UnmarshallableString
}

// ParseArgs reads CNI_ARGS ("K=V;K2=V2"); a pair without "=" is an error.
func ParseArgs(s string) (Args, error) {
	var a Args
	if s == "" {
		return a, nil
	}
	err := types.LoadArgs("IgnoreUnknown=1;"+s, &a)
	return a, err
}

// Pod is a Kubernetes pod as CNI_ARGS name it.
type Pod struct{ Namespace, Name, UID string }

// String is namespace/name; "-" for no pod.
func (p *Pod) String() string {
	if p == nil {
		return "-"
	}
	return p.Namespace + "/" + p.Name
}

// Pod is the pod the args name; nil when they name none.
func (a Args) Pod() *Pod {
	if a.K8S_POD_NAMESPACE == "" || a.K8S_POD_NAME == "" {
		return nil
	}
	return &Pod{Namespace: string(a.K8S_POD_NAMESPACE), Name: string(a.K8S_POD_NAME), UID: string(a.K8S_POD_UID)}
}

// NADs finds the networks NetworkAttachmentDefinitions define.
type NADs interface {
	// Network is the network NAD namespace/name defines. An error is
	// reported as is, under the annotation entry that named it.
	Network(namespace, name string) (*conf.Network, error)
}

// Input is everything a Request is made from.
type Input struct {
	Config *conf.Config
	Node   *conf.Node
	// IfName is CNI_IFNAME, eth0's name.
	IfName string
	Args   Args
	// Annotations are the pod's (from the runtime or the API server).
	Annotations map[string]string
	// NADs looks up networks the catalogue does not define; nil: none.
	NADs NADs
}

// Request is what the pod asks for, validated.
type Request struct {
	// Pod is the pod CNI_ARGS name; nil for a container that is none.
	Pod  *Pod
	NICs []NIC
	// Routes are spinneret.io/routes' entries: each goes to the NIC whose
	// subnet holds its gateway, once the NICs' pools are known.
	Routes []Route
}

// NIC is one pod interface as the pod asks for it.
type NIC struct {
	IfName string
	// Network is the NIC's network: masters and bond slaves mapped to the
	// node's interfaces and allowed; a local network's pools narrowed to
	// those spinneret.io/ippools names.
	Network conf.Network
	// StatusName is the network's name in network-status ("ns/name" when
	// the annotation named a namespace); "" means the network's name.
	StatusName string
	// Static are the addresses the networks annotation's "ips" ask for.
	Static []netip.Addr
	// MAC is the MAC to use; PodMAC marks one the pod asked for
	// (annotation, runtime, CNI_ARGS), which wins over podMACPrefix.
	MAC    string
	PodMAC bool
	// DefaultRoute marks the NIC that holds the pod's default route.
	DefaultRoute bool
	// DefaultRouteGWs are the networks annotation's "default-route"
	// values: each must be a gateway of this NIC (checked once its
	// addresses are allocated, facts.CheckAllocated).
	DefaultRouteGWs []netip.Addr
	// Pools is what spinneret.io/ippools asks of a kubernetes network.
	Pools PoolChoice
	// DeviceID is an sriov NIC's VF when the config (or, for eth0, the
	// runtime's deviceID capability) names one; else its network's
	// resourceName says which of the pod's devices.
	DeviceID string
}

// PoolChoice is spinneret.io/ippools' entry for a kubernetes network's
// NIC: the IPPools it names, per family.
type PoolChoice struct {
	Annotated bool
	IPv4      []string
	IPv6      []string
}

// Route is a route the pod asks for.
type Route struct {
	// Field names the annotation entry, for errors.
	Field string
	Dst   netip.Prefix
	GW    netip.Addr
}

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

// MaxAnnotationBytes bounds each annotation spinneret reads (the API
// server bounds a pod's annotations to 256 KiB together; a runtime passing
// them as a capability need not): a networks annotation for maxNICs NICs
// with their statics and MACs is a few KiB.
const MaxAnnotationBytes = 64 << 10

// ErrCapability marks an error in what the runtime passed (CNI_ARGS' MAC),
// not in the pod's annotations.
var ErrCapability = errors.New("invalid runtime argument")

// Resolve makes the Request: eth0 (CNI_IFNAME) on the primary network,
// then every network the annotations select, in order.
func Resolve(in Input) (*Request, error) {
	cfg, ann := in.Config, in.Annotations
	for _, k := range []string{AnnotNetworks, AnnotDefaultNetwork, AnnotDefaultRouteNIC, AnnotIPPools, AnnotRoutes} {
		if n := len(ann[k]); n > MaxAnnotationBytes {
			return nil, fmt.Errorf("%s: %d bytes, at most %d", k, n, MaxAnnotationBytes)
		}
	}
	req := &Request{Pod: in.Args.Pod()}
	podNS := string(in.Args.K8S_POD_NAMESPACE)
	primary := cfg.Network
	eth0 := NIC{IfName: in.IfName, Network: primary, MAC: primary.MAC, DeviceID: cfg.RuntimeDeviceID}
	if primary.SRIOV != nil && primary.SRIOV.DeviceID != "" {
		eth0.DeviceID = primary.SRIOV.DeviceID
	}
	if v, ok := ann[AnnotDefaultNetwork]; ok {
		sels, err := parseSelections(AnnotDefaultNetwork, v)
		if err != nil {
			return nil, err
		}
		if len(sels) != 1 {
			return nil, fmt.Errorf("%s: names %d networks; it names the one network of the pod's %s", AnnotDefaultNetwork, len(sels), in.IfName)
		}
		if sels[0].Interface != "" && sels[0].Interface != in.IfName {
			return nil, fmt.Errorf("%s: interface %s: the default network is the pod's %s", AnnotDefaultNetwork, conf.Excerpt(sels[0].Interface), in.IfName)
		}
		sels[0].Interface = in.IfName
		n, err := selected(in, podNS, AnnotDefaultNetwork, sels[0], true)
		if err != nil {
			return nil, err
		}
		if n.DeviceID == "" {
			n.DeviceID = cfg.RuntimeDeviceID
		}
		primary, eth0 = n.Network, n
	}
	if m := string(in.Args.MAC); m != "" {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
			return nil, fmt.Errorf("%w: CNI_ARGS MAC: %s is not a unicast MAC address", ErrCapability, conf.Excerpt(m))
		}
		eth0.MAC, eth0.PodMAC = hw.String(), true
	}
	if cfg.RuntimeMAC != "" {
		eth0.MAC, eth0.PodMAC = cfg.RuntimeMAC, true
	}
	nics := []NIC{eth0}
	defaultNIC := -1
	if len(eth0.DefaultRouteGWs) > 0 {
		defaultNIC = 0
	}
	sels, err := parseSelections(AnnotNetworks, ann[AnnotNetworks])
	if err != nil {
		return nil, err
	}
	for i, sel := range sels {
		field := fmt.Sprintf("%s[%d]", AnnotNetworks, i)
		if sel.Interface == "" {
			sel.Interface = fmt.Sprintf("net%d", i+1)
		}
		n, err := selected(in, podNS, field, sel, false)
		if err != nil {
			return nil, err
		}
		if len(n.DefaultRouteGWs) > 0 {
			if defaultNIC >= 0 {
				return nil, fmt.Errorf("%s.default-route: %s already has the default route", field, nics[defaultNIC].IfName)
			}
			defaultNIC = len(nics)
		}
		nics = append(nics, n)
	}
	if len(nics) > cfg.MaxNICs {
		return nil, fmt.Errorf("%s: %d NICs requested, at most %d (maxNICs)", AnnotNetworks, len(nics), cfg.MaxNICs)
	}
	for i := range nics {
		for j := range i {
			if nics[i].IfName == nics[j].IfName {
				return nil, fmt.Errorf("%s: interface %q is used twice", AnnotNetworks, nics[i].IfName)
			}
		}
		if err := mapMasters(in.Node, &nics[i].Network); err != nil {
			return nil, err
		}
	}
	if err := applyIPPools(nics, ann[AnnotIPPools]); err != nil {
		return nil, err
	}
	if req.Routes, err = parseRoutes(ann[AnnotRoutes]); err != nil {
		return nil, err
	}
	name := primary.Coordinator.PodDefaultRouteNIC
	field := "coordinator.podDefaultRouteNic"
	if a, ok := ann[AnnotDefaultRouteNIC]; ok {
		name, field = strings.TrimSpace(a), AnnotDefaultRouteNIC
	}
	if defaultNIC < 0 && name != "" {
		if defaultNIC = slices.IndexFunc(nics, func(n NIC) bool { return n.IfName == name }); defaultNIC < 0 {
			return nil, fmt.Errorf("%s: %s is not one of the pod's NICs (%s)", field, conf.Excerpt(name), ifnames(nics))
		}
	}
	nics[max(defaultNIC, 0)].DefaultRoute = true
	req.NICs = nics
	return req, nil
}

// selected is the NIC one entry of a networks annotation (or of the
// default-network one, primary: the interface is CNI_IFNAME, checked
// already) selects: its network (the catalogue's, or a NAD of the pod's
// own namespace), statics, MAC and default-route gateways; field names the
// entry in errors.
func selected(in Input, podNS, field string, sel selection, primary bool) (NIC, error) {
	if sel.Namespace != "" && podNS == "" {
		return NIC{}, fmt.Errorf("%s: network %s names a namespace, and the runtime gave no K8S_POD_NAMESPACE to check it against", field, conf.Excerpt(sel.Namespace+"/"+sel.Name))
	}
	if sel.Namespace != "" && sel.Namespace != podNS {
		return NIC{}, fmt.Errorf("%s: network %s is not in the pod's namespace %s", field, conf.Excerpt(sel.Namespace+"/"+sel.Name), podNS)
	}
	nw, ok := in.Config.Lookup(sel.Name)
	if !ok {
		var err error
		if nw, err = nadNetwork(in, podNS, sel.Name); err != nil {
			return NIC{}, fmt.Errorf("%s: %w", field, err)
		}
	}
	if nw.Delegate != nil && !primary {
		return NIC{}, fmt.Errorf("%s: network %s is another CNI's (its conflist %s): it makes eth0 only (the primary network, or %s)", field, nw.Name, nw.Delegate.Conflist, AnnotDefaultNetwork)
	}
	if nw.Delegate != nil && (len(sel.IPs) > 0 || sel.MAC != "") {
		return NIC{}, fmt.Errorf("%s: network %s is another CNI's: its addresses and MAC are its own (no ips or mac)", field, nw.Name)
	}
	n := NIC{IfName: sel.Interface, Network: *nw, MAC: nw.MAC}
	if nw.SRIOV != nil {
		n.DeviceID = nw.SRIOV.DeviceID
	}
	if sel.Namespace != "" {
		n.StatusName = sel.Namespace + "/" + sel.Name
	}
	if !primary {
		if err := conf.PodIfNameError(n.IfName, false); err != nil {
			return NIC{}, fmt.Errorf("%s.interface: %w", field, err)
		}
	}
	for j, s := range sel.IPs {
		a, err := parseAddr(s)
		if err != nil {
			return NIC{}, fmt.Errorf("%s.ips[%d]: %s is not an address", field, j, conf.Excerpt(s))
		}
		if k := slices.IndexFunc(n.Static, func(b netip.Addr) bool { return b.Is4() == a.Is4() }); k >= 0 {
			return NIC{}, fmt.Errorf("%s.ips[%d]: %s: the NIC already has %s, and a NIC gets one address per family", field, j, a, n.Static[k])
		}
		n.Static = append(n.Static, a)
	}
	if sel.MAC != "" {
		hw, err := net.ParseMAC(sel.MAC)
		if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
			return NIC{}, fmt.Errorf("%s.mac: %s is not a unicast MAC address", field, conf.Excerpt(sel.MAC))
		}
		n.MAC, n.PodMAC = hw.String(), true
	}
	for j, s := range sel.DefaultRoute {
		gw, err := netip.ParseAddr(s)
		if err != nil {
			return NIC{}, fmt.Errorf("%s.default-route[%d]: %s is not an address", field, j, conf.Excerpt(s))
		}
		if slices.ContainsFunc(n.DefaultRouteGWs, func(b netip.Addr) bool { return b.Is4() == gw.Is4() }) {
			return NIC{}, fmt.Errorf("%s.default-route[%d]: a second %s gateway", field, j, family(gw))
		}
		n.DefaultRouteGWs = append(n.DefaultRouteGWs, gw)
	}
	return n, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// nadNetwork is the network a NetworkAttachmentDefinition of the pod's own
// namespace defines; a name in neither the catalogue nor the namespace is
// an error listing the catalogue.
func nadNetwork(in Input, podNS, name string) (*conf.Network, error) {
	var known []string
	for _, n := range in.Config.Networks {
		known = append(known, n.Name)
	}
	notDefined := fmt.Errorf("network %s is not defined (networks: %s)", conf.Excerpt(name), strings.Join(known, ", "))
	if in.NADs == nil || podNS == "" {
		return nil, notDefined
	}
	nw, err := in.NADs.Network(podNS, name)
	if errors.Is(err, ErrNoNAD) {
		return nil, fmt.Errorf("%w, nor is a NetworkAttachmentDefinition %s/%s", notDefined, podNS, name)
	}
	return nw, err
}

// ErrNoNAD is what NADs.Network returns for a NAD that does not exist.
var ErrNoNAD = errors.New("no such NetworkAttachmentDefinition")

// mapMasters maps a network's master (or its bond's slaves) to the node's
// interfaces, checked against the node's allow-list. An sriov network has
// none: its VF comes from deviceID or the kubelet.
func mapMasters(node *conf.Node, nw *conf.Network) error {
	if b := nw.Bond; b != nil {
		nb := *b
		nb.Slaves = nil
		for _, sl := range b.Slaves {
			real, err := node.ResolveMaster(sl)
			if err != nil {
				return fmt.Errorf("network %s: bond %s: %w", nw.Name, b.Name, err)
			}
			nb.Slaves = append(nb.Slaves, real)
		}
		nw.Bond = &nb
		return nil
	}
	if nw.SRIOV != nil || nw.Delegate != nil {
		return nil
	}
	real, err := node.ResolveMaster(nw.Master)
	if err != nil {
		return fmt.Errorf("network %s: %w", nw.Name, err)
	}
	nw.Master = real
	return nil
}

// parseNetworks reads the networks annotation.
func parseNetworks(s string) ([]selection, error) { return parseSelections(AnnotNetworks, s) }

// parseSelections reads annotation key in the networks annotation's
// format: a JSON list, or the short form "name, ns/name, name@ifname,
// ns/name@ifname".
func parseSelections(key, s string) ([]selection, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "[") {
		var out []selection
		if err := conf.DecodeStrict(key, []byte(s), &out); err != nil {
			return nil, err
		}
		for i, sel := range out {
			if sel.Name == "" {
				return nil, fmt.Errorf("%s[%d].name: missing", key, i)
			}
			if err := checkNames(fmt.Sprintf("%s[%d]", key, i), sel, key == AnnotDefaultNetwork); err != nil {
				return nil, err
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
			return nil, fmt.Errorf("%s: entry %d %s is not name, namespace/name or name@interface", key, i, conf.Excerpt(item))
		}
		if err := checkNames(fmt.Sprintf("%s[%d]", key, i), sel, key == AnnotDefaultNetwork); err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return out, nil
}

// A network's name is a catalogue network's or a NAD's (a Kubernetes
// object name: lower case, digits, '.', '-', and '_' for the catalogue's),
// its namespace a Kubernetes namespace's (a DNS label).

// checkNames refuses a selection whose name, namespace or interface no
// network, namespace or pod NIC can have, before it is looked up.
func checkNames(field string, sel selection, primary bool) error {
	if len(sel.Name) > 253 || !conf.ValidDNSName(sel.Name) {
		return fmt.Errorf("%s: network name %s is not a network or NetworkAttachmentDefinition name (lower case letters, digits, '.', '-', '_'; at most 253)", field, conf.Excerpt(sel.Name))
	}
	if sel.Namespace != "" && (len(sel.Namespace) > 63 || !conf.ValidDNSLabel(sel.Namespace)) {
		return fmt.Errorf("%s: namespace %s is not a namespace name", field, conf.Excerpt(sel.Namespace))
	}
	if sel.Interface != "" {
		if err := conf.PodIfNameError(sel.Interface, primary); err != nil {
			return fmt.Errorf("%s.interface: %w", field, err)
		}
	}
	return nil
}

func ifnames(nics []NIC) string {
	var out []string
	for _, n := range nics {
		out = append(out, n.IfName)
	}
	return strings.Join(out, ", ")
}

// parseAddr reads an address, with or without a prefix length.
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// applyIPPools narrows NICs' pools to those spinneret.io/ippools names (a
// kubernetes network's NIC records the IPPool names, which the kubernetes
// backend checks).
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
		k := slices.IndexFunc(nics, func(n NIC) bool { return n.IfName == e.Interface })
		if k < 0 {
			return fmt.Errorf("%s.interface: %s is not one of the pod's NICs (%s)", field, conf.Excerpt(e.Interface), ifnames(nics))
		}
		if len(e.IPv4)+len(e.IPv6) == 0 {
			return fmt.Errorf("%s: names no pool", field)
		}
		if nics[k].Network.KubeIPAM {
			nics[k].Pools = PoolChoice{Annotated: true, IPv4: e.IPv4, IPv6: e.IPv6}
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
					return fmt.Errorf("%s.%s[%d]: pool %s is not a pool of network %s", field, fam.key, j, conf.Excerpt(name), nics[k].Network.Name)
				}
				if nics[k].Network.Pools[pi].Is4() != fam.v4 {
					return fmt.Errorf("%s.%s[%d]: pool %q is not an %s pool", field, fam.key, j, name, fam.key)
				}
				pools = append(pools, nics[k].Network.Pools[pi])
			}
		}
		nics[k].Network.Pools = pools
	}
	return nil
}

// parseRoutes reads spinneret.io/routes.
func parseRoutes(s string) ([]Route, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var entries []routeEntry
	if err := conf.DecodeStrict(AnnotRoutes, []byte(s), &entries); err != nil {
		return nil, err
	}
	var out []Route
	for i, e := range entries {
		field := fmt.Sprintf("%s[%d]", AnnotRoutes, i)
		dst, err := netip.ParsePrefix(e.Dst)
		if err != nil {
			return nil, fmt.Errorf("%s.dst: %s is not a CIDR", field, conf.Excerpt(e.Dst))
		}
		gw, err := netip.ParseAddr(e.GW)
		if err != nil || gw.Is4() != dst.Addr().Is4() {
			return nil, fmt.Errorf("%s.gw: %s is not an address of the destination's family", field, conf.Excerpt(e.GW))
		}
		out = append(out, Route{Field: field, Dst: dst.Masked(), GW: gw})
	}
	return out, nil
}
