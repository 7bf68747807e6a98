// Package netops holds the generic netlink operations of a plan: addresses,
// link state and routes. Driver-specific operations (creating a macvlan, ...)
// live with their driver.
package netops

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("addr.add", func() txn.Op { return &AddrAdd{} })
	txn.Register("link.up", func() txn.Op { return &LinkUp{} })
	txn.Register("route.add", func() txn.Op { return &RouteAdd{} })
	txn.Register("route.del", func() txn.Op { return &RouteDel{} })
	txn.Register("rule.add", func() txn.Op { return &RuleAdd{} })
	txn.Register("neigh.add", func() txn.Op { return &NeighAdd{} })
	txn.Register("sysctl.set", func() txn.Op { return &Sysctls{} })
	txn.Register("links.sweep", func() txn.Op { return &LinkSweep{} })
}

// Gone reports whether err means the object (link, address, route,
// namespace) does not exist.
func Gone(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.Is(err, txn.ErrGone) || errors.As(err, &lnf) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENOENT)
}

// IgnoreGone returns nil for errors that mean "already gone".
func IgnoreGone(err error) error {
	if err == nil || Gone(err) {
		return nil
	}
	return err
}

// IPNet converts a prefix to the netlink library's type, keeping the host bits.
func IPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// Prefix is n as a netip.Prefix (IPv4 in its 4-byte form); false for a
// malformed one.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

// LinkKey names a link for txn.Creator and txn.Dependent.
func LinkKey(ns, name string) string { return ns + "/link/" + name }

// Link looks up a link by name in a namespace of env.
func Link(env *txn.Env, ns, name string) (*netlink.Handle, netlink.Link, error) {
	h, err := env.Handle(ns)
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return h, nil, fmt.Errorf("link %s in %s: %w", name, ns, err)
	}
	return h, l, nil
}

// AddrAdd adds an address to a link. IPv6 addresses are added with
// IFA_F_NODAD so they are usable at once: ADD never waits for kernel DAD
// (conflicts are detected by the coordinator instead).
type AddrAdd struct {
	NS   string       `json:"ns"`
	Link string       `json:"link"`
	Addr netip.Prefix `json:"addr"`
	// NoPrefixRoute keeps the kernel from adding the subnet route to the
	// main table (the plan puts it in the NIC's own table instead).
	NoPrefixRoute bool `json:"noPrefixRoute,omitempty"`
}

func (o *AddrAdd) Kind() string { return "addr.add" }
func (o *AddrAdd) String() string {
	return fmt.Sprintf("add address %s to %s in %s", o.Addr, o.Link, o.NS)
}

func (o *AddrAdd) nlAddr() *netlink.Addr {
	a := &netlink.Addr{IPNet: IPNet(o.Addr)}
	if o.Addr.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if o.NoPrefixRoute {
		a.Flags |= unix.IFA_F_NOPREFIXROUTE
	}
	return a
}

// DependsOn names the link the address lives on.
func (o *AddrAdd) DependsOn() string { return LinkKey(o.NS, o.Link) }

// Do adds the address.
func (o *AddrAdd) Do(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	return h.AddrAdd(l, o.nlAddr())
}

// Undo removes the address.
func (o *AddrAdd) Undo(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return IgnoreGone(err)
	}
	return IgnoreGone(h.AddrDel(l, o.nlAddr()))
}

// Check reports a missing address.
func (o *AddrAdd) Check(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	family := netlink.FAMILY_V4
	if o.Addr.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, family) })
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if a.IPNet.String() == IPNet(o.Addr).String() {
			return nil
		}
	}
	return fmt.Errorf("%s: address %s missing", o.Link, o.Addr)
}

// LinkUp sets a link up.
type LinkUp struct {
	NS   string `json:"ns"`
	Link string `json:"link"`
}

func (o *LinkUp) Kind() string   { return "link.up" }
func (o *LinkUp) String() string { return fmt.Sprintf("set %s up in %s", o.Link, o.NS) }

// DependsOn names the link.
func (o *LinkUp) DependsOn() string { return LinkKey(o.NS, o.Link) }

// Do sets the link up.
func (o *LinkUp) Do(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

// Undo sets the link down.
func (o *LinkUp) Undo(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return IgnoreGone(err)
	}
	return IgnoreGone(h.LinkSetDown(l))
}

// Check reports a link that is down.
func (o *LinkUp) Check(env *txn.Env) error {
	_, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s: link is down", o.Link)
	}
	return nil
}

// RouteAdd adds a route through a link, optionally via a gateway and in a
// table other than main.
type RouteAdd struct {
	NS    string       `json:"ns"`
	Link  string       `json:"link"`
	Dst   netip.Prefix `json:"dst"`
	GW    netip.Addr   `json:"gw,omitzero"`
	Table int          `json:"table,omitempty"`
	// Src is the preferred source address for the route.
	Src netip.Addr `json:"src,omitzero"`
	// OnLink, MTU and Metric are kept from a route the coordinator
	// copies from another CNI's (its gateway on-link, its path MTU, its
	// priority; 0 is the kernel's default).
	OnLink bool `json:"onlink,omitempty"`
	MTU    int  `json:"mtu,omitempty"`
	Metric int  `json:"metric,omitempty"`
}

func (o *RouteAdd) Kind() string { return "route.add" }
func (o *RouteAdd) String() string {
	s := fmt.Sprintf("add route %s", o.Dst)
	if o.GW.IsValid() {
		s += " via " + o.GW.String()
	}
	s += fmt.Sprintf(" dev %s in %s", o.Link, o.NS)
	if o.Table != 0 {
		s += fmt.Sprintf(" table %d", o.Table)
	}
	if o.Src.IsValid() {
		s += " src " + o.Src.String()
	}
	if o.OnLink {
		s += " onlink"
	}
	if o.Metric != 0 {
		s += fmt.Sprintf(" metric %d", o.Metric)
	}
	if o.MTU != 0 {
		s += fmt.Sprintf(" mtu %d", o.MTU)
	}
	return s
}

func (o *RouteAdd) route(l netlink.Link) *netlink.Route {
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: IPNet(o.Dst), Table: o.Table, MTU: o.MTU, Priority: o.Metric}
	if o.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if o.Src.IsValid() {
		r.Src = o.Src.AsSlice()
	}
	if o.GW.IsValid() {
		r.Gw = o.GW.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

// DependsOn names the route's link.
func (o *RouteAdd) DependsOn() string { return LinkKey(o.NS, o.Link) }

// Do adds the route.
func (o *RouteAdd) Do(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	return h.RouteAdd(o.route(l))
}

// Undo deletes the route.
func (o *RouteAdd) Undo(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return IgnoreGone(err)
	}
	return IgnoreGone(h.RouteDel(o.route(l)))
}

// Check reports a missing route.
func (o *RouteAdd) Check(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	want := o.route(l)
	filter := netlink.RT_FILTER_OIF | netlink.RT_FILTER_DST | netlink.RT_FILTER_TABLE
	if o.GW.IsValid() {
		filter |= netlink.RT_FILTER_GW
	}
	family := netlink.FAMILY_V4
	if o.Dst.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	if want.Table == 0 {
		want.Table = unix.RT_TABLE_MAIN
	}
	if o.Dst.Bits() == 0 {
		want.Dst = nil // the kernel reports a default route without RTA_DST
	}
	rs, err := Dump(func() ([]netlink.Route, error) { return h.RouteListFiltered(family, want, filter) })
	if err != nil {
		return err
	}
	if len(rs) == 0 {
		return fmt.Errorf("%s: route %s missing", o.Link, o.String()[len("add route "):])
	}
	return nil
}

// RouteDel deletes a route another CNI made (the overlay mode moves the
// delegate's default route off eth0); its undo puts the route back, as it
// was, while the link is there.
type RouteDel struct {
	RouteAdd
}

func (o *RouteDel) Kind() string   { return "route.del" }
func (o *RouteDel) String() string { return "delete route " + o.RouteAdd.String()[len("add route "):] }

// Do deletes the route; one already gone is not an error.
func (o *RouteDel) Do(env *txn.Env) error { return IgnoreGone(o.RouteAdd.Undo(env)) }

// Undo adds the route back.
func (o *RouteDel) Undo(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return IgnoreGone(err)
	}
	if err := h.RouteAdd(o.route(l)); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// Check reports the route back.
func (o *RouteDel) Check(env *txn.Env) error {
	if err := o.RouteAdd.Check(env); err == nil {
		return fmt.Errorf("%s: route %s is back", o.Link, o.RouteAdd.String()[len("add route "):])
	}
	return nil
}

// RuleAdd adds a policy routing rule: from Src (if set) lookup Table, at
// Priority.
type RuleAdd struct {
	NS       string       `json:"ns"`
	Priority int          `json:"priority"`
	Src      netip.Prefix `json:"src,omitzero"`
	Table    int          `json:"table"`
	// Mark matches the packet's fwmark; 0 matches any.
	Mark uint32 `json:"mark,omitempty"`
	// V6 picks the family of a rule without Src.
	V6 bool `json:"v6,omitempty"`
}

func (o *RuleAdd) Kind() string { return "rule.add" }
func (o *RuleAdd) String() string {
	from := "all"
	if o.Src.IsValid() {
		from = o.Src.String()
	} else if o.V6 {
		from = "all (IPv6)"
	}
	mark := ""
	if o.Mark != 0 {
		mark = fmt.Sprintf(" fwmark %#x", o.Mark)
	}
	return fmt.Sprintf("add rule %d: from %s%s lookup %d in %s", o.Priority, from, mark, o.Table, o.NS)
}

func (o *RuleAdd) rule() *netlink.Rule {
	r := netlink.NewRule()
	r.Priority, r.Table = o.Priority, o.Table
	r.Family = netlink.FAMILY_V4
	if o.V6 {
		r.Family = netlink.FAMILY_V6
	}
	if o.Mark != 0 {
		r.Mark = o.Mark
	}
	if o.Src.IsValid() {
		r.Src = IPNet(o.Src)
		r.Family = netlink.FAMILY_V4
		if o.Src.Addr().Is6() {
			r.Family = netlink.FAMILY_V6
		}
	}
	return r
}

// Do adds the rule.
func (o *RuleAdd) Do(env *txn.Env) error {
	h, err := env.Handle(o.NS)
	if err != nil {
		return err
	}
	return h.RuleAdd(o.rule())
}

// Undo deletes the rule.
func (o *RuleAdd) Undo(env *txn.Env) error {
	h, err := env.Handle(o.NS)
	if err != nil {
		return IgnoreGone(err)
	}
	return IgnoreGone(h.RuleDel(o.rule()))
}

// Check reports a missing rule.
func (o *RuleAdd) Check(env *txn.Env) error {
	h, err := env.Handle(o.NS)
	if err != nil {
		return err
	}
	want := o.rule()
	rules, err := h.RuleList(want.Family)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Priority == want.Priority && r.Table == want.Table && r.Mark == want.Mark && fmt.Sprint(r.Src) == fmt.Sprint(want.Src) {
			return nil
		}
	}
	return fmt.Errorf("rule %s missing", o.String()[len("add rule "):])
}

// NeighAdd adds a permanent neighbour entry: IP is at MAC on Link.
type NeighAdd struct {
	NS   string     `json:"ns"`
	Link string     `json:"link"`
	IP   netip.Addr `json:"ip"`
	MAC  string     `json:"mac"`
}

func (o *NeighAdd) Kind() string { return "neigh.add" }
func (o *NeighAdd) String() string {
	return fmt.Sprintf("add neighbour %s lladdr %s dev %s in %s", o.IP, o.MAC, o.Link, o.NS)
}

// DependsOn names the link the entry lives on.
func (o *NeighAdd) DependsOn() string { return LinkKey(o.NS, o.Link) }

func (o *NeighAdd) neigh(l netlink.Link) (*netlink.Neigh, error) {
	mac, err := net.ParseMAC(o.MAC)
	if err != nil {
		return nil, err
	}
	fam := netlink.FAMILY_V4
	if o.IP.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: o.IP.AsSlice(), HardwareAddr: mac}, nil
}

// Do adds (or replaces a stale) entry.
func (o *NeighAdd) Do(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	n, err := o.neigh(l)
	if err != nil {
		return err
	}
	return h.NeighSet(n)
}

// Undo deletes the entry.
func (o *NeighAdd) Undo(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return IgnoreGone(err)
	}
	n, err := o.neigh(l)
	if err != nil {
		return err
	}
	return IgnoreGone(h.NeighDel(n))
}

// Check reports a missing or changed entry.
func (o *NeighAdd) Check(env *txn.Env) error {
	h, l, err := Link(env, o.NS, o.Link)
	if err != nil {
		return err
	}
	want, err := o.neigh(l)
	if err != nil {
		return err
	}
	ns, err := Dump(func() ([]netlink.Neigh, error) { return h.NeighList(l.Attrs().Index, want.Family) })
	if err != nil {
		return err
	}
	for _, n := range ns {
		if n.IP.Equal(want.IP) && n.HardwareAddr.String() == o.MAC && n.State&netlink.NUD_PERMANENT != 0 {
			return nil
		}
	}
	return fmt.Errorf("%s: permanent neighbour %s lladdr %s missing", o.Link, o.IP, o.MAC)
}

// Sysctl is one /proc/sys setting.
type Sysctl struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	// IfPresent skips a key the kernel does not have (IPv6 settings on a
	// kernel booted with ipv6.disable=1).
	IfPresent bool `json:"ifPresent,omitempty"`
}

// Sysctls sets /proc/sys keys in a namespace, entering it once. In the
// pod's namespace its undo is nothing: the settings belong to the pod's
// namespace and go with it, and a retried ADD sets them again.
type Sysctls struct {
	NS     string   `json:"ns"`
	Values []Sysctl `json:"values"`
}

func (o *Sysctls) Kind() string { return "sysctl.set" }
func (o *Sysctls) String() string {
	var kv []string
	for _, v := range o.Values {
		kv = append(kv, v.Key+"="+v.Value)
	}
	return fmt.Sprintf("set %s in %s", strings.Join(kv, " "), o.NS)
}

// Do writes the values.
func (o *Sysctls) Do(env *txn.Env) error {
	return env.In(o.NS, func() error {
		for _, v := range o.Values {
			err := writeSysctl(env, v.Key, v.Value)
			if v.IfPresent && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// writeSysctl writes /proc/sys/<key> in the namespace the thread is in
// (txn.Env.OpenSysctl).
func writeSysctl(env *txn.Env, key, value string) error {
	fd, err := env.OpenSysctl(key, unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		_, err = unix.Write(fd, []byte(value))
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: "/proc/sys/" + key, Err: err}
	}
	return nil
}

// readSysctl reads /proc/sys/<key> (a sysctl's value is one line) in the
// namespace the thread is in.
func readSysctl(env *txn.Env, key string) ([]byte, error) {
	fd, err := env.OpenSysctl(key, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: "/proc/sys/" + key, Err: err}
		}
		return buf[:n], nil
	}
}

// Undo does nothing for the pod (see the type); node settings are not
// planned as sysctls.
func (o *Sysctls) Undo(env *txn.Env) error { return nil }

// Check reports every changed value.
func (o *Sysctls) Check(env *txn.Env) error {
	var errs []error
	err := env.In(o.NS, func() error {
		for _, v := range o.Values {
			got, err := readSysctl(env, v.Key)
			if v.IfPresent && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if g := strings.TrimSpace(string(got)); g != v.Value {
				errs = append(errs, fmt.Errorf("%s is %s, want %s", v.Key, g, v.Value))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// PodLinkGroup is the link group of every link spinneret creates in a pod
// (IFLA_GROUP), so that they can be deleted in one request.
const PodLinkGroup = 0x73706e // "spn"

// LinkSweep deletes every link of Group in a namespace in one request
// (RTM_DELLINK with IFLA_GROUP, as `ip link delete group`): the kernel
// unregisters them as one batch, with one RCU grace period instead of one
// per link. It is planned before the links it sweeps; its Do does nothing.
type LinkSweep struct {
	NS    string `json:"ns"`
	Group uint32 `json:"group"`
}

func (o *LinkSweep) Kind() string { return "links.sweep" }
func (o *LinkSweep) String() string {
	return fmt.Sprintf("delete the links of group %#x in %s together", o.Group, o.NS)
}

// Sweeps covers every link of the namespace (the pod's links all carry the
// group).
func (o *LinkSweep) Sweeps(key string) bool { return strings.HasPrefix(key, o.NS+"/link/") }

// Do does nothing: the links are created by their own steps.
func (o *LinkSweep) Do(*txn.Env) error { return nil }

// Undo deletes the group's links.
func (o *LinkSweep) Undo(env *txn.Env) error {
	err := env.In(o.NS, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(o.Group)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
	if errors.Is(err, unix.ENODEV) {
		return nil // no link left in the group
	}
	// a gone namespace is reported as such (txn.ErrGone), not as success:
	// the rollback then removes what lives on outside it (a veth's node end)
	return err
}

// Check does nothing: the links' own steps report them.
func (o *LinkSweep) Check(*txn.Env) error { return nil }

// dumpAttempts is how often a netlink dump the kernel interrupted (a link
// changed under it: NLM_F_DUMP_INTR) is retried before its error stands.
const dumpAttempts = 10

// Dump runs a netlink dump, again when the kernel interrupted it: while
// other pods' ADDs create and delete links, routes and rules on the node,
// a dump is often interrupted (seen with 50 concurrent ADDs on one bond +
// VLAN parent, each one failing its ensure step), and its partial result
// must not be taken for the node's state.
func Dump[T any](f func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range dumpAttempts {
		if out, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

// LinkList lists h's links (Dump).
func LinkList(h *netlink.Handle) ([]netlink.Link, error) { return Dump(h.LinkList) }
