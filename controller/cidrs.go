package controller

import (
	"context"
	"encoding/json"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/internal/clusternet"
)

var (
	ciliumNodeGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnodes"}
	ciliumPoolGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2alpha1", Resource: "ciliumpodippools"}
	calicoPoolGVR = schema.GroupVersionResource{Group: "crd.projectcalico.org", Version: "v1", Resource: "ippools"}
)

// discover finds the cluster's CIDRs and publishes them if they changed.
// Nothing found leaves the published values as they are.
func (c *ctrl) discover(ctx context.Context) {
	cn := clusternet.Network{NodePodCIDRs: map[string][]string{}}
	kubeadmSvc, kubeadmPod := c.kubeadm(ctx)
	kcmSvc, kcmPod := c.kcmFlags(ctx)

	// services: ServiceCIDR objects, else kubeadm-config, else the
	// controller manager's flags
	if l, err := c.cs.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{}); err == nil {
		for _, s := range l.Items {
			if s.DeletionTimestamp == nil {
				cn.ServiceCIDRs = append(cn.ServiceCIDRs, s.Spec.CIDRs...)
			}
		}
		if len(cn.ServiceCIDRs) > 0 {
			cn.ServiceSource = "ServiceCIDR"
		}
	}
	switch {
	case cn.ServiceSource != "":
	case len(kubeadmSvc) > 0:
		cn.ServiceCIDRs, cn.ServiceSource = kubeadmSvc, "kubeadm-config"
	case len(kcmSvc) > 0:
		cn.ServiceCIDRs, cn.ServiceSource = kcmSvc, "kube-controller-manager"
	}

	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	nodeCIDRs := map[string][]string{}
	if err == nil {
		for _, n := range nodes.Items {
			if len(n.Spec.PodCIDRs) > 0 {
				nodeCIDRs[n.Name] = n.Spec.PodCIDRs
			}
		}
	}
	clusterPods := func() ([]string, string) {
		switch {
		case len(kubeadmPod) > 0:
			return kubeadmPod, "kubeadm-config"
		case len(kcmPod) > 0:
			return kcmPod, "kube-controller-manager"
		}
		var all []string
		for _, cidrs := range nodeCIDRs {
			all = append(all, cidrs...)
		}
		return all, "Node spec.podCIDRs"
	}

	// pods: Cilium, Calico, else the cluster's own (kubeadm, controller
	// manager, nodes' podCIDRs)
	if cm, err := c.cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "cilium-config", metav1.GetOptions{}); err == nil {
		c.cilium(ctx, cm, &cn, nodeCIDRs, clusterPods)
	} else if pools, err := c.dyn.Resource(calicoPoolGVR).List(ctx, metav1.ListOptions{}); err == nil && len(pools.Items) > 0 {
		for _, p := range pools.Items {
			cidr, _, _ := unstructured.NestedString(p.Object, "spec", "cidr")
			disabled, _, _ := unstructured.NestedBool(p.Object, "spec", "disabled")
			if cidr != "" && !disabled && p.GetDeletionTimestamp() == nil {
				cn.PodCIDRs = append(cn.PodCIDRs, cidr)
			}
		}
		cn.PodSource = "Calico IPPool"
		cn.NodePodCIDRs = nodeCIDRs
	} else {
		cn.PodCIDRs, cn.PodSource = clusterPods()
		cn.NodePodCIDRs = nodeCIDRs
	}
	cn.ServiceCIDRs = normalise(cn.ServiceCIDRs)
	cn.PodCIDRs = normalise(cn.PodCIDRs)
	for n, cidrs := range cn.NodePodCIDRs {
		cn.NodePodCIDRs[n] = normalise(cidrs)
	}
	c.publish(ctx, &cn)
}

// cilium reads Cilium's IPAM: in cluster-pool mode (the default) the
// cluster CIDRs are cilium-config's cluster-pool-ipv4/ipv6-cidr and each
// node's range is its CiliumNode's spec.ipam.podCIDRs, which is what the
// node's pods use and can differ from the Node's spec.podCIDRs; in
// multi-pool mode, the CiliumPodIPPools; in kubernetes mode, the cluster's.
func (c *ctrl) cilium(ctx context.Context, cm *corev1.ConfigMap, cn *clusternet.Network, nodeCIDRs map[string][]string, clusterPods func() ([]string, string)) {
	mode := cm.Data["ipam"]
	if mode == "" {
		mode = "cluster-pool"
	}
	switch mode {
	case "cluster-pool":
		for _, k := range []string{"cluster-pool-ipv4-cidr", "cluster-pool-ipv6-cidr"} {
			cn.PodCIDRs = append(cn.PodCIDRs, strings.FieldsFunc(cm.Data[k], func(r rune) bool { return r == ',' || r == ' ' })...)
		}
		cn.PodSource = "cilium-config (cluster-pool)"
		if l, err := c.dyn.Resource(ciliumNodeGVR).List(ctx, metav1.ListOptions{}); err == nil {
			for _, n := range l.Items {
				if cidrs, _, _ := unstructured.NestedStringSlice(n.Object, "spec", "ipam", "podCIDRs"); len(cidrs) > 0 {
					cn.NodePodCIDRs[n.GetName()] = cidrs
				}
			}
		}
	case "multi-pool":
		if l, err := c.dyn.Resource(ciliumPoolGVR).List(ctx, metav1.ListOptions{}); err == nil {
			for _, p := range l.Items {
				for _, fam := range []string{"ipv4", "ipv6"} {
					cidrs, _, _ := unstructured.NestedStringSlice(p.Object, "spec", fam, "cidrs")
					cn.PodCIDRs = append(cn.PodCIDRs, cidrs...)
				}
			}
		}
		cn.PodSource = "CiliumPodIPPool"
	default: // "kubernetes" and others: the Node's podCIDRs
		cn.PodCIDRs, cn.PodSource = clusterPods()
		cn.PodSource = "cilium (" + mode + "): " + cn.PodSource
		cn.NodePodCIDRs = nodeCIDRs
	}
}

// kubeadm reads kube-system/kubeadm-config's networking.serviceSubnet and
// podSubnet.
func (c *ctrl) kubeadm(ctx context.Context) (svc, pod []string) {
	cm, err := c.cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "kubeadm-config", metav1.GetOptions{})
	if err != nil {
		return nil, nil
	}
	var cc struct {
		Networking struct {
			ServiceSubnet string `json:"serviceSubnet"`
			PodSubnet     string `json:"podSubnet"`
		} `json:"networking"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["ClusterConfiguration"]), &cc); err != nil {
		c.log.Warn("kubeadm-config: ClusterConfiguration", "err", err)
		return nil, nil
	}
	split := func(s string) []string { return strings.FieldsFunc(s, func(r rune) bool { return r == ',' }) }
	return split(cc.Networking.ServiceSubnet), split(cc.Networking.PodSubnet)
}

var kcmFlag = regexp.MustCompile(`^--(service-cluster-ip-range|cluster-cidr)=(.+)$`)

// kcmFlags reads --service-cluster-ip-range and --cluster-cidr of the
// kube-controller-manager pod (kube-system, component=kube-controller-manager).
func (c *ctrl) kcmFlags(ctx context.Context) (svc, pod []string) {
	l, err := c.cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "component=kube-controller-manager"})
	if err != nil {
		return nil, nil
	}
	for _, p := range l.Items {
		for _, ct := range p.Spec.Containers {
			for _, arg := range append(append([]string{}, ct.Command...), ct.Args...) {
				m := kcmFlag.FindStringSubmatch(arg)
				if m == nil {
					continue
				}
				v := strings.Split(m[2], ",")
				if m[1] == "cluster-cidr" {
					pod = v
				} else {
					svc = v
				}
			}
		}
	}
	return svc, pod
}

// normalise keeps valid CIDRs, masked, sorted IPv4 first, without duplicates.
func normalise(in []string) []string {
	var ps []netip.Prefix
	for _, s := range in {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			ps = append(ps, p.Masked())
		}
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Addr().Is4() != ps[j].Addr().Is4() {
			return ps[i].Addr().Is4()
		}
		if ps[i].Addr() != ps[j].Addr() {
			return ps[i].Addr().Less(ps[j].Addr())
		}
		return ps[i].Bits() < ps[j].Bits()
	})
	ps = slices.Compact(ps)
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// publish writes the ConfigMap if its content changed. Empty discoveries
// leave what was published before.
func (c *ctrl) publish(ctx context.Context, cn *clusternet.Network) {
	if len(cn.ServiceCIDRs) == 0 && len(cn.PodCIDRs) == 0 {
		c.log.Warn("no cluster CIDRs found; the published ones stay")
		return
	}
	b, _ := json.Marshal(cn)
	cms := c.cs.CoreV1().ConfigMaps(c.cfg.Namespace)
	cur, err := cms.Get(ctx, clusternet.ConfigMapName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: clusternet.ConfigMapName, Namespace: c.cfg.Namespace}, Data: map[string]string{clusternet.ConfigMapKey: string(b)}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			c.log.Warn("publish cluster network", "err", err)
			return
		}
	case err != nil:
		c.log.Warn("publish cluster network", "err", err)
		return
	case cur.Data[clusternet.ConfigMapKey] == string(b):
		c.m.cidrPublished.SetToCurrentTime()
		return
	default:
		cur = cur.DeepCopy()
		if cur.Data == nil {
			cur.Data = map[string]string{}
		}
		cur.Data[clusternet.ConfigMapKey] = string(b)
		if _, err := cms.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			c.log.Warn("publish cluster network", "err", err)
			return
		}
	}
	c.m.cidrPublishes.Inc()
	c.m.cidrPublished.SetToCurrentTime()
	c.log.Info("published cluster network", "services", cn.ServiceCIDRs, "serviceSource", cn.ServiceSource, "pods", cn.PodCIDRs, "podSource", cn.PodSource, "nodes", len(cn.NodePodCIDRs))
}
