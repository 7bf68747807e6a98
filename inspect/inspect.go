// Package inspect is `spinneret inspect POD|CONTAINER-ID`: one page on a
// pod's attachment, from the node (its journal, the pod's links,
// addresses, routes of every table and rules, the node's routes to it) and
// from the API server (its network-status, its IPAllocations), to tell an
// operator why a pod has no net1 without reading journals by hand.
package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// Page is what inspect shows of one attachment.
type Page struct {
	Pod         string   `json:"pod,omitempty"`
	PodUID      string   `json:"podUID,omitempty"`
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	Network     string   `json:"network"`
	NetNS       string   `json:"netns"`
	State       string   `json:"state"`
	EarlierBoot bool     `json:"earlierBoot,omitempty"`
	NICs        []NIC    `json:"nics,omitempty"`
	Ledger      []string `json:"ledger"`
	Steps       []string `json:"steps"`
	// PodNamespace is the pod's links, addresses, routes and rules, as
	// shown (or why they could not be read).
	PodNamespace string `json:"podNamespace"`
	// NodeRoutes are the node's routes to the pod's addresses.
	NodeRoutes    []string          `json:"nodeRoutes,omitempty"`
	NetworkStatus json.RawMessage   `json:"networkStatus,omitempty"`
	Allocations   []Allocation      `json:"allocations,omitempty"`
	Cluster       string            `json:"cluster,omitempty"` // why the API server was not asked, or did not answer
	Annotations   map[string]string `json:"-"`
}

// NIC is one interface of the pod's result.
type NIC struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
}

// Allocation is an IPAllocation of the pod's.
type Allocation struct {
	Name, Address, Pool, Node, ContainerID string
}

// Options say where to look.
type Options struct {
	Conflist   string
	Kubeconfig string // "" : the node conf's
	NoCluster  bool
}

// Find returns the attachments (journals) of the conflist's network that
// match what: namespace/name of a pod, or a container ID or a prefix of
// one.
func Find(o Options, what string) ([]*txn.Journal, *conf.Config, *conf.Node, error) {
	b, err := os.ReadFile(o.Conflist)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, err := conf.ParseFile(b)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", o.Conflist, err)
	}
	node, err := conf.LoadNode(cfg.NodeConfPath, cfg.NodeConfExplicit)
	if err != nil {
		return nil, nil, nil, err
	}
	js, err := txn.ListJournals(node.StateDir, cfg.Name)
	if err != nil {
		return nil, nil, nil, err
	}
	var out []*txn.Journal
	for _, j := range js {
		if j.Pod == what || j.ContainerID == what || (len(what) >= 6 && !strings.Contains(what, "/") && strings.HasPrefix(j.ContainerID, what)) {
			out = append(out, j)
		}
	}
	return out, cfg, node, nil
}

// Inspect builds the page of one attachment.
func Inspect(ctx context.Context, o Options, j *txn.Journal, node *conf.Node) *Page {
	p := &Page{Pod: j.Pod, PodUID: j.PodUID, ContainerID: j.ContainerID, IfName: j.IfName, Network: j.Network, NetNS: j.NetNS,
		State: j.State, EarlierBoot: j.EarlierBoot()}
	for _, s := range j.Ledger() {
		p.Ledger = append(p.Ledger, fmt.Sprint(s.Op))
	}
	for _, s := range j.Plan() {
		p.Steps = append(p.Steps, fmt.Sprint(s.Op))
	}
	var addrs []netip.Addr
	if len(j.Result) > 0 {
		var res current.Result
		if json.Unmarshal(j.Result, &res) == nil {
			for i, ifc := range res.Interfaces {
				if ifc.Sandbox == "" {
					continue
				}
				n := NIC{Name: ifc.Name, MAC: ifc.Mac}
				for _, ip := range res.IPs {
					if ip.Interface != nil && *ip.Interface == i {
						n.Addresses = append(n.Addresses, ip.Address.String())
						if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
							addrs = append(addrs, a.Unmap())
						}
					}
				}
				p.NICs = append(p.NICs, n)
			}
		}
	}
	p.PodNamespace = podNamespace(j)
	p.NodeRoutes = nodeRoutes(addrs)
	if o.NoCluster {
		p.Cluster = "not asked (--no-cluster)"
		return p
	}
	kc := node.Kubeconfig
	if o.Kubeconfig != "" {
		kc = o.Kubeconfig
	}
	if kc == "" {
		p.Cluster = "not asked: no kubeconfig"
		return p
	}
	c, err := kube.Load(kc, node.APITimeout)
	if err != nil {
		p.Cluster = err.Error()
		return p
	}
	var errs []string
	if ns, name, ok := strings.Cut(j.Pod, "/"); ok {
		pod, err := c.GetPod(ctx, ns, name)
		if err != nil {
			errs = append(errs, err.Error())
		} else if s := pod.Annotations["k8s.v1.cni.cncf.io/network-status"]; s != "" {
			p.NetworkStatus = json.RawMessage(s)
		}
	}
	if j.PodUID != "" {
		items, err := kube.List[struct {
			Metadata struct{ Name string }
			Spec     struct {
				Address, Pool, Node, ContainerID string
			}
		}](ctx, c, "/apis/spinneret.io/v1alpha1/ipallocations", "spinneret.io/pod-uid="+j.PodUID)
		if err != nil {
			errs = append(errs, err.Error())
		}
		for _, i := range items {
			p.Allocations = append(p.Allocations, Allocation{Name: i.Metadata.Name, Address: i.Spec.Address, Pool: i.Spec.Pool, Node: i.Spec.Node, ContainerID: i.Spec.ContainerID})
		}
	}
	p.Cluster = strings.Join(errs, "; ")
	return p
}

// podNamespace shows the pod's namespace through the journal's netns
// path, or says why it cannot.
func podNamespace(j *txn.Journal) string {
	if j.NetNS == "" {
		return "(no network namespace recorded)"
	}
	h, err := netns.GetFromPath(j.NetNS)
	if err != nil {
		return fmt.Sprintf("(%s: %v: the sandbox's namespace is gone)", j.NetNS, err)
	}
	defer h.Close()
	if ino, err := txn.PodNetNSInode(j.NetNS); err == nil && j.NetNSIno != 0 && ino != j.NetNSIno {
		return fmt.Sprintf("(%s is another namespace now (inode %d, the journal's %d): the sandbox's is gone)", j.NetNS, ino, j.NetNSIno)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", j.NetNS, err)
	}
	defer nl.Close()
	s, err := netlab.Show(nl)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", j.NetNS, err)
	}
	return s
}

// nodeRoutes are the node's routes (any table) to the addresses.
func nodeRoutes(addrs []netip.Addr) []string {
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netops.Dump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			continue
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			d, ok := netops.Prefix(r.Dst)
			if !ok || !d.IsSingleIP() || !containsAddr(addrs, d.Addr()) {
				continue
			}
			dev := ""
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = " dev " + l.Attrs().Name
			}
			out = append(out, fmt.Sprintf("%s%s table %d", r.Dst, dev, r.Table))
		}
	}
	sort.Strings(out)
	return out
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

// Text writes the page for a reader.
func (p *Page) Text(w io.Writer) {
	pod := p.Pod
	if pod == "" {
		pod = "(pod not recorded)"
	}
	fmt.Fprintf(w, "pod %s  uid %s\nsandbox %s  %s  network %s\nnetns %s\n", pod, p.PodUID, p.ContainerID, p.IfName, p.Network, p.NetNS)
	state := p.State
	if p.EarlierBoot {
		state += " (of an earlier boot: its kernel objects are gone; DEL or GC releases its addresses)"
	}
	fmt.Fprintf(w, "journal: %s, %d held, %d steps\n", state, len(p.Ledger), len(p.Steps))
	fmt.Fprintln(w, "\nNICs (the ADD's result):")
	if len(p.NICs) == 0 {
		fmt.Fprintln(w, "  none: the ADD did not complete (see the journal's steps and the plugin log)")
	}
	for _, n := range p.NICs {
		fmt.Fprintf(w, "  %-6s %s  %s\n", n.Name, n.MAC, strings.Join(n.Addresses, " "))
	}
	fmt.Fprintln(w, "\nin the pod:")
	fmt.Fprintln(w, p.PodNamespace)
	fmt.Fprintln(w, "\non the node, routes to the pod:")
	for _, r := range p.NodeRoutes {
		fmt.Fprintln(w, "  "+r)
	}
	fmt.Fprintln(w, "\naddresses held (the journal's ledger):")
	for _, l := range p.Ledger {
		fmt.Fprintln(w, "  "+l)
	}
	if len(p.Allocations) > 0 {
		fmt.Fprintln(w, "\nIPAllocations:")
		for _, a := range p.Allocations {
			fmt.Fprintf(w, "  %s  %s  pool %s  node %s  sandbox %s\n", a.Name, a.Address, a.Pool, a.Node, a.ContainerID)
		}
	}
	if len(p.NetworkStatus) > 0 {
		fmt.Fprintln(w, "\nnetwork-status (the pod's annotation):")
		var v any
		if json.Unmarshal(p.NetworkStatus, &v) == nil {
			b, _ := json.MarshalIndent(v, "  ", "  ")
			fmt.Fprintln(w, "  "+string(b))
		}
	}
	if p.Cluster != "" {
		fmt.Fprintln(w, "\nAPI server: "+p.Cluster)
	}
	fmt.Fprintln(w, "\njournal steps:")
	for i, s := range p.Steps {
		fmt.Fprintf(w, "  %2d  %s\n", i+1, s)
	}
}

// ErrNotFound is returned when no attachment matches.
var ErrNotFound = errors.New("no attachment of this node matches")
