package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/clusternet"
	"github.com/spinneret-cni/spinneret/internal/kube"
)

// get reads path; found is false on 404; a refusal (401, 403) becomes a
// warning on check, saying which credential to use.
func (r *Report) get(ctx context.Context, c *kube.Client, check, path string, out any) (found bool, ok bool) {
	err := c.Get(ctx, path, out)
	switch {
	case err == nil:
		return true, true
	case kube.IsStatus(err, 404):
		return false, true
	case kube.IsStatus(err, 403) || kube.IsStatus(err, 401):
		r.add(check, path, Warn, "not readable with this credential: "+err.Error(), "run doctor with --kubeconfig of a cluster admin for the cluster checks")
	default:
		r.add(check, path, Fail, err.Error(), "check the API server and the node's kubeconfig")
	}
	return false, false
}

// cluster runs the checks that ask the API server.
func (r *Report) cluster(ctx context.Context, o Options, c *kube.Client, cfg *conf.Config, node *conf.Node) {
	ns := node.ControllerNamespace
	// Cilium's cni.exclusive renames every other config away
	var cm struct{ Data map[string]string }
	if found, ok := r.get(ctx, c, "cilium", "/api/v1/namespaces/kube-system/configmaps/cilium-config", &cm); found {
		if cm.Data["cni-exclusive"] == "true" {
			r.add("cilium", "cni-exclusive", Fail, "true: Cilium's agent moves every other CNI config out of the conf dir, spinneret's too",
				"helm upgrade cilium ... --set cni.exclusive=false")
		} else {
			r.ok("cilium", "cni-exclusive", "false")
		}
	} else if ok {
		r.ok("cilium", "", "not installed (no kube-system/cilium-config)")
	}
	// the controller leads and publishes
	var lease struct {
		Spec struct {
			HolderIdentity       string `json:"holderIdentity"`
			RenewTime            string `json:"renewTime"`
			LeaseDurationSeconds int    `json:"leaseDurationSeconds"`
		}
	}
	stale := o.LeaseStale
	if stale == 0 {
		stale = time.Minute
	}
	if found, ok := r.get(ctx, c, "controller", "/apis/coordination.k8s.io/v1/namespaces/"+ns+"/leases/"+clusternet.LeaseName, &lease); found {
		t, err := time.Parse(time.RFC3339Nano, lease.Spec.RenewTime)
		if age := time.Since(t); err != nil || age > stale {
			r.add("controller", "lease "+ns+"/"+clusternet.LeaseName, Fail, fmt.Sprintf("last renewed by %s at %s: no replica leads; IPAM garbage collection, pool status and CIDR discovery have stopped", lease.Spec.HolderIdentity, lease.Spec.RenewTime),
				"kubectl -n "+ns+" get pods -l app.kubernetes.io/name=spinneret-controller; kubectl logs of them")
		} else {
			r.ok("controller", "lease "+ns+"/"+clusternet.LeaseName, fmt.Sprintf("%s leads (renewed %s ago)", lease.Spec.HolderIdentity, age.Round(time.Second)))
		}
	} else if ok {
		r.add("controller", "lease "+ns+"/"+clusternet.LeaseName, Fail, "no Lease: the controller has never run", "install the chart with controller.enabled=true")
	}
	var pub struct {
		Data     map[string]string
		Metadata struct {
			ManagedFields []struct{ Time string } `json:"managedFields"`
		}
	}
	if found, ok := r.get(ctx, c, "cluster CIDRs", "/api/v1/namespaces/"+ns+"/configmaps/"+clusternet.ConfigMapName, &pub); found {
		last := ""
		for _, m := range pub.Metadata.ManagedFields {
			last = max(last, m.Time)
		}
		r.ok("cluster CIDRs", ns+"/"+clusternet.ConfigMapName, "published, last changed "+last)
	} else if ok {
		r.add("cluster CIDRs", ns+"/"+clusternet.ConfigMapName, Warn, "not published: the coordinator routes only the CIDRs its config names", "the controller publishes them; see the controller check")
	}
	r.cidrSources(ctx, c, node)
	r.pools(ctx, c)
}

// cidrSources: the node's pod CIDRs and the service CIDRs as each source
// has them.
func (r *Report) cidrSources(ctx context.Context, c *kube.Client, node *conf.Node) {
	var n struct {
		Spec struct {
			PodCIDRs []string `json:"podCIDRs"`
		}
	}
	if found, _ := r.get(ctx, c, "pod CIDRs", "/api/v1/nodes/"+node.NodeName, &n); found {
		var cn struct {
			Spec struct {
				IPAM struct {
					PodCIDRs []string `json:"podCIDRs"`
				} `json:"ipam"`
			}
		}
		if found, _ := r.get(ctx, c, "pod CIDRs", "/apis/cilium.io/v2/ciliumnodes/"+node.NodeName, &cn); found {
			a, b := slices.Sorted(slices.Values(n.Spec.PodCIDRs)), slices.Sorted(slices.Values(cn.Spec.IPAM.PodCIDRs))
			if len(a) > 0 && !slices.Equal(a, b) {
				r.add("pod CIDRs", "node "+node.NodeName, Warn, fmt.Sprintf("Node spec.podCIDRs %v, CiliumNode spec.ipam.podCIDRs %v: under Cilium's cluster-pool IPAM pods get the CiliumNode's, and whatever announces the Node's (BGP, routes) announces the wrong ones", a, b),
					"make the announcements follow Cilium's IPAM (or use ipam.mode=kubernetes)")
			} else {
				r.ok("pod CIDRs", "node "+node.NodeName, fmt.Sprintf("Node and CiliumNode agree: %v", b))
			}
		}
	}
	var kc struct{ Data map[string]string }
	if found, _ := r.get(ctx, c, "service CIDRs", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", &kc); found {
		var cc struct {
			Networking struct {
				ServiceSubnet string `yaml:"serviceSubnet"`
			} `yaml:"networking"`
		}
		yaml.Unmarshal([]byte(kc.Data["ClusterConfiguration"]), &cc)
		var sc struct {
			Items []struct {
				Spec struct {
					CIDRs []string `json:"cidrs"`
				}
			}
		}
		if found, _ := r.get(ctx, c, "service CIDRs", "/apis/networking.k8s.io/v1/servicecidrs", &sc); found {
			var live []string
			for _, i := range sc.Items {
				live = append(live, i.Spec.CIDRs...)
			}
			var want []string
			for _, s := range strings.Split(cc.Networking.ServiceSubnet, ",") {
				if s = strings.TrimSpace(s); s != "" {
					want = append(want, s)
				}
			}
			missing := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return slices.Contains(live, s) })
			if len(missing) > 0 || (len(want) > 0 && len(live) > len(want)) {
				r.add("service CIDRs", "", Warn, fmt.Sprintf("kubeadm-config's serviceSubnet %v, the ServiceCIDRs %v: the coordinator routes the ServiceCIDRs'", want, live),
					"update kubeadm-config (kubeadm upgrade reads it) or the ServiceCIDR objects, so they agree")
			} else if len(want) > 0 {
				r.ok("service CIDRs", "", fmt.Sprintf("kubeadm-config and ServiceCIDRs agree: %v", live))
			}
		}
	}
}

// pools: spinneret's IPPools overlapping each other, or holding an
// address of this node.
func (r *Report) pools(ctx context.Context, c *kube.Client) {
	items, err := kube.List[struct {
		Metadata struct{ Name string }
		Spec     struct {
			Subnet  string
			Ranges  []struct{ Start, End string }
			Exclude []string
		}
	}](ctx, c, "/apis/spinneret.io/v1alpha1/ippools", "")
	if err != nil {
		r.add("pools", "", Warn, "not listed: "+err.Error(), "")
		return
	}
	type pool struct {
		name string
		p    netip.Prefix
		// hands reports whether the pool may hand out an address
		hands func(netip.Addr) bool
	}
	var ps []pool
	for _, i := range items {
		p, err := netip.ParsePrefix(i.Spec.Subnet)
		if err != nil {
			continue
		}
		spec := i.Spec
		hands := func(a netip.Addr) bool {
			if !p.Contains(a) {
				return false
			}
			for _, x := range spec.Exclude {
				if xp, err := netip.ParsePrefix(x); err == nil && xp.Contains(a) {
					return false
				}
				if xa, err := netip.ParseAddr(x); err == nil && xa == a {
					return false
				}
			}
			if len(spec.Ranges) == 0 {
				return true
			}
			for _, rg := range spec.Ranges {
				s, e1 := netip.ParseAddr(rg.Start)
				e, e2 := netip.ParseAddr(rg.End)
				if e1 == nil && e2 == nil && s.Compare(a) <= 0 && a.Compare(e) <= 0 {
					return true
				}
			}
			return false
		}
		ps = append(ps, pool{i.Metadata.Name, p.Masked(), hands})
	}
	bad := false
	for i := range ps {
		for j := i + 1; j < len(ps); j++ {
			if ps[i].p.Overlaps(ps[j].p) {
				bad = true
				r.add("pools", ps[i].name+", "+ps[j].name, Fail, fmt.Sprintf("%s and %s overlap: both may hand out the same address", ps[i].p, ps[j].p),
					"give each pool its own subnet (several pools on one subnet: split its ranges instead)")
			}
		}
	}
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_ALL)
	for _, p := range ps {
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ip = ip.Unmap(); !ok || !ip.IsGlobalUnicast() || !p.hands(ip) {
				continue
			}
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil || strings.HasPrefix(l.Attrs().Name, "spn") {
				continue // a pod's veth end, not the node's own
			}
			bad = true
			r.add("pools", p.name, Warn, fmt.Sprintf("%s may hand out this node's address %s (%s): ADD refuses it when it comes up, and the pod retries", p.p, ip, l.Attrs().Name),
				"exclude the node's addresses from the pool (spec.exclude) or narrow its ranges")
		}
	}
	if !bad {
		r.ok("pools", "", fmt.Sprintf("%d pools, no overlap, none holds this node's addresses", len(ps)))
	}
}
