// Package conf reads and validates spinneret's CNI config and node conf file
// into one typed model that the rest of the plugin consumes. Every error names
// the field and the value at fault.
package conf

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
)

// PluginType is the "type" spinneret answers to.
const PluginType = "spinneret"

// SupportedVersions are the CNI spec versions spinneret speaks.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// PodAnnotationsCapability is the runtimeConfig key under which containerd
// passes every pod annotation.
const PodAnnotationsCapability = "io.kubernetes.cri.pod-annotations"

// Capabilities spinneret understands in "capabilities" / "runtimeConfig":
// its own, and DelegateCapabilities.
var Capabilities = append([]string{"mac", "deviceID", PodAnnotationsCapability}, DelegateCapabilities...)

// DelegateCapabilities are the CNI conventions' capabilities spinneret
// does not act on itself but passes, as the runtime gave them, to a
// delegate primary network's CNI (which gets those its own plugins
// declare: libcni filters them), as Multus passes them to its delegates:
// a hostPort reaches the delegate's portmap, a bandwidth limit its
// bandwidth plugin. "mac" and "deviceID" go to the delegate too when eth0
// is its.
var DelegateCapabilities = []string{"portMappings", "bandwidth", "ipRanges", "ips", "dns", "aliases", "cgroupPath", "infinibandGUID"}

// DefaultMaxNICs is how many NICs a pod may have unless maxNICs says otherwise.
const DefaultMaxNICs = 8

// raw is the CNI config as written on disk and passed on stdin.
type raw struct {
	CNIVersion       string                     `json:"cniVersion"`
	Name             string                     `json:"name"`
	Type             string                     `json:"type"`
	Capabilities     map[string]bool            `json:"capabilities,omitempty"`
	NodeConf         string                     `json:"nodeConf,omitempty"`
	rawLink                                     // a single network, named after the config
	Networks         []rawNetwork               `json:"networks,omitempty"`
	Primary          string                     `json:"primary,omitempty"`
	MaxNICs          int                        `json:"maxNICs,omitempty"`
	NADSubnets       []string                   `json:"nadSubnets,omitempty"`
	Coordinator      *rawCoordinator            `json:"coordinator,omitempty"`
	DNS              types.DNS                  `json:"dns,omitempty"`
	RuntimeConfig    map[string]json.RawMessage `json:"runtimeConfig,omitempty"`
	Args             json.RawMessage            `json:"args,omitempty"`
	PrevResult       json.RawMessage            `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment       `json:"cni.dev/valid-attachments,omitempty"`
	Attachments      []types.GCAttachment       `json:"cni.dev/attachments,omitempty"`
}

// rawLink is what makes a network: its driver, master and addresses.
type rawLink struct {
	Driver string   `json:"driver,omitempty"`
	Master string   `json:"master,omitempty"`
	Mode   string   `json:"mode,omitempty"`
	Flag   string   `json:"flag,omitempty"`
	VLAN   int      `json:"vlan,omitempty"`
	Bond   *rawBond `json:"bond,omitempty"`
	// SR-IOV VFs
	DeviceID     string   `json:"deviceID,omitempty"`
	ResourceName string   `json:"resourceName,omitempty"`
	VLANQoS      int      `json:"vlanQoS,omitempty"`
	SpoofChk     string   `json:"spoofchk,omitempty"`
	Trust        string   `json:"trust,omitempty"`
	MinTxRate    *uint32  `json:"min_tx_rate,omitempty"`
	MaxTxRate    *uint32  `json:"max_tx_rate,omitempty"`
	LinkState    string   `json:"link_state,omitempty"`
	MTU          int      `json:"mtu,omitempty"`
	MAC          string   `json:"mac,omitempty"`
	IPAM         *rawIPAM `json:"ipam,omitempty"`
}

type rawBond struct {
	Name    string            `json:"name"`
	Mode    string            `json:"mode"`
	Options map[string]string `json:"options,omitempty"`
	Slaves  []string          `json:"slaves"`
}

// rawNetwork is an entry of the network catalogue.
type rawNetwork struct {
	Name string `json:"name"`
	rawLink
	Coordinator *rawCoordinator `json:"coordinator,omitempty"`
	// Delegate makes the network another CNI's (Calico, Cilium): its
	// conflist runs for eth0
	Delegate *rawDelegate `json:"delegate,omitempty"`
}

type rawDelegate struct {
	Conflist               string `json:"conflist"`
	ReadinessIndicatorFile string `json:"readinessIndicatorFile,omitempty"`
}

type rawIPAM struct {
	Type    string    `json:"type,omitempty"`
	Backend string    `json:"backend,omitempty"`
	Pools   []rawPool `json:"pools,omitempty"`
	IPPools []string  `json:"ippools,omitempty"`
}

type rawPool struct {
	Name    string     `json:"name"`
	Subnet  string     `json:"subnet"`
	Ranges  []rawRange `json:"ranges,omitempty"`
	Exclude []string   `json:"exclude,omitempty"`
	Gateway string     `json:"gateway,omitempty"`
	Routes  []rawRoute `json:"routes,omitempty"`
}

type rawRange struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

type rawRoute struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// Config is a validated CNI config.
type Config struct {
	CNIVersion string
	Name       string
	// NodeConfPath is the node conf file; NodeConfExplicit says the CNI
	// config named it (then it must exist).
	NodeConfPath     string
	NodeConfExplicit bool
	// Network is the primary network, for eth0; Networks is the whole
	// catalogue (the primary network included), in config order.
	Network  Network
	Networks []Network
	// MaxNICs is how many NICs one pod may have.
	MaxNICs int
	// NADSubnets is the address space NADs may define themselves (inline
	// pools, another IPAM plugin), as the cluster admin lists it in
	// nadSubnets; NADAnySubnet is nadSubnets ["any"] (Multus' way: a NAD
	// may hand out any address). Neither: NADs may use only the
	// catalogue's networks and the admin's IPPools.
	NADSubnets   []netip.Prefix
	NADAnySubnet bool
	// Coordinator is the config's coordinator settings, before any
	// network's overrides (NADs start from it).
	Coordinator Coordinator
	DNS         types.DNS
	// RuntimeMAC is the "mac" capability passed by the runtime.
	RuntimeMAC string
	// RuntimeDeviceID is the "deviceID" capability: the VF (PCI address)
	// of the primary network, when it is an sriov one.
	RuntimeDeviceID string
	// DelegateArgs are the runtime's capability arguments (but the pod
	// annotations), as it passed them, for a delegate primary network.
	DelegateArgs map[string]json.RawMessage
	// PodAnnotations are the pod's annotations as the runtime passed them
	// (containerd's io.kubernetes.cri.pod-annotations); nil if it did not.
	PodAnnotations map[string]string
	// PrevResult is the raw prevResult (CHECK, chained ADD).
	PrevResult json.RawMessage
	// ValidAttachments is set on GC.
	ValidAttachments []types.GCAttachment
}

// Network is one attachable underlay network.
type Network struct {
	Name   string
	Driver string // one of vocab.Drivers
	Master string // logical name, mapped by the node conf
	Mode   string
	// Flag is ipvlan's bridge, private or vepa.
	Flag string
	// VLAN (1-4094), when set, puts the NICs on a VLAN link of the master
	// (or of the bond), which the ifacer creates on the node if needed.
	VLAN int
	// Bond, when set, is the master: a bond of the slaves the ifacer
	// creates on the node if needed.
	Bond *Bond
	// SRIOV holds an sriov network's VF settings.
	SRIOV *SRIOV
	MTU   int    // 0: the master's
	MAC   string // normalised, lower case; "" = kernel's choice
	Pools []Pool
	// Coordinator is the config's coordinator settings with this
	// network's overrides applied.
	Coordinator Coordinator
	// KubeIPAM says addresses come from IPPool objects of the Kubernetes
	// API (the "kubernetes" backend); IPPools are then the network's pools
	// by name (may be empty: namespace or cluster default pools).
	KubeIPAM bool
	IPPools  []string
	// DelegateIPAM, for a NAD whose IPAM is another plugin (host-local,
	// whereabouts, ...), is that plugin and the NAD's config to run it
	// with; Pools is then empty.
	DelegateIPAM *DelegateIPAM
	// AddressSpace bounds the addresses a NAD's own IPAM plugin may give
	// (the config's nadSubnets); nil: any (nadSubnets ["any"]), or the
	// network is no NAD's.
	AddressSpace []netip.Prefix
	// Sysctls are a NAD's tuning sysctls, set in the pod for each NIC of
	// the network (IFNAME in a key is the NIC's name).
	Sysctls []Sysctl
	// Delegate, when set, makes the network another CNI's: its conflist
	// makes the NIC (eth0 only), spinneret neither creates a link nor
	// allocates for it.
	Delegate *Delegate
}

// Delegate is another CNI a network runs: the conflist its installer
// keeps writing (read on every call, so its upgrades are picked up), and
// a file whose presence says it is ready (Multus' readinessindicatorfile).
type Delegate struct {
	Conflist               string
	ReadinessIndicatorFile string
}

// Sysctl is one sysctl as tuning names it (net.ipv4.conf.IFNAME.arp_filter).
type Sysctl struct{ Key, Value string }

// Path is the sysctl's path under /proc/sys for NIC ifname.
func (s Sysctl) Path(ifname string) string {
	parts := strings.Split(s.Key, ".")
	for i, p := range parts {
		if p == "IFNAME" {
			parts[i] = ifname
		}
	}
	return strings.Join(parts, "/")
}

// DelegateIPAM is an IPAM plugin binary spinneret runs for a network.
type DelegateIPAM struct {
	Type string
	// Conf is the NAD entry's config (name, cniVersion and ipam included),
	// as the plugin expects it on stdin.
	Conf json.RawMessage
}

// Lookup returns the catalogue's network of that name.
func (c *Config) Lookup(name string) (*Network, bool) {
	for i := range c.Networks {
		if c.Networks[i].Name == name {
			return &c.Networks[i], true
		}
	}
	return nil, false
}

// Pool is an address pool of the local IPAM.
type Pool struct {
	Name    string
	Subnet  netip.Prefix
	Ranges  []Range // never empty after validation
	Exclude []netip.Prefix
	Gateway netip.Addr
	Routes  []Route
	// NodeAddrs are the node's own addresses inside Subnet, never handed
	// out: not config, set for each ADD from what the node has.
	NodeAddrs []netip.Addr
	// ServiceCIDRs are the cluster's service CIDRs overlapping Subnet,
	// never handed out (a pod address there would shadow a service):
	// not config, set for each ADD from the coordinator's and the
	// cluster's.
	ServiceCIDRs []netip.Prefix
}

// SRIOV is how an sriov network finds and sets up its VFs. Settings left
// nil are left as the VF has them.
type SRIOV struct {
	// DeviceID is the VF's PCI address when the config (or the NAD, as
	// device plugins have Multus inject it) names one; otherwise the VF
	// comes from the kubelet's PodResources for ResourceName.
	DeviceID     string
	ResourceName string
	VLANQoS      int
	SpoofChk     *bool
	Trust        *bool
	MinTxRate    *uint32 // Mbps
	MaxTxRate    *uint32
	LinkState    string // auto, enable, disable; "" leaves it
}

// Bond is a bond the ifacer ensures on the node.
type Bond struct {
	Name    string
	Mode    string // as the kernel names it: balance-rr, active-backup, 802.3ad, ...
	Options map[string]string
	Slaves  []string // logical names, mapped by the node conf
}

// BondModes and BondOptions are what a bond may say.
var (
	BondModes   = []string{"balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"}
	BondOptions = []string{"miimon", "updelay", "downdelay", "lacp_rate", "xmit_hash_policy", "min_links"}
)

// Range is an inclusive address range inside a pool's subnet.
type Range struct{ Start, End netip.Addr }

// Route is a route given to pods of a pool.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr // zero: via the pool gateway, or on-link if none
}

// DefaultNodeConf is the node conf file read when the CNI config names none.
const DefaultNodeConf = "/etc/spinneret/node.yaml"

// ValidIfName reports whether s is an interface name the kernel takes as
// given: 1 to 15 bytes (IFNAMSIZ less its NUL) of printable ASCII, without
// '/' or ':' (dev_valid_name refuses those and whitespace) or '%' (the
// kernel would number the name, as in "eth%d"), and not "." or "..".
// Control characters and other bytes are refused too: they name links no
// operator can type.
func ValidIfName(s string) bool { return validIfNameBytes(s) && s != "." && s != ".." }

// ReservedPodIfNames are names no pod NIC may take: lo is the pod's
// loopback, veth0 the coordinator's veth to the node, and all and default
// name the sysctl directories (net/ipv4/conf/all) the coordinator writes.
var ReservedPodIfNames = []string{"lo", "veth0", "all", "default"}

// PodIfNameError says why name cannot be a pod NIC's, nil if it can; eth0
// is the primary NIC's (CNI_IFNAME) alone.
func PodIfNameError(name string, primary bool) error {
	switch {
	case !ValidIfName(name):
		return fmt.Errorf("%s is not a valid interface name (1-15 bytes of printable ASCII, no '/', ':' or '%%')", Excerpt(name))
	case slices.Contains(ReservedPodIfNames, name):
		return fmt.Errorf("%q is reserved (%s)", name, strings.Join(ReservedPodIfNames, ", "))
	case !primary && name == "eth0":
		return fmt.Errorf(`"eth0" is the primary NIC's name`)
	}
	return nil
}

// excerptMax is how much of a user's value an error quotes.
const excerptMax = 64

// Excerpt quotes s for an error or a log line, cut to its first 64 bytes
// (at a rune boundary) and its length when longer: an error never echoes
// unbounded input.
func Excerpt(s string) string {
	if len(s) <= excerptMax {
		return strconv.Quote(s)
	}
	cut := excerptMax
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

// runtimeConfig reads the runtime's capability arguments. A runtime
// passes runtimeConfig only for declared capabilities (libcni does); one
// the config does not declare, or that spinneret does not know, is not
// honoured silently: it is refused.
func (c *Config) runtimeConfig(r *raw) error {
	keys := slices.Sorted(maps.Keys(r.RuntimeConfig))
	for _, k := range keys {
		v := r.RuntimeConfig[k]
		f := "runtimeConfig." + k
		switch {
		case !slices.Contains(Capabilities, k):
			return fmt.Errorf("%s: unknown capability (known: %s)", f, strings.Join(Capabilities, ", "))
		case !r.Capabilities[k]:
			return fmt.Errorf("%s: the %s capability is not declared in capabilities", f, k)
		case string(v) == "null":
			continue
		}
		if k != PodAnnotationsCapability {
			if c.DelegateArgs == nil {
				c.DelegateArgs = map[string]json.RawMessage{}
			}
			c.DelegateArgs[k] = v
		}
		var err error
		switch k {
		case "mac":
			var m string
			if err = json.Unmarshal(v, &m); err == nil && m != "" {
				c.RuntimeMAC, err = parseMAC(f, m)
			}
		case "deviceID":
			if err = json.Unmarshal(v, &c.RuntimeDeviceID); err == nil && c.RuntimeDeviceID != "" && !validPCI(c.RuntimeDeviceID) {
				return fmt.Errorf("%s: %q is not a PCI address (0000:01:10.0)", f, c.RuntimeDeviceID)
			}
		case PodAnnotationsCapability:
			err = json.Unmarshal(v, &c.PodAnnotations)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s: value of type %s where %s is expected", f, te.Value, te.Type)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Parse reads a single plugin config (what the runtime passes on stdin).
func Parse(b []byte) (*Config, error) {
	var r raw
	if err := decodeStrict("", b, &r); err != nil {
		return nil, err
	}
	return r.validate()
}

// rawList is a conflist; only the spinneret entry is interpreted.
type rawList struct {
	CNIVersion   string            `json:"cniVersion"`
	CNIVersions  []string          `json:"cniVersions,omitempty"`
	Name         string            `json:"name"`
	DisableCheck bool              `json:"disableCheck,omitempty"`
	DisableGC    bool              `json:"disableGC,omitempty"`
	Plugins      []json.RawMessage `json:"plugins"`
}

// ParseFile reads a config file as written in /etc/cni/net.d: a single
// config, or a conflist whose spinneret entry gets the list's name and
// cniVersion, as the runtime would inject them.
func ParseFile(b []byte) (*Config, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("config: invalid JSON: %w", err)
	}
	if _, ok := probe["plugins"]; !ok {
		return Parse(b)
	}
	var l rawList
	if err := decodeStrict("", b, &l); err != nil {
		return nil, err
	}
	// a runtime speaking CNI 1.1 picks the highest of cniVersion and
	// cniVersions it knows; an older one reads cniVersion alone: each must
	// be a version spinneret speaks
	version := l.CNIVersion
	for i, v := range l.CNIVersions {
		if !slices.Contains(SupportedVersions, v) {
			return nil, fmt.Errorf("cniVersions[%d]: %q is not supported (supported: %s)", i, v, strings.Join(SupportedVersions, ", "))
		}
		if slices.Index(SupportedVersions, v) > slices.Index(SupportedVersions, version) {
			version = v
		}
	}
	for i, p := range l.Plugins {
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			return nil, fmt.Errorf("plugins[%d]: invalid JSON: %w", i, err)
		}
		if m["type"] != PluginType {
			continue
		}
		m["name"], m["cniVersion"] = l.Name, version
		nb, _ := json.Marshal(m)
		c, err := Parse(nb)
		if err != nil {
			return nil, fmt.Errorf("plugins[%d].%w", i, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("plugins: no entry of type %q", PluginType)
}

func (r *raw) validate() (*Config, error) {
	c := &Config{CNIVersion: r.CNIVersion, Name: r.Name, DNS: r.DNS, PrevResult: r.PrevResult}
	if !slices.Contains(SupportedVersions, r.CNIVersion) {
		return nil, fmt.Errorf("cniVersion: %q is not supported (supported: %s)", r.CNIVersion, strings.Join(SupportedVersions, ", "))
	}
	if !validCNIName(r.Name) {
		return nil, fmt.Errorf("name: %q is not a valid network name (letters, digits, '.', '_', '-', starting with a letter or digit)", r.Name)
	}
	if r.Type != PluginType {
		return nil, fmt.Errorf("type: %q, want %q", r.Type, PluginType)
	}
	for k := range r.Capabilities {
		if !slices.Contains(Capabilities, k) {
			return nil, fmt.Errorf("capabilities.%s: unknown capability (known: %s)", k, strings.Join(Capabilities, ", "))
		}
	}
	c.NodeConfPath, c.NodeConfExplicit = DefaultNodeConf, r.NodeConf != ""
	if r.NodeConf != "" {
		if !strings.HasPrefix(r.NodeConf, "/") {
			return nil, fmt.Errorf("nodeConf: %q is not an absolute path", r.NodeConf)
		}
		c.NodeConfPath = r.NodeConf
	}
	if err := c.runtimeConfig(r); err != nil {
		return nil, err
	}
	c.ValidAttachments = r.ValidAttachments
	if c.ValidAttachments == nil {
		c.ValidAttachments = r.Attachments
	}
	for i, s := range r.NADSubnets {
		f := fmt.Sprintf("nadSubnets[%d]", i)
		if s == "any" {
			if len(r.NADSubnets) > 1 {
				return nil, fmt.Errorf("%s: \"any\" stands alone (it allows every subnet)", f)
			}
			c.NADAnySubnet = true
			break
		}
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			return nil, fmt.Errorf("%s: %s is not a CIDR without host bits (or \"any\")", f, Excerpt(s))
		}
		if sp, what := specialOverlap(p); what != "" {
			return nil, fmt.Errorf("%s: %s overlaps %s (%s)", f, p, sp, what)
		}
		c.NADSubnets = append(c.NADSubnets, p)
	}
	c.MaxNICs = DefaultMaxNICs
	if r.MaxNICs != 0 {
		if r.MaxNICs < 1 || r.MaxNICs > 32 {
			return nil, fmt.Errorf("maxNICs: %d is out of range (1-32)", r.MaxNICs)
		}
		c.MaxNICs = r.MaxNICs
	}
	coord, err := DefaultCoordinator().merge("coordinator", r.Coordinator)
	if err != nil {
		return nil, err
	}
	c.Coordinator = coord
	if err := c.networks(r, coord); err != nil {
		return nil, err
	}
	return c, nil
}

// delegate validates a network of another CNI: a conflist and an optional
// readiness file, absolute paths; nothing of a link or of addresses (its
// CNI makes both).
func (rn *rawNetwork) delegate(f func(string) string, n *Network) (*Network, error) {
	d := rn.Delegate
	if rn.rawLink != (rawLink{}) {
		return nil, fmt.Errorf("%s: a delegate network is its CNI's: it has no driver, master, VLAN, bond, MTU, MAC or ipam of spinneret's", f("delegate"))
	}
	for _, p := range []struct{ field, v string }{{"conflist", d.Conflist}, {"readinessIndicatorFile", d.ReadinessIndicatorFile}} {
		if p.v == "" && p.field == "readinessIndicatorFile" {
			continue
		}
		if !filepath.IsAbs(p.v) || filepath.Clean(p.v) != p.v {
			return nil, fmt.Errorf("%s: %s is not a clean absolute path", f("delegate."+p.field), Excerpt(p.v))
		}
	}
	n.Driver, n.Mode = "delegate", ""
	n.Delegate = &Delegate{Conflist: d.Conflist, ReadinessIndicatorFile: d.ReadinessIndicatorFile}
	return n, nil
}

// networks validates the catalogue: either "networks", or the single
// network written at the top level (named after the config).
func (c *Config) networks(r *raw, coord Coordinator) error {
	legacy := r.rawLink != (rawLink{})
	switch {
	case legacy && len(r.Networks) > 0:
		return fmt.Errorf("networks: give either networks or a single network's master/ipam at the top level, not both")
	case legacy:
		r.Networks = []rawNetwork{{Name: r.Name, rawLink: r.rawLink}}
	case len(r.Networks) == 0:
		return fmt.Errorf("networks: at least one network is required (or master and ipam at the top level)")
	}
	pools := map[string]string{}
	for i, rn := range r.Networks {
		path := fmt.Sprintf("networks[%d]", i)
		if legacy {
			path = ""
		}
		n, err := rn.validate(path, coord)
		if err != nil {
			return err
		}
		if _, dup := c.Lookup(n.Name); dup {
			return fmt.Errorf("%s.name: %q is used twice", path, n.Name)
		}
		for j, p := range n.Pools {
			if other, dup := pools[p.Name]; dup {
				return fmt.Errorf("%s: pool %q is also defined by network %q (pool names are per node)", join(path, fmt.Sprintf("ipam.pools[%d].name", j)), p.Name, other)
			}
			pools[p.Name] = n.Name
		}
		c.Networks = append(c.Networks, *n)
	}
	primary := r.Primary
	if primary == "" {
		primary = c.Networks[0].Name
	}
	n, ok := c.Lookup(primary)
	if !ok {
		return fmt.Errorf("primary: %q is not a network of the catalogue", r.Primary)
	}
	c.Network = *n
	return nil
}

func (rn *rawNetwork) validate(path string, coord Coordinator) (*Network, error) {
	f := func(field string) string { return join(path, field) }
	n := &Network{Name: rn.Name, Driver: rn.Driver, Master: rn.Master, Mode: rn.Mode, MTU: rn.MTU}
	if path != "" && !validName(rn.Name) {
		return nil, fmt.Errorf("%s: %q is not a valid network name (lower case letters, digits, '.', '_', '-')", f("name"), rn.Name)
	}
	var err error
	if n.Coordinator, err = coord.merge(f("coordinator"), rn.Coordinator); err != nil {
		return nil, err
	}
	if err := n.Coordinator.resolve(f("coordinator.mode"), rn.Delegate != nil); err != nil {
		return nil, err
	}
	if d := rn.Delegate; d != nil {
		return rn.delegate(f, n)
	}
	if n.Driver == "" {
		n.Driver = vocab.Drivers[0]
	}
	switch n.Driver {
	case vocab.Macvlan:
		if n.Mode == "" {
			n.Mode = vocab.MacvlanModes[0]
		}
		if !slices.Contains(vocab.MacvlanModes, n.Mode) {
			return nil, fmt.Errorf("%s: %q is not a macvlan mode (%s)", f("mode"), rn.Mode, strings.Join(vocab.MacvlanModes, ", "))
		}
		if rn.Flag != "" {
			return nil, fmt.Errorf("%s: %q: flags are ipvlan's (a macvlan network has modes only)", f("flag"), rn.Flag)
		}
	case vocab.Ipvlan:
		if n.Mode == "" {
			n.Mode = vocab.IpvlanModes[0]
		}
		if !slices.Contains(vocab.IpvlanModes, n.Mode) {
			return nil, fmt.Errorf("%s: %q is not an ipvlan mode (%s)", f("mode"), rn.Mode, strings.Join(vocab.IpvlanModes, ", "))
		}
		n.Flag = rn.Flag
		if n.Flag == "" {
			n.Flag = vocab.IpvlanFlags[0]
		}
		if !slices.Contains(vocab.IpvlanFlags, n.Flag) {
			return nil, fmt.Errorf("%s: %q is not an ipvlan flag (%s)", f("flag"), rn.Flag, strings.Join(vocab.IpvlanFlags, ", "))
		}
		if rn.MAC != "" {
			return nil, fmt.Errorf("%s: %q: an ipvlan link has its master's MAC", f("mac"), rn.MAC)
		}
		if n.Coordinator.HasMACPrefix {
			return nil, fmt.Errorf("%s: podMACPrefix does not apply to ipvlan (its links share the master's MAC)", f("coordinator.podMACPrefix"))
		}
		if n.Mode != "l2" && (n.Coordinator.DetectIPConflict || n.Coordinator.DetectGateway) {
			return nil, fmt.Errorf("%s: ipvlan %s links do not carry ARP/NDP; IP-conflict and gateway detection need mode l2", f("coordinator"), n.Mode)
		}
	case vocab.SRIOV:
		if n.Mode != "" || rn.Flag != "" || rn.Bond != nil {
			return nil, fmt.Errorf("%s: an sriov network has no mode, flag or bond", f("driver"))
		}
		if rn.MAC != "" && n.Coordinator.HasMACPrefix {
			return nil, fmt.Errorf("%s: set either a MAC or podMACPrefix", f("mac"))
		}
		sr := &SRIOV{DeviceID: rn.DeviceID, ResourceName: rn.ResourceName, VLANQoS: rn.VLANQoS, MinTxRate: rn.MinTxRate, MaxTxRate: rn.MaxTxRate, LinkState: rn.LinkState}
		if sr.DeviceID != "" && !validPCI(sr.DeviceID) {
			return nil, fmt.Errorf("%s: %q is not a PCI address (0000:01:10.0)", f("deviceID"), sr.DeviceID)
		}
		if sr.VLANQoS < 0 || sr.VLANQoS > 7 {
			return nil, fmt.Errorf("%s: %d is out of range (0-7)", f("vlanQoS"), sr.VLANQoS)
		}
		for _, o := range []struct {
			name, v string
			out     **bool
		}{{"spoofchk", rn.SpoofChk, &sr.SpoofChk}, {"trust", rn.Trust, &sr.Trust}} {
			switch o.v {
			case "":
			case "on", "off":
				b := o.v == "on"
				*o.out = &b
			default:
				return nil, fmt.Errorf("%s: %q is not on or off", f(o.name), o.v)
			}
		}
		if sr.LinkState != "" && !slices.Contains(vocab.LinkStates, sr.LinkState) {
			return nil, fmt.Errorf("%s: %q is not one of %s", f("link_state"), sr.LinkState, strings.Join(vocab.LinkStates, ", "))
		}
		if sr.MinTxRate != nil && sr.MaxTxRate != nil && *sr.MaxTxRate != 0 && *sr.MinTxRate > *sr.MaxTxRate {
			return nil, fmt.Errorf("%s: %d is above max_tx_rate %d", f("min_tx_rate"), *sr.MinTxRate, *sr.MaxTxRate)
		}
		n.SRIOV = sr
	default:
		return nil, fmt.Errorf("%s: %q is not supported (supported: %s)", f("driver"), rn.Driver, strings.Join(vocab.Drivers, ", "))
	}
	if n.Driver != vocab.SRIOV && (rn.DeviceID != "" || rn.ResourceName != "" || rn.SpoofChk != "" || rn.Trust != "" || rn.MinTxRate != nil || rn.MaxTxRate != nil || rn.LinkState != "" || rn.VLANQoS != 0) {
		return nil, fmt.Errorf("%s: deviceID, resourceName and VF settings are for sriov networks", f("driver"))
	}
	if rn.VLAN != 0 {
		if rn.VLAN < 1 || rn.VLAN > 4094 {
			return nil, fmt.Errorf("%s: %d is out of range (1-4094)", f("vlan"), rn.VLAN)
		}
		n.VLAN = rn.VLAN
	}
	if b := rn.Bond; b != nil {
		if !ValidIfName(b.Name) {
			return nil, fmt.Errorf("%s: %q is not a valid interface name", f("bond.name"), b.Name)
		}
		if !slices.Contains(BondModes, b.Mode) {
			return nil, fmt.Errorf("%s: %q is not a bond mode (%s)", f("bond.mode"), b.Mode, strings.Join(BondModes, ", "))
		}
		if len(b.Slaves) == 0 {
			return nil, fmt.Errorf("%s: a bond needs at least one slave", f("bond.slaves"))
		}
		for i, sl := range b.Slaves {
			if !ValidIfName(sl) || slices.Contains(b.Slaves[:i], sl) {
				return nil, fmt.Errorf("%s: %q is not a valid interface name, or is listed twice", f(fmt.Sprintf("bond.slaves[%d]", i)), sl)
			}
		}
		for k, v := range b.Options {
			if !slices.Contains(BondOptions, k) {
				return nil, fmt.Errorf("%s: unknown bond option (value %q; known: %s)", f("bond.options."+k), v, strings.Join(BondOptions, ", "))
			}
			if err := checkBondOption(k, v); err != nil {
				return nil, fmt.Errorf("%s: %q %v", f("bond.options."+k), v, err)
			}
		}
		if rn.Master != "" && rn.Master != b.Name {
			return nil, fmt.Errorf("%s: %q: with a bond, the master is the bond (%s)", f("master"), rn.Master, b.Name)
		}
		n.Master = b.Name
		n.Bond = &Bond{Name: b.Name, Mode: b.Mode, Options: b.Options, Slaves: b.Slaves}
	}
	if n.Driver == vocab.SRIOV {
		if rn.Master != "" {
			return nil, fmt.Errorf("%s: %q: an sriov network's VFs come from deviceID or resourceName, not a master", f("master"), rn.Master)
		}
	} else if !ValidIfName(n.Master) {
		return nil, fmt.Errorf("%s: %q is not a valid interface name", f("master"), rn.Master)
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return nil, fmt.Errorf("%s: %d is out of range (0 for the master's, or 68-65535)", f("mtu"), rn.MTU)
	}
	if rn.MAC != "" {
		if n.MAC, err = parseMAC(f("mac"), rn.MAC); err != nil {
			return nil, err
		}
	}
	if rn.IPAM == nil {
		return nil, fmt.Errorf("%s: at least one pool is required", f("ipam.pools"))
	}
	if rn.IPAM.Type != "" && rn.IPAM.Type != PluginType {
		return nil, fmt.Errorf("%s: %q is not supported (leave it empty or %q)", f("ipam.type"), rn.IPAM.Type, PluginType)
	}
	switch rn.IPAM.Backend {
	case "":
		n.KubeIPAM = len(rn.IPAM.IPPools) > 0
	case BackendLocal:
	case BackendKubernetes:
		n.KubeIPAM = true
	default:
		return nil, fmt.Errorf("%s: %q is not an IPAM backend (%s, %s)", f("ipam.backend"), rn.IPAM.Backend, BackendLocal, BackendKubernetes)
	}
	if n.KubeIPAM {
		for i, name := range rn.IPAM.IPPools {
			if !validName(name) {
				return nil, fmt.Errorf("%s: %q is not a valid IPPool name", f(fmt.Sprintf("ipam.ippools[%d]", i)), name)
			}
		}
		if len(rn.IPAM.Pools) > 0 {
			return nil, fmt.Errorf("%s: the kubernetes backend takes IPPool names in ipam.ippools, not pools", f("ipam.pools"))
		}
		n.IPPools = rn.IPAM.IPPools
		return n, nil
	}
	if len(rn.IPAM.IPPools) > 0 {
		return nil, fmt.Errorf("%s: ippools name IPPool objects of the kubernetes backend; the local backend takes pools", f("ipam.ippools"))
	}
	if len(rn.IPAM.Pools) == 0 {
		return nil, fmt.Errorf("%s: at least one pool is required", f("ipam.pools"))
	}
	seen := map[string]bool{}
	for i, rp := range rn.IPAM.Pools {
		pp := f(fmt.Sprintf("ipam.pools[%d]", i))
		p, err := rp.validate(pp)
		if err != nil {
			return nil, err
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("%s.name: %q is used twice", pp, p.Name)
		}
		seen[p.Name] = true
		for _, q := range n.Pools {
			if q.overlaps(p) {
				return nil, fmt.Errorf("%s: ranges of %q overlap pool %q", pp, p.Name, q.Name)
			}
		}
		if p.Subnet.Addr().Is6() && n.MTU != 0 && n.MTU < 1280 {
			return nil, fmt.Errorf("%s: %d is below IPv6's minimum 1280 but pool %q is IPv6", f("mtu"), n.MTU, p.Name)
		}
		n.Pools = append(n.Pools, *p)
	}
	return n, nil
}

// IPAM backends.
const (
	BackendLocal      = "local"
	BackendKubernetes = "kubernetes"
)

// ValidObjectName reports whether s can name a Kubernetes object (a DNS
// subdomain).
func ValidObjectName(s string) bool { return len(s) <= 253 && validSubdomain(s) }

func parseMAC(field, s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%s: %q is not a MAC address", field, s)
	}
	if hw[0]&1 == 1 {
		return "", fmt.Errorf("%s: %q is a multicast MAC address", field, s)
	}
	return hw.String(), nil
}

// specialPrefixes are address blocks no pod address may come from.
var specialPrefixes = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved, and the broadcast address"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// specialOverlap is the special block sub overlaps, if any.
func specialOverlap(sub netip.Prefix) (netip.Prefix, string) {
	for _, s := range specialPrefixes {
		if s.p.Overlaps(sub) {
			return s.p, s.what
		}
	}
	return netip.Prefix{}, ""
}

func (rp *rawPool) validate(path string) (*Pool, error) {
	p := &Pool{Name: rp.Name}
	if !validName(rp.Name) {
		return nil, fmt.Errorf("%s.name: %q is not a valid pool name", path, rp.Name)
	}
	sub, err := netip.ParsePrefix(rp.Subnet)
	if err != nil {
		return nil, fmt.Errorf("%s.subnet: %q is not a CIDR", path, rp.Subnet)
	}
	if sub.Masked() != sub {
		return nil, fmt.Errorf("%s.subnet: %q has host bits set (did you mean %s?)", path, rp.Subnet, sub.Masked())
	}
	maxBits := 30
	if sub.Addr().Is6() {
		maxBits = 127
	}
	if sub.Bits() > maxBits {
		return nil, fmt.Errorf("%s.subnet: %q is too small for pods", path, rp.Subnet)
	}
	if sp, what := specialOverlap(sub); what != "" {
		return nil, fmt.Errorf("%s.subnet: %s overlaps %s (%s): no pod may have such an address", path, sub, sp, what)
	}
	p.Subnet = sub
	addrIn := func(field, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return a, fmt.Errorf("%s.%s: %q is not an IP address", path, field, s)
		}
		if !sub.Contains(a) {
			return a, fmt.Errorf("%s.%s: %s is outside subnet %s", path, field, s, sub)
		}
		return a, nil
	}
	if rp.Gateway != "" {
		if p.Gateway, err = addrIn("gateway", rp.Gateway); err != nil {
			return nil, err
		}
		if p.Gateway == sub.Addr() {
			return nil, fmt.Errorf("%s.gateway: %s is the subnet's network address", path, rp.Gateway)
		}
	}
	for i, rr := range rp.Ranges {
		f := fmt.Sprintf("ranges[%d]", i)
		s, err := addrIn(f+".start", rr.Start)
		if err != nil {
			return nil, err
		}
		e, err := addrIn(f+".end", rr.End)
		if err != nil {
			return nil, err
		}
		if e.Less(s) {
			return nil, fmt.Errorf("%s.%s: end %s is before start %s", path, f, rr.End, rr.Start)
		}
		for j, prev := range p.Ranges {
			if !(e.Less(prev.Start) || prev.End.Less(s)) {
				return nil, fmt.Errorf("%s.%s: %s-%s overlaps ranges[%d]", path, f, rr.Start, rr.End, j)
			}
		}
		p.Ranges = append(p.Ranges, Range{s, e})
	}
	// in address order, whatever the config's: the allocators walk them
	// as one ascending sequence (unsorted, a walk from one range's end to
	// the next range's start went backwards, and listing a small IPPool
	// never ended)
	slices.SortFunc(p.Ranges, func(a, b Range) int { return a.Start.Compare(b.Start) })
	if len(p.Ranges) == 0 {
		p.Ranges = []Range{DefaultRange(sub)}
	}
	for i, x := range rp.Exclude {
		f := fmt.Sprintf("%s.exclude[%d]", path, i)
		var pre netip.Prefix
		if strings.Contains(x, "/") {
			pre, err = netip.ParsePrefix(x)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(x); err == nil {
				pre = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an IP address or CIDR", f, x)
		}
		if !sub.Overlaps(pre) || pre.Bits() < sub.Bits() {
			return nil, fmt.Errorf("%s: %s is outside subnet %s", f, x, sub)
		}
		p.Exclude = append(p.Exclude, pre.Masked())
	}
	for i, rr := range rp.Routes {
		f := fmt.Sprintf("%s.routes[%d]", path, i)
		d, err := netip.ParsePrefix(rr.Dst)
		if err != nil {
			return nil, fmt.Errorf("%s.dst: %q is not a CIDR", f, rr.Dst)
		}
		if d.Addr().Is4() != sub.Addr().Is4() {
			return nil, fmt.Errorf("%s.dst: %s is not of the pool's address family", f, rr.Dst)
		}
		rt := Route{Dst: d.Masked()}
		if rr.GW != "" {
			if rt.GW, err = netip.ParseAddr(rr.GW); err != nil || rt.GW.Is4() != sub.Addr().Is4() {
				return nil, fmt.Errorf("%s.gw: %q is not an address of the pool's family", f, rr.GW)
			}
		}
		p.Routes = append(p.Routes, rt)
	}
	return p, nil
}

// DefaultRange is a subnet's usable range: without the network address and,
// for IPv4, the broadcast address.
func DefaultRange(sub netip.Prefix) Range {
	start := sub.Addr().Next()
	end := LastAddr(sub)
	if sub.Addr().Is4() {
		end = end.Prev()
	}
	return Range{start, end}
}

// LastAddr is the last address of a prefix.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		bit := i * 8
		if bit >= p.Bits() {
			b[i] = 0xff
		} else if bit+8 > p.Bits() {
			b[i] |= byte(0xff >> (p.Bits() - bit))
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (p *Pool) overlaps(q *Pool) bool {
	for _, a := range p.Ranges {
		for _, b := range q.Ranges {
			if a.Start.Is4() == b.Start.Is4() && !a.End.Less(b.Start) && !b.End.Less(a.Start) {
				return true
			}
		}
	}
	return false
}

// Is4 reports whether the pool is IPv4.
func (p *Pool) Is4() bool { return p.Subnet.Addr().Is4() }

// ExcludedBlock returns the last address of the exclude prefix holding a, so
// a scan can jump over the whole block.
func (p *Pool) ExcludedBlock(a netip.Addr) (netip.Addr, bool) {
	if x, ok := p.excludedBy(a); ok {
		return LastAddr(x), true
	}
	return netip.Addr{}, false
}

// excludedBy is the exclude prefix or service CIDR holding a. (Two loops,
// not one over a concatenation: walks call it for every address of a pool
// of up to 65536, and a concatenation allocates each time.)
func (p *Pool) excludedBy(a netip.Addr) (netip.Prefix, bool) {
	for _, x := range p.Exclude {
		if x.Contains(a) {
			return x, true
		}
	}
	for _, x := range p.ServiceCIDRs {
		if x.Contains(a) {
			return x, true
		}
	}
	return netip.Prefix{}, false
}

// Excluded reports whether a is never to be handed out: excluded by config,
// the gateway, the subnet's network (IPv6: subnet-router anycast) or IPv4
// broadcast address, an address of the node, or outside every range.
func (p *Pool) Excluded(a netip.Addr) bool {
	if a == p.Gateway || a == p.Subnet.Addr() || p.Is4() && a == LastAddr(p.Subnet) || slices.Contains(p.NodeAddrs, a) {
		return true
	}
	if _, ok := p.excludedBy(a); ok {
		return true
	}
	return !p.InRanges(a)
}

// Refusal says why a, inside p's subnet, may not be a pod's static address
// ("" when it may): the reasons of Excluded, named, but for being outside
// the ranges (a static address may be).
func (p *Pool) Refusal(a netip.Addr) string {
	switch {
	case slices.Contains(p.NodeAddrs, a):
		return "is an address of the node"
	case a == p.Gateway:
		return "is the gateway of pool " + p.Name
	case a == p.Subnet.Addr() && p.Is4():
		return "is the network address of subnet " + p.Subnet.String()
	case a == p.Subnet.Addr():
		return "is the subnet-router anycast address of subnet " + p.Subnet.String()
	case p.Is4() && a == LastAddr(p.Subnet):
		return "is the broadcast address of subnet " + p.Subnet.String()
	}
	for _, x := range p.Exclude {
		if x.Contains(a) {
			return "is excluded from pool " + p.Name + " (" + x.String() + ")"
		}
	}
	for _, x := range p.ServiceCIDRs {
		if x.Contains(a) {
			return "is inside the cluster's service CIDR " + x.String()
		}
	}
	if !p.InRanges(a) {
		var rs []string
		for _, r := range p.Ranges {
			rs = append(rs, r.Start.String()+"-"+r.End.String())
		}
		return "is outside the ranges of pool " + p.Name + " (" + strings.Join(rs, ", ") + ")"
	}
	return ""
}

// InRanges reports whether a is inside one of p's ranges.
func (p *Pool) InRanges(a netip.Addr) bool {
	return slices.ContainsFunc(p.Ranges, func(r Range) bool { return !a.Less(r.Start) && !r.End.Less(a) })
}

// PoolFromSpec validates an IPPool object's spec (subnet, ranges, exclude,
// gateway, routes; its other fields are ignored here) as a pool of that name.
func PoolFromSpec(name string, spec []byte) (*Pool, error) {
	var rp rawPool
	if err := json.Unmarshal(spec, &rp); err != nil {
		return nil, fmt.Errorf("IPPool %s: %w", name, err)
	}
	rp.Name = name
	return rp.validate("IPPool " + name + ": spec")
}

// checkBondOption validates a bond option's value.
func checkBondOption(k, v string) error {
	switch k {
	case "lacp_rate":
		if v != "slow" && v != "fast" {
			return fmt.Errorf("is not slow or fast")
		}
	case "xmit_hash_policy":
		if !slices.Contains([]string{"layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4", "vlan+srcmac"}, v) {
			return fmt.Errorf("is not a transmit hash policy")
		}
	default:
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Errorf("is not a non-negative number")
		}
	}
	return nil
}
