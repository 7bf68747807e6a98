package netlab

import (
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Dump describes a namespace's links, addresses, routes (every table), rules
// and neighbours, one object per line in a stable order. Two dumps are equal
// when nothing was added, changed or left behind; counters, the states of
// dynamic neighbours and the kernel's multicast (NOARP) neighbour entries,
// which change by themselves, are left out.
func (n *NS) Dump() (string, error) {
	h := n.nl
	var lines []string
	links, names, err := linkNames(h)
	if err != nil {
		return "", err
	}
	for _, l := range links {
		a := l.Attrs()
		lines = append(lines, fmt.Sprintf("link %s type=%s mtu=%d mac=%s flags=%s master=%s txqlen=%d",
			a.Name, l.Type(), a.MTU, a.HardwareAddr, a.Flags, names[a.MasterIndex], a.TxQLen))
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		addrs, err := h.AddrList(nil, fam)
		if err != nil {
			return "", err
		}
		for _, a := range addrs {
			lines = append(lines, fmt.Sprintf("addr %s %s scope=%d flags=%d", names[a.LinkIndex], a.IPNet, a.Scope, a.Flags))
		}
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return "", err
		}
		for _, r := range routes {
			lines = append(lines, "route "+RouteString(r, names))
		}
		rules, err := h.RuleList(fam)
		if err != nil {
			return "", err
		}
		for _, r := range rules {
			lines = append(lines, fmt.Sprintf("rule %d: from %v to %v iif %s oif %s mark %d lookup %d", r.Priority, r.Src, r.Dst, r.IifName, r.OifName, r.Mark, r.Table))
		}
		neighs, err := h.NeighList(0, fam)
		if err != nil {
			return "", err
		}
		for _, nb := range neighs {
			if nb.State&netlink.NUD_NOARP != 0 {
				continue // multicast mappings the kernel makes for its own traffic
			}
			state := "dynamic"
			if nb.State&netlink.NUD_PERMANENT != 0 {
				state = "permanent"
			}
			lines = append(lines, fmt.Sprintf("neigh %s dev %s lladdr %s %s", nb.IP, names[nb.LinkIndex], nb.HardwareAddr, state))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

// linkNames lists the links and maps their indexes to names.
func linkNames(h *netlink.Handle) ([]netlink.Link, map[int]string, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return links, names, nil
}

// RouteString formats a route like `ip route`: dst, gateway, device, table.
func RouteString(r netlink.Route, names map[int]string) string {
	dst := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
			dst = r.Dst.String()
		}
	}
	s := dst
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	s += " dev " + names[r.LinkIndex]
	if r.Table != unix.RT_TABLE_MAIN {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	s += fmt.Sprintf(" proto %d scope %d type %d", r.Protocol, r.Scope, r.Type)
	if r.Src != nil {
		s += " src " + r.Src.String()
	}
	return s
}

// Show is a short, readable listing of a namespace's links with their
// addresses, its routes (every table but local) and its rules, for the
// demo.
func (n *NS) Show() (string, error) { return Show(n.nl) }

// Show is NS.Show for any namespace's netlink handle (spinneret inspect
// shows a pod's).
func Show(h *netlink.Handle) (string, error) {
	links, names, err := linkNames(h)
	if err != nil {
		return "", err
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" {
			continue
		}
		state := "DOWN"
		if a.Flags&net.FlagUp != 0 {
			state = "UP"
		}
		out = append(out, fmt.Sprintf("  %s (%s) %s mac %s mtu %d", a.Name, l.Type(), state, a.HardwareAddr, a.MTU))
		addrs, _ := h.AddrList(l, netlink.FAMILY_ALL)
		for _, ad := range addrs {
			fam := "inet "
			if ad.IP.To4() == nil {
				fam = "inet6"
			}
			out = append(out, fmt.Sprintf("      %s %s", fam, ad.IPNet))
		}
	}
	var routes, rules []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, _ := h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		for _, r := range rs {
			if r.Table == unix.RT_TABLE_LOCAL || (r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast())) {
				continue
			}
			routes = append(routes, "      "+shortRoute(r, names))
		}
		rls, _ := h.RuleList(fam)
		var rl []string
		for _, r := range rls {
			mark := ""
			if r.Mark != 0 {
				mark = fmt.Sprintf(" fwmark %#x", r.Mark)
			}
			rl = append(rl, fmt.Sprintf("%d: from %s%s lookup %s", r.Priority, orAll(r.Src), mark, tableName(r.Table)))
		}
		rules = append(rules, fmt.Sprintf("      IPv%d: %s", map[int]int{netlink.FAMILY_V4: 4, netlink.FAMILY_V6: 6}[fam], strings.Join(rl, ", ")))
	}
	if len(routes) > 0 {
		out = append(out, "  routes:")
		out = append(out, routes...)
	}
	out = append(out, "  rules:")
	out = append(out, rules...)
	return strings.Join(out, "\n"), nil
}

// shortRoute formats a route as `ip route` prints it by default.
func shortRoute(r netlink.Route, names map[int]string) string {
	s := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 {
			s = r.Dst.String()
		}
	}
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	s += " dev " + names[r.LinkIndex]
	if r.Scope == netlink.SCOPE_LINK {
		s += " scope link"
	}
	if r.Src != nil {
		s += " src " + r.Src.String()
	}
	if r.Table != unix.RT_TABLE_MAIN {
		s += " table " + tableName(r.Table)
	}
	return s
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return fmt.Sprint(t)
}

func orAll(n *net.IPNet) string {
	if n == nil {
		return "all"
	}
	return n.String()
}

// Diff lists the lines only in before ("-") and only in after ("+") of two
// dumps; empty when they are equal.
func Diff(before, after string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	b, a := in(before), in(after)
	var out []string
	for l := range b {
		if !a[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range a {
		if !b[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
