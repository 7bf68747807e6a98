package coordinator

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("veth.create", func() txn.Op { return &Veth{} })
	txn.Register("hostroute.add", func() txn.Op { return &HostRoute{} })
}

// Veth creates the pod-node veth pair in one request: the host end in the
// node's namespace and the pod end created directly inside the pod's, both
// with the MACs the plan chose (so neighbour entries can be planned too).
type Veth struct {
	Host    string `json:"host"`
	Pod     string `json:"pod"`
	HostMAC string `json:"hostMAC"`
	PodMAC  string `json:"podMAC"`
	MTU     int    `json:"mtu"`
	// NoLinkLocal: the node end gets no IPv6 address, link-local
	// included (see Do). Planned unless the pod has IPv6 and the node no
	// IPv6 address towards it: the node's routes to the pod then have no
	// source, the kernel speaks from the node end's link-local, and the
	// pod answers it over veth0.
	NoLinkLocal bool `json:"noLinkLocal,omitempty"`
}

func (o *Veth) Kind() string { return "veth.create" }
func (o *Veth) String() string {
	return fmt.Sprintf("create veth %s (node) - %s (pod)", o.Host, o.Pod)
}

// Creates names both ends: deleting one deletes the other.
func (o *Veth) Creates() []string {
	return []string{netops.LinkKey(txn.Host, o.Host), netops.LinkKey(txn.Pod, o.Pod)}
}

// Do creates the pair.
func (o *Veth) Do(env *txn.Env) error {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	fd, err := env.PodNSFd()
	if err != nil {
		return err
	}
	hm, err := net.ParseMAC(o.HostMAC)
	if err != nil {
		return err
	}
	pm, err := net.ParseMAC(o.PodMAC)
	if err != nil {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr = o.Host, o.MTU, hm
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: o.Pod, PeerHardwareAddr: pm, PeerNamespace: netlink.NsFd(fd)}
	if err := host.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", o.Host, o.Pod, err)
	}
	// the pod end joins the group the pod's links are deleted by
	pod, l, err := netops.Link(env, txn.Pod, o.Pod)
	if err != nil {
		return err
	}
	if err := pod.LinkSetGroup(l, netops.PodLinkGroup); err != nil {
		return err
	}
	if !o.NoLinkLocal {
		return nil
	}
	// no IPv6 link-local address on the node end, set while it is down
	// (and after the pod end joined the group, which a rollback deletes
	// the pair by): nothing uses one when the node's routes to the pod
	// have a source and both ends' neighbours are permanent, and with one
	// each pod adds to the node an fe80::/64 route in main beside every
	// other pod's, which the kernel's workers walk when the next veth
	// comes up (fib6_add_rt2node, and DAD and MLD sends through that
	// route's siblings, in a perf profile of BenchmarkFlat with 1000 pods
	// held). Measured there, ADD p50 with 1000 pods held: 7.1 and 7.2 ms
	// without, 8.6 and 7.4 ms with (two runs each, alternating; 6.0-6.3 ms
	// with one pod). A kernel without IPv6 has nothing to turn off.
	err = host.LinkSetIP6AddrGenMode(v, nl.IN6_ADDR_GEN_MODE_NONE)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("veth %s: IPv6 address generation off: %w", o.Host, err)
	}
	return nil
}

// Undo deletes the host end, which deletes the pod end and every route and
// neighbour entry on either.
func (o *Veth) Undo(env *txn.Env) error {
	h, l, err := netops.Link(env, txn.Host, o.Host)
	if err != nil {
		return netops.IgnoreGone(err)
	}
	if l.Type() != "veth" || l.Attrs().HardwareAddr.String() != o.HostMAC {
		return nil // not ours
	}
	return netops.IgnoreGone(h.LinkDel(l))
}

// Check reports a missing end or a changed MAC.
func (o *Veth) Check(env *txn.Env) error {
	var errs []error
	for _, end := range []struct{ ns, name, mac string }{{txn.Host, o.Host, o.HostMAC}, {txn.Pod, o.Pod, o.PodMAC}} {
		_, l, err := netops.Link(env, end.ns, end.name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l.Attrs().HardwareAddr.String() != end.mac {
			errs = append(errs, fmt.Errorf("%s: mac %s, want %s", end.name, l.Attrs().HardwareAddr, end.mac))
		}
	}
	return errors.Join(errs...)
}

// HostRoute routes a pod address to the pod's host veth in the node's pod
// table, and makes sure the rule "from all lookup <table>" exists. The rule
// is shared by every pod: it is added by the first route and removed with
// the last, under a node-wide lock, so concurrent ADDs never duplicate it
// and a DEL never removes it under another pod's feet.
//
// Who uses the rule is counted in the state dir, not read from the kernel:
// a file per route in statedir.HostRuleUsers, and the last user is the one
// whose rmdir of that directory succeeds. Listing the table instead cost
// every DEL a dump of the node's pod routes (three per pod, each growing
// with the node's pods: 118 ms DELs with 1000 pods held against 59 ms with
// none). Routes made before the count existed (a binary before it, or a
// count lost with its state dir) are counted once from the table, when
// the directory is missing; so is a table whose last user just left,
// which is empty then.
type HostRoute struct {
	Dst          netip.Prefix `json:"dst"`
	Link         string       `json:"link"`
	Table        int          `json:"table"`
	RulePriority int          `json:"rulePriority"`
	// Src is the node's address the node speaks to the pod from: without
	// it the kernel may pick any address of the node (one on lo, say) that
	// the pod has no route back to.
	Src netip.Addr `json:"src,omitzero"`
}

func (o *HostRoute) Kind() string { return "hostroute.add" }
func (o *HostRoute) String() string {
	return fmt.Sprintf("add node route %s dev %s table %d (rule %d: from all lookup %d)", o.Dst, o.Link, o.Table, o.RulePriority, o.Table)
}

func (o *HostRoute) family() int {
	if o.Dst.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (o *HostRoute) rule() *netlink.Rule {
	r := netlink.NewRule()
	r.Priority, r.Table, r.Family = o.RulePriority, o.Table, o.family()
	return r
}

// lock serialises the rule's check-and-change across processes.
func (o *HostRoute) lock(env *txn.Env) (*fileutil.Lock, error) {
	if env.StateDir == "" {
		return nil, fmt.Errorf("host route: no state dir for the node lock")
	}
	return fileutil.LockFile(statedir.HostRulesLock(env.StateDir))
}

func (o *HostRoute) hasRule(h *netlink.Handle) (bool, error) {
	rules, err := netops.Dump(func() ([]netlink.Rule, error) {
		return h.RuleListFiltered(o.family(), o.rule(), netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	})
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if r.Src == nil && r.Dst == nil && r.Mark == 0 && r.IifName == "" && r.OifName == "" {
			return true, nil
		}
	}
	return false, nil
}

// Do counts the route as a user of the rule, ensures the rule and adds the
// route, replacing a stale one for the same address (a pod whose DEL never
// came).
func (o *HostRoute) Do(env *txn.Env) error {
	lk, err := o.lock(env)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	h, l, err := netops.Link(env, txn.Host, o.Link)
	if err != nil {
		return err
	}
	users, err := o.users(env, h)
	if err != nil {
		return err
	}
	if err := fileutil.Touch(filepath.Join(users, o.user())); err != nil {
		return fmt.Errorf("host rule %d: counting its user: %w", o.Table, err)
	}
	ok, err := o.hasRule(h)
	if err != nil {
		return err
	}
	if !ok {
		if err := h.RuleAdd(o.rule()); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("rule from all lookup %d: %w", o.Table, err)
		}
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: netops.IPNet(o.Dst), Table: o.Table, Scope: netlink.SCOPE_LINK}
	if o.Src.IsValid() {
		r.Src = o.Src.AsSlice()
	}
	return h.RouteReplace(r)
}

// Undo deletes the route (if it is still through this pod's veth), its
// count, and the rule if it was the last user.
func (o *HostRoute) Undo(env *txn.Env) error {
	lk, err := o.lock(env)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	h, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	if l, err := h.LinkByName(o.Link); err == nil {
		err = h.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: netops.IPNet(o.Dst), Table: o.Table, Scope: netlink.SCOPE_LINK})
		if err := netops.IgnoreGone(err); err != nil {
			return err
		}
	}
	users, err := o.users(env, h)
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(users, o.user())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("host rule %d: uncounting its user: %w", o.Table, err)
	}
	// rmdir succeeds only on an empty directory: this was the last user
	if err := os.Remove(users); err != nil && !errors.Is(err, os.ErrNotExist) {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return nil
		}
		return fmt.Errorf("host rule %d: %w", o.Table, err)
	}
	if ok, err := o.hasRule(h); err != nil || !ok {
		return err
	}
	return netops.IgnoreGone(h.RuleDel(o.rule()))
}

// user names the route's entry among the rule's users: its address and its
// link (a pod replacing a stale route to the same address has a link of
// its own, and the stale pod's DEL must not uncount it).
func (o *HostRoute) user() string { return userName(o.Dst, o.Link) }

func userName(dst netip.Prefix, link string) string {
	if dst.IsSingleIP() {
		return dst.Addr().String() + "@" + link
	}
	return strings.ReplaceAll(dst.String(), "/", "_") + "@" + link
}

// users returns the directory counting the rule's users, counting the
// routes the table holds first when it is missing (see HostRoute): that
// listing happens once per node and family after an upgrade, and then
// only when the table is empty. The lock is held.
func (o *HostRoute) users(env *txn.Env, h *netlink.Handle) (string, error) {
	dir := statedir.HostRuleUsers(env.StateDir, o.Table, o.family())
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("host rule %d: %w", o.Table, err)
	}
	routes, err := netops.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(o.family(), &netlink.Route{Table: o.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return "", err
	}
	// counted in a directory of its own, renamed into place when whole: a
	// count cut short by a kill is never taken for the whole
	tmp := dir + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("host rule %d: %w", o.Table, err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", fmt.Errorf("host rule %d: %w", o.Table, err)
	}
	names := map[int]string{}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := netops.Prefix(r.Dst)
		if !ok {
			continue
		}
		link := "-" // not through a link (a blackhole): counted, never uncounted
		if r.LinkIndex > 0 {
			if _, ok := names[r.LinkIndex]; !ok {
				names[r.LinkIndex] = fmt.Sprintf("if%d", r.LinkIndex)
				if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
					names[r.LinkIndex] = l.Attrs().Name
				}
			}
			link = names[r.LinkIndex]
		}
		if err := fileutil.Touch(filepath.Join(tmp, userName(dst, link))); err != nil {
			return "", fmt.Errorf("host rule %d: %w", o.Table, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("host rule %d: %w", o.Table, err)
	}
	return dir, nil
}

// Check reports a missing route or rule.
func (o *HostRoute) Check(env *txn.Env) error {
	h, l, err := netops.Link(env, txn.Host, o.Link)
	if err != nil {
		return err
	}
	rs, err := netops.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(o.family(), &netlink.Route{Table: o.Table, Dst: netops.IPNet(o.Dst), LinkIndex: l.Attrs().Index},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST|netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return err
	}
	var errs []error
	if len(rs) == 0 {
		errs = append(errs, fmt.Errorf("node: route %s dev %s table %d missing", o.Dst, o.Link, o.Table))
	}
	if ok, err := o.hasRule(h); err != nil || !ok {
		errs = append(errs, fmt.Errorf("node: rule %d: from all lookup %d missing", o.RulePriority, o.Table))
	}
	return errors.Join(errs...)
}
