package conf

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
)

// nadPlugin is the part of a NetworkAttachmentDefinition's plugin config
// spinneret reads. Unknown fields are ignored, not refused: NADs are
// written for Multus and for the plugins they name, and must keep working.
type nadPlugin struct {
	Type     string  `json:"type"`
	DeviceID string  `json:"deviceID"`
	VLAN     int     `json:"vlan"`
	VLANQoS  int     `json:"vlanQoS"`
	SpoofChk string  `json:"spoofchk"`
	Trust    string  `json:"trust"`
	MinTx    *uint32 `json:"min_tx_rate"`
	MaxTx    *uint32 `json:"max_tx_rate"`
	State    string  `json:"link_state"`
	Master   string  `json:"master"`
	Mode     string  `json:"mode"`
	MTU      int     `json:"mtu"`
	MAC      string  `json:"mac"`
	IPAM     *struct {
		Type    string    `json:"type"`
		Backend string    `json:"backend"`
		Pools   []rawPool `json:"pools"`
		IPPools []string  `json:"ippools"`
	} `json:"ipam"`
}

// NADNetwork interprets a NetworkAttachmentDefinition's spec.config, a
// single plugin config or a conflist, as a network: its macvlan (or
// spinneret) entry gives the link and the pools; a Spiderpool-style
// "coordinator" entry overrides the config's coordinator settings; other
// entries (tuning, ...) are not run. The NAD's pools are named
// "<namespace>.<nad>.<pool>" on this node, so NADs of different namespaces
// never share a pool's state.
func (c *Config) NADNetwork(namespace, name string, config []byte, resourceName string) (*Network, error) {
	field := fmt.Sprintf("NetworkAttachmentDefinition %s/%s", namespace, name)
	var top struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(config, &top); err != nil {
		return nil, fmt.Errorf("%s: config is not JSON: %w", field, err)
	}
	entries := top.Plugins
	if entries == nil {
		entries = []json.RawMessage{config}
	}
	var main *nadPlugin
	var mainConf json.RawMessage
	var meta struct {
		Name       string `json:"name"`
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal(config, &meta)
	if meta.Name == "" {
		// as Multus does: a NAD's config without a name (as in Multus'
		// quickstart) is named after the NAD; the IPAM plugin it runs
		// keys its state by that name
		meta.Name = name
	}
	coord := c.Coordinator
	var tuning *nadTuning
	var unknown error // the first entry of a kind spinneret does not run
	for i, e := range entries {
		var pl nadPlugin
		if err := json.Unmarshal(e, &pl); err != nil {
			return nil, fmt.Errorf("%s: plugins[%d]: %w", field, i, err)
		}
		switch pl.Type {
		case vocab.Macvlan, vocab.Ipvlan, vocab.SRIOV, PluginType:
			if main == nil {
				main = &pl
				var m map[string]any
				json.Unmarshal(e, &m)
				if meta.Name != "" {
					m["name"] = meta.Name
				}
				if meta.CNIVersion != "" {
					m["cniVersion"] = meta.CNIVersion
				}
				mainConf, _ = json.Marshal(m)
			}
		case "coordinator":
			var rc rawCoordinator
			if err := json.Unmarshal(e, &rc); err != nil {
				return nil, fmt.Errorf("%s: plugins[%d]: %w", field, i, err)
			}
			var err error
			if coord, err = coord.merge(fmt.Sprintf("%s: plugins[%d]", field, i), &rc); err != nil {
				return nil, err
			}
		case "tuning":
			// what users rely on, done natively: sysctls, MAC, MTU
			if tuning != nil {
				return nil, fmt.Errorf("%s: plugins[%d]: a second tuning entry", field, i)
			}
			tuning = &nadTuning{}
			if err := json.Unmarshal(e, tuning); err != nil {
				return nil, fmt.Errorf("%s: plugins[%d]: %w", field, i, err)
			}
			if tuning.Promisc || tuning.Allmulti {
				return nil, fmt.Errorf("%s: plugins[%d]: tuning's promisc and allmulti are not implemented by spinneret (only sysctl, mac and mtu)", field, i)
			}
		default:
			if unknown == nil {
				unknown = fmt.Errorf("%s: plugins[%d]: plugin %s is not run by spinneret, which interprets macvlan, ipvlan, sriov, coordinator and tuning entries (sysctl, mac, mtu); remove it from the NAD, or ask for it natively", field, i, Excerpt(pl.Type))
			}
		}
	}
	if main == nil {
		return nil, fmt.Errorf("%s: no macvlan, ipvlan or sriov entry (the kinds spinneret interprets)", field)
	}
	if unknown != nil {
		return nil, unknown // never skipped silently
	}
	if main.IPAM == nil || main.IPAM.Type == "" && len(main.IPAM.Pools) == 0 && len(main.IPAM.IPPools) == 0 && main.IPAM.Backend == "" {
		return nil, fmt.Errorf("%s: no ipam", field)
	}
	rn := rawNetwork{Name: nadKey(namespace, name)}
	rn.Master, rn.Mode, rn.MTU, rn.MAC = main.Master, main.Mode, main.MTU, main.MAC
	if tuning != nil {
		// tuning runs after the main plugin: its MAC and MTU win
		if tuning.MAC != "" {
			rn.MAC = tuning.MAC
		}
		if tuning.MTU != 0 {
			rn.MTU = tuning.MTU
		}
	}
	switch main.Type {
	case vocab.Ipvlan:
		rn.Driver = vocab.Ipvlan
	case vocab.SRIOV:
		// as sriov-cni's config; the VF comes from deviceID (which device
		// plugins have Multus inject) or the NAD's resourceName
		rn.Driver, rn.Mode = vocab.SRIOV, ""
		rn.DeviceID, rn.ResourceName, rn.VLAN, rn.VLANQoS = main.DeviceID, resourceName, main.VLAN, main.VLANQoS
		rn.SpoofChk, rn.Trust, rn.MinTxRate, rn.MaxTxRate, rn.LinkState = main.SpoofChk, main.Trust, main.MinTx, main.MaxTx, main.State
	}
	var delegate *DelegateIPAM
	if t := main.IPAM.Type; t != "" && t != PluginType {
		// another IPAM plugin: spinneret runs it with the NAD's own config
		if !ValidPluginName(t) {
			return nil, fmt.Errorf("%s: ipam type %q is not a plugin name", field, t)
		}
		delegate = &DelegateIPAM{Type: t, Conf: mainConf}
		rn.IPAM = &rawIPAM{Pools: []rawPool{{Name: "delegate", Subnet: "192.0.2.0/30"}}} // validated shape only; dropped below
	} else {
		rn.IPAM = &rawIPAM{Pools: main.IPAM.Pools, IPPools: main.IPAM.IPPools, Backend: main.IPAM.Backend}
	}
	n, err := rn.validate(field, coord)
	if err != nil {
		return nil, err
	}
	n.Name = namespace + "/" + name
	if tuning != nil {
		if n.Sysctls, err = nadSysctls(field, tuning.Sysctl); err != nil {
			return nil, err
		}
	}
	if delegate != nil {
		n.Pools, n.DelegateIPAM = nil, delegate
		if !c.NADAnySubnet {
			if len(c.NADSubnets) == 0 {
				return nil, fmt.Errorf("%s: ipam: IPAM plugin %s hands out addresses of the NAD's own choosing; the cluster admin allows that only inside nadSubnets (CNI config), which lists none (%s)", field, delegate.Type, nadSubnetsHint)
			}
			n.AddressSpace = c.NADSubnets
		}
	}
	for i := range n.Pools {
		if err := c.inNADSpace(n.Pools[i].Subnet); err != nil {
			return nil, fmt.Errorf("%s: ipam.pools[%d].subnet: %w", field, i, err)
		}
		// this node's state of the pool, apart from every other NAD's
		n.Pools[i].Name = rn.Name + "." + n.Pools[i].Name
	}
	return n, nil
}

// nadTuning is what spinneret does of a NAD's tuning entry.
type nadTuning struct {
	MAC      string            `json:"mac"`
	MTU      int               `json:"mtu"`
	Sysctl   map[string]string `json:"sysctl"`
	Promisc  bool              `json:"promisc"`
	Allmulti bool              `json:"allmulti"`
}

// A tuning sysctl key (validSysctlKey) is under net., dot-separated names
// (IFNAME is the NIC's name), nothing that could leave /proc/sys/net.

// nadSysctls validates a tuning entry's sysctls, in key order.
func nadSysctls(field string, m map[string]string) ([]Sysctl, error) {
	var out []Sysctl
	for k, v := range m {
		if !validSysctlKey(k) || len(k) > 256 {
			return nil, fmt.Errorf("%s: tuning sysctl %s is not a net.* sysctl (dot-separated names; IFNAME for the NIC)", field, Excerpt(k))
		}
		if len(v) > 256 || strings.ContainsAny(v, "\n\x00") {
			return nil, fmt.Errorf("%s: tuning sysctl %s: value %s is not one line of at most 256 bytes", field, k, Excerpt(v))
		}
		out = append(out, Sysctl{Key: k, Value: v})
	}
	slices.SortFunc(out, func(a, b Sysctl) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// nadSubnetsHint says how a cluster admin allows a NAD's own addresses.
const nadSubnetsHint = `list the subnets in nadSubnets, or ["any"] to allow every subnet as Multus does`

// inNADSpace refuses a subnet a NAD defines outside nadSubnets.
func (c *Config) inNADSpace(sub netip.Prefix) error {
	if c.NADAnySubnet || slices.ContainsFunc(c.NADSubnets, func(a netip.Prefix) bool { return a.Bits() <= sub.Bits() && a.Contains(sub.Addr()) }) {
		return nil
	}
	allowed := "none"
	if len(c.NADSubnets) > 0 {
		var l []string
		for _, a := range c.NADSubnets {
			l = append(l, a.String())
		}
		allowed = strings.Join(l, ", ")
	}
	return fmt.Errorf("%s is not inside the address space the cluster admin allows NADs (nadSubnets in the CNI config: %s; %s)", sub, allowed, nadSubnetsHint)
}

// nadKey names a NAD's network on this node: "<namespace>.<name>", the
// prefix of its pools' names in the local store. A NAD's name may be up
// to 253 characters; a key longer than a pool name may be (63) keeps its
// first 50 and a hash of the whole.
func nadKey(namespace, name string) string {
	k := strings.ToLower(namespace + "." + name)
	if len(k) <= 63 {
		return k
	}
	h := sha256.Sum256([]byte(namespace + "/" + name))
	return k[:50] + "-" + hex.EncodeToString(h[:6])
}

// ValidPluginName reports whether s can name a CNI plugin binary (no path).
func ValidPluginName(s string) bool { return validCNIName(s) }
