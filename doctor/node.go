package doctor

import (
	"context"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// config reads the installed conflist and the node conf it names.
func (r *Report) config(o Options) (*conf.Config, *conf.Node) {
	b, err := os.ReadFile(o.Conflist)
	if err != nil {
		r.add("conflist", o.Conflist, Fail, err.Error(), "install spinneret on the node (the DaemonSet's spinneret install writes it)")
		return nil, nil
	}
	cfg, err := conf.ParseFile(b)
	if err != nil {
		r.add("conflist", o.Conflist, Fail, err.Error(), "fix the chart's cni values (or the ConfigMap spinneret-config) and let the DaemonSet reinstall")
		return nil, nil
	}
	r.ok("conflist", o.Conflist, fmt.Sprintf("network %s, %d networks in the catalogue, cniVersion %s", cfg.Name, len(cfg.Networks), cfg.CNIVersion))
	node, err := conf.LoadNode(cfg.NodeConfPath, cfg.NodeConfExplicit)
	if err != nil {
		r.add("node conf", cfg.NodeConfPath, Fail, err.Error(), "fix the chart's node values; the plugin refuses every ADD until it parses")
		return cfg, nil
	}
	r.ok("node conf", cfg.NodeConfPath, "node "+node.NodeName+", state in "+node.StateDir)
	return cfg, node
}

// masters: each master exists, is up, has carrier, and is allowed; its
// driver and speed.
func (r *Report) masters(cfg *conf.Config, node *conf.Node) {
	et, etErr := ethtool.NewEthtool()
	if etErr == nil {
		defer et.Close()
	}
	seen := map[string]bool{}
	links := masterLinks(cfg, node)
	names := make([]string, 0, len(links))
	for n := range links {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, netName := range names {
		for _, m := range links[netName] {
			if reason, refused := strings.CutPrefix(m, "!"); refused {
				r.add("master", "network "+netName, Fail, reason, "add the interface to allowedMasters in the node conf, or map the network's master to an allowed one (masters)")
				continue
			}
			if seen[m] {
				continue
			}
			seen[m] = true
			subj := m + " (network " + netName + ")"
			l, err := netlink.LinkByName(m)
			if err != nil {
				r.add("master", subj, Fail, "no such interface on this node", "map the network's logical master to this node's interface in the node conf (masters: {"+strings.ToLower(netName)+": <interface>}), or fix the interface")
				continue
			}
			a := l.Attrs()
			info := l.Type()
			if etErr == nil {
				if d, err := et.DriverName(m); err == nil && d != "" {
					info = "driver " + d
				}
				var cmd ethtool.EthtoolCmd
				if s, err := et.CmdGet(&cmd, m); err == nil && s > 0 && s < 1<<31 {
					info += fmt.Sprintf(", %d Mb/s", s)
				}
			}
			switch {
			case a.Flags&net.FlagUp == 0:
				r.add("master", subj, Fail, "down ("+info+")", "ip link set "+m+" up (and make the node's network config keep it up)")
			case a.OperState == netlink.OperDown || a.OperState == netlink.OperLowerLayerDown:
				r.add("master", subj, Fail, "up but no carrier ("+info+")", "check the cable, the switch port and the peer; pods on this network get no traffic")
			default:
				r.ok("master", subj, fmt.Sprintf("up, carrier, %s, MTU %d", info, a.MTU))
			}
		}
	}
}

// sysctls the node needs: forwarding (the coordinator routes pod traffic
// through the node), and what Spiderpool's agent also sets.
func (r *Report) sysctls(cfg *conf.Config) {
	read := func(key string) (int, bool) {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		if err != nil {
			return 0, false
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		return v, err == nil
	}
	coord := false
	for _, n := range cfg.Networks {
		coord = coord || n.Coordinator.Enabled()
	}
	if v, ok := read("net.ipv4.ip_forward"); ok && v == 0 && coord {
		r.add("sysctl", "net.ipv4.ip_forward", Fail, "0: the node does not forward the pods' traffic to services and other nodes that the coordinator sends through it",
			"sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d)")
	} else if ok {
		r.ok("sysctl", "net.ipv4.ip_forward", strconv.Itoa(v))
	}
	if v, ok := read("net.ipv4.conf.all.rp_filter"); ok && v == 1 {
		r.add("sysctl", "net.ipv4.conf.all.rp_filter", Warn, "1 (strict): a reply from a pod's underlay address that reaches the node by another link than the node's route to it is dropped (Spiderpool's agent sets 0)",
			"sysctl -w net.ipv4.conf.all.rp_filter=0, or 2 (loose)")
	} else if ok {
		r.ok("sysctl", "net.ipv4.conf.all.rp_filter", strconv.Itoa(v))
	}
	if v, ok := read("net.ipv4.conf.all.arp_notify"); ok && v == 0 {
		r.add("sysctl", "net.ipv4.conf.all.arp_notify", Warn, "0: the node announces no gratuitous ARP when a link comes up or changes its address",
			"sysctl -w net.ipv4.conf.all.arp_notify=1 (as Spiderpool's agent does)")
	} else if ok {
		r.ok("sysctl", "net.ipv4.conf.all.arp_notify", strconv.Itoa(v))
	}
	if v, ok := read("net.ipv4.neigh.default.gc_thresh3"); ok && v < 28160 && coord {
		r.add("sysctl", "net.ipv4.neigh.default.gc_thresh3", Warn, fmt.Sprintf("%d: the coordinator adds permanent neighbours per pod; a full table drops new entries (Spiderpool #3587)", v),
			"sysctl -w net.ipv4.neigh.default.gc_thresh3=28160 (and net.ipv6.neigh.default.gc_thresh3)")
	}
}

// managers: NetworkManager or systemd-networkd configured to manage every
// link would take spinneret's veths and the ifacer's bonds and VLANs
// (bring them down, flush their addresses).
func (r *Report) managers(root string) {
	nmDir := filepath.Join(root, "/etc/NetworkManager")
	if _, err := os.Stat(nmDir); err == nil {
		var unmanaged []string
		files, _ := filepath.Glob(filepath.Join(nmDir, "conf.d", "*.conf"))
		files = append(files, filepath.Join(nmDir, "NetworkManager.conf"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(l), "unmanaged-devices="); ok {
					unmanaged = append(unmanaged, strings.Split(v, ";")...)
				}
			}
		}
		var missing []string
		for _, want := range []string{"interface-name:spn*"} {
			if !slices.Contains(unmanaged, want) && !slices.Contains(unmanaged, "*") {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			r.add("network manager", "NetworkManager", Warn, "installed, and does not leave alone "+strings.Join(missing, ", ")+": it may take the coordinator's node veths (spn*) and the ifacer's links",
				"write /etc/NetworkManager/conf.d/spinneret.conf: [keyfile] unmanaged-devices=interface-name:spn*;<the ifacer's bond and VLAN links>, then nmcli general reload")
		} else {
			r.ok("network manager", "NetworkManager", "leaves spinneret's links alone")
		}
	}
	files, _ := filepath.Glob(filepath.Join(root, "/etc/systemd/network", "*.network"))
	wild := regexp.MustCompile(`(?m)^\s*Name\s*=\s*(.*)$`)
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, m := range wild.FindAllStringSubmatch(string(b), -1) {
			for _, pat := range strings.Fields(m[1]) {
				// spinneret's node veths are spn<12 hex digits>
				if ok, _ := path.Match(pat, "spn0123456789ab"); ok {
					r.add("network manager", "systemd-networkd "+filepath.Base(f), Warn, "[Match] Name="+pat+" matches spinneret's node veths (spn*): systemd-networkd would configure them",
						"narrow [Match] Name= to the node's own interfaces")
				}
			}
		}
	}
}

// hostRule: the coordinator's shared rule and table on the node, their
// routes through links that exist.
func (r *Report) hostRule(cfg *conf.Config) {
	table := 0
	for _, n := range cfg.Networks {
		if n.Coordinator.Enabled() {
			table = n.Coordinator.HostRuleTable
		}
	}
	if table == 0 {
		return
	}
	rules, err := netops.Dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		r.add("host rule", "", Fail, err.Error(), "")
		return
	}
	has := slices.ContainsFunc(rules, func(rl netlink.Rule) bool {
		return rl.Table == table && rl.Priority == coordinator.HostRulePriority
	})
	routes, err := netops.Dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		r.add("host rule", "", Fail, err.Error(), "")
		return
	}
	subj := fmt.Sprintf("%d: lookup %d", coordinator.HostRulePriority, table)
	switch {
	case len(routes) > 0 && !has:
		r.add("host rule", subj, Fail, fmt.Sprintf("missing while table %d holds %d routes to pods: the node does not reach them through their veths", table, len(routes)),
			"something removed it (a network manager, a firewall script); the next pod's ADD restores it, or run CHECK")
	case has:
		bad := 0
		for _, rt := range routes {
			if _, err := netlink.LinkByIndex(rt.LinkIndex); err != nil {
				bad++
			}
		}
		if bad > 0 {
			r.add("host rule", subj, Warn, fmt.Sprintf("%d of table %d's routes point at links that are gone", bad, table), "the sweep's GC removes what an attachment without a sandbox left")
		} else {
			r.ok("host rule", subj, fmt.Sprintf("present, %d routes to pods", len(routes)))
		}
	default:
		r.ok("host rule", subj, "none yet (no pod uses the coordinator)")
	}
}

// journals whose sandbox the runtime no longer has.
func (r *Report) journals(ctx context.Context, o Options, cfg *conf.Config, node *conf.Node) {
	js, err := txn.ListJournalFiles(node.StateDir, cfg.Name)
	if err != nil {
		r.add("attachments", node.StateDir, Fail, err.Error(), "")
		return
	}
	if o.Sandboxes == nil {
		r.ok("attachments", "", fmt.Sprintf("%d on this node (runtime not asked)", len(js)))
		return
	}
	live, err := o.Sandboxes(ctx)
	if err != nil {
		r.add("runtime", "", Fail, err.Error(), "check --runtime-endpoint (containerd: unix:///run/containerd/containerd.sock, CRI-O: unix:///var/run/crio/crio.sock)")
		return
	}
	var stale []string
	for _, j := range js {
		if !live[j.ContainerID] {
			stale = append(stale, j.ContainerID+"/"+j.IfName)
		}
	}
	if len(stale) > 0 {
		r.add("attachments", "", Warn, fmt.Sprintf("%d of %d have no sandbox in the runtime: %s", len(stale), len(js), strings.Join(stale, ", ")),
			"the node agent's sweep removes them (every 5 minutes); if they stay, check its log (kubectl logs ds/spinneret)")
	} else {
		r.ok("attachments", "", fmt.Sprintf("%d, each with its sandbox (%d sandboxes)", len(js), len(live)))
	}
}
