package conf

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Coordinator is how a pod's routes are tuned around its NICs: Spiderpool's
// coordinator settings, built into spinneret.
type Coordinator struct {
	// Mode is "underlay" (a veth to the node, policy routing across NICs),
	// "overlay" (eth0 is a delegate network's, the cluster's existing CNI:
	// the node and the cluster are reached through its veth, the other
	// NICs get policy routing beside it) or "disable" (NICs only). "auto",
	// the default, is overlay for a delegate network and underlay for any
	// other (resolved per network, when the catalogue is read).
	Mode string
	// TunePodRoutes gives each NIC but the default-route one its own table.
	TunePodRoutes bool
	// StrictRouteTables keeps every route of a NIC but the default-route
	// one in its table alone (spinneret before 2026-12: a peer on net1's
	// subnet was reached through eth0 unless the socket was bound to
	// net1). Off, a NIC's subnet and the routes no other NIC claims are in
	// main too.
	StrictRouteTables bool
	// PodDefaultRouteNIC is the NIC holding the default route; "" = eth0.
	PodDefaultRouteNIC string
	// HijackCIDR, ServiceCIDR and PodCIDR are routed through the node
	// (veth0) instead of the underlay.
	HijackCIDR, ServiceCIDR, PodCIDR []netip.Prefix
	// HostRuleTable is the node's table for routes to pod addresses.
	HostRuleTable int
	// PodRPFilter is net.ipv4.conf.{all,default}.rp_filter in the pod; -1
	// leaves it alone.
	PodRPFilter int
	// TxQueueLen sets the pod NICs' transmit queue length; 0 leaves it.
	TxQueueLen int
	// VethMTU is the MTU of the pod-node veth pair.
	VethMTU int
	// PodMACPrefix, when set ("0a:1b"), makes each NIC's MAC the prefix
	// followed by the 4 bytes of its IPv4 address (or the last 4 of its
	// IPv6 address).
	PodMACPrefix [2]byte
	HasMACPrefix bool
	// DetectIPConflict and DetectGateway probe with ARP/NDP before the
	// NIC's routes are committed.
	DetectIPConflict, DetectGateway bool
	DetectRetries                   int
	DetectInterval, DetectTimeout   time.Duration
	// Quarantine is how long an address found in conflict is not handed
	// out again.
	Quarantine time.Duration
}

// Enabled reports whether the coordinator tunes the pod at all (underlay
// or overlay).
func (c *Coordinator) Enabled() bool { return c.Mode != "disable" }

// Underlay reports the underlay mode: the coordinator's own veth0.
func (c *Coordinator) Underlay() bool { return c.Mode == "underlay" }

// Overlay reports the overlay mode: eth0 is a delegate's, and no veth0.
func (c *Coordinator) Overlay() bool { return c.Mode == "overlay" }

// resolve settles mode auto for a network: overlay when its eth0 comes
// from a delegate, underlay otherwise; and refuses a mode the network
// cannot have. field names the network's coordinator.mode.
func (c *Coordinator) resolve(field string, delegate bool) error {
	switch {
	case c.Mode == "auto" && delegate:
		c.Mode = "overlay"
	case c.Mode == "auto":
		c.Mode = "underlay"
	case c.Mode == "overlay" && !delegate:
		return fmt.Errorf("%s: overlay needs eth0 from the cluster's CNI (a network with delegate); use auto or underlay", field)
	case c.Mode == "underlay" && delegate:
		return fmt.Errorf("%s: underlay makes its own veth0 beside eth0, which would fight the delegate's veth; use auto or overlay", field)
	}
	return nil
}

// DefaultCoordinator is the coordinator with Spiderpool's defaults.
func DefaultCoordinator() Coordinator {
	return Coordinator{
		Mode: "auto", TunePodRoutes: true, HostRuleTable: 500, VethMTU: 1500,
		DetectRetries: 3, DetectInterval: 10 * time.Millisecond, DetectTimeout: 100 * time.Millisecond,
		Quarantine: 10 * time.Minute,
	}
}

// rawCoordinator is the "coordinator" block, at the top level or in a
// network; a field left out keeps the value from the level above.
type rawCoordinator struct {
	Mode               *string           `json:"mode,omitempty"`
	TunePodRoutes      *bool             `json:"tunePodRoutes,omitempty"`
	StrictRouteTables  *bool             `json:"strictRouteTables,omitempty"`
	PodDefaultRouteNIC *string           `json:"podDefaultRouteNic,omitempty"`
	HijackCIDR         []string          `json:"hijackCIDR,omitempty"`
	ServiceCIDR        []string          `json:"serviceCIDR,omitempty"`
	PodCIDR            []string          `json:"podCIDR,omitempty"`
	HostRuleTable      *int              `json:"hostRuleTable,omitempty"`
	PodRPFilter        *int              `json:"podRPFilter,omitempty"`
	TxQueueLen         *int              `json:"txQueueLen,omitempty"`
	VethMTU            *int              `json:"vethMTU,omitempty"`
	PodMACPrefix       *string           `json:"podMACPrefix,omitempty"`
	DetectIPConflict   *bool             `json:"detectIPConflict,omitempty"`
	DetectGateway      *bool             `json:"detectGateway,omitempty"`
	DetectOptions      *rawDetectOptions `json:"detectOptions,omitempty"`
}

type rawDetectOptions struct {
	Retries    *int    `json:"retries,omitempty"`
	Interval   *string `json:"interval,omitempty"`
	Timeout    *string `json:"timeout,omitempty"`
	Quarantine *string `json:"quarantine,omitempty"`
}

// merge applies r's fields over c and validates them; path names r.
func (c Coordinator) merge(path string, r *rawCoordinator) (Coordinator, error) {
	if r == nil {
		return c, nil
	}
	f := func(field string) string { return path + "." + field }
	if r.Mode != nil {
		switch *r.Mode {
		case "underlay", "overlay", "auto":
			c.Mode = *r.Mode
		case "disable", "disabled":
			c.Mode = "disable"
		default:
			return c, fmt.Errorf("%s: %q is not one of auto, underlay, overlay, disable", f("mode"), *r.Mode)
		}
	}
	if r.TunePodRoutes != nil {
		c.TunePodRoutes = *r.TunePodRoutes
	}
	if r.StrictRouteTables != nil {
		c.StrictRouteTables = *r.StrictRouteTables
	}
	if r.PodDefaultRouteNIC != nil {
		if *r.PodDefaultRouteNIC != "" && !ValidIfName(*r.PodDefaultRouteNIC) {
			return c, fmt.Errorf("%s: %q is not a valid interface name", f("podDefaultRouteNic"), *r.PodDefaultRouteNIC)
		}
		c.PodDefaultRouteNIC = *r.PodDefaultRouteNIC
	}
	for _, l := range []struct {
		name string
		in   []string
		out  *[]netip.Prefix
	}{{"hijackCIDR", r.HijackCIDR, &c.HijackCIDR}, {"serviceCIDR", r.ServiceCIDR, &c.ServiceCIDR}, {"podCIDR", r.PodCIDR, &c.PodCIDR}} {
		if l.in == nil {
			continue
		}
		*l.out = nil
		for i, s := range l.in {
			p, err := parseCIDROrAddr(s)
			if err != nil {
				return c, fmt.Errorf("%s[%d]: %q is not a CIDR or an address", f(l.name), i, s)
			}
			*l.out = append(*l.out, p)
		}
	}
	if r.HostRuleTable != nil {
		t := *r.HostRuleTable
		if t < 1 || t > 0x7fffffff || (t >= 253 && t <= 255) || (t >= 100 && t <= 199) {
			return c, fmt.Errorf("%s: %d is reserved or out of range (1-2147483647, not 100-199 which pods use, nor 253-255)", f("hostRuleTable"), t)
		}
		c.HostRuleTable = t
	}
	if r.PodRPFilter != nil {
		if v := *r.PodRPFilter; v < -1 || v > 2 {
			return c, fmt.Errorf("%s: %d is not -1 (leave), 0, 1 or 2", f("podRPFilter"), v)
		}
		c.PodRPFilter = *r.PodRPFilter
	}
	if r.TxQueueLen != nil {
		// the kernel's is a u32 (netlink would wrap a larger int); a
		// million packets is far beyond any NIC's ring
		if v := *r.TxQueueLen; v < 0 || v > MaxTxQueueLen {
			return c, fmt.Errorf("%s: %d is out of range (0-%d)", f("txQueueLen"), v, MaxTxQueueLen)
		}
		c.TxQueueLen = *r.TxQueueLen
	}
	if r.VethMTU != nil {
		if v := *r.VethMTU; v < 1280 || v > 65535 {
			return c, fmt.Errorf("%s: %d is out of range (1280-65535)", f("vethMTU"), v)
		}
		c.VethMTU = *r.VethMTU
	}
	if r.PodMACPrefix != nil {
		c.HasMACPrefix = *r.PodMACPrefix != ""
		if c.HasMACPrefix {
			p, err := parseMACPrefix(*r.PodMACPrefix)
			if err != nil {
				return c, fmt.Errorf("%s: %q %v", f("podMACPrefix"), *r.PodMACPrefix, err)
			}
			c.PodMACPrefix = p
		}
	}
	if r.DetectIPConflict != nil {
		c.DetectIPConflict = *r.DetectIPConflict
	}
	if r.DetectGateway != nil {
		c.DetectGateway = *r.DetectGateway
	}
	if o := r.DetectOptions; o != nil {
		if o.Retries != nil {
			if *o.Retries < 1 || *o.Retries > 100 {
				return c, fmt.Errorf("%s: %d is out of range (1-100)", f("detectOptions.retries"), *o.Retries)
			}
			c.DetectRetries = *o.Retries
		}
		for _, d := range []struct {
			name string
			in   *string
			out  *time.Duration
		}{{"interval", o.Interval, &c.DetectInterval}, {"timeout", o.Timeout, &c.DetectTimeout}} {
			if d.in == nil {
				continue
			}
			v, err := time.ParseDuration(*d.in)
			if err != nil || v <= 0 || v > 10*time.Second {
				return c, fmt.Errorf("%s: %q is not a duration between 0 and 10s", f("detectOptions."+d.name), *d.in)
			}
			*d.out = v
		}
		if o.Quarantine != nil {
			v, err := time.ParseDuration(*o.Quarantine)
			if err != nil || v < 0 || v > 30*24*time.Hour {
				return c, fmt.Errorf("%s: %q is not a duration between 0 and 720h", f("detectOptions.quarantine"), *o.Quarantine)
			}
			c.Quarantine = v
		}
	}
	return c, nil
}

// MaxTxQueueLen bounds txQueueLen.
const MaxTxQueueLen = 1_000_000

// parseCIDROrAddr accepts a CIDR or a bare address (as /32 or /128).
func parseCIDROrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseMACPrefix(s string) ([2]byte, error) {
	var out [2]byte
	parts := strings.Split(s, ":")
	if len(parts) != 2 {
		return out, fmt.Errorf("is not two bytes like 0a:1b")
	}
	for i, p := range parts {
		var b byte
		if _, err := fmt.Sscanf(p, "%02x", &b); err != nil || len(p) != 2 {
			return out, fmt.Errorf("is not two hex bytes like 0a:1b")
		}
		out[i] = b
	}
	if out[0]&1 == 1 {
		return out, fmt.Errorf("has the multicast bit set in its first byte")
	}
	return out, nil
}
