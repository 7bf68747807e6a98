package cni

import (
	"context"
	"encoding/json"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/spinneret-cni/spinneret/internal/clusternet"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/plan"
)

// clusterCache is the node's copy of what the controller published.
type clusterCache struct {
	Fetched time.Time          `json:"fetched"`
	Network clusternet.Network `json:"network"`
}

// clusterCIDRs reads the service and pod CIDRs the controller published,
// when the primary network's coordinator needs them (underlay, and the
// config names none) and the node conf names a kubeconfig. One GET, or none
// while the node's copy is younger than the cache TTL; if the API server
// does not answer, the node's last copy is used whatever its age: the
// controller (or the API server) being down never blocks a pod.
func (p *plugin) clusterCIDRs() plan.ClusterCIDRs {
	var out plan.ClusterCIDRs
	c := p.cfg.Network.Coordinator
	if p.node.Kubeconfig == "" || !c.Underlay() || len(c.ServiceCIDR) > 0 || len(c.PodCIDR) > 0 {
		return out
	}
	path := statedir.ClusterNetwork(p.node.StateDir)
	var cached clusterCache
	haveCache := false
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &cached) == nil {
		haveCache = true
	}
	cn := cached.Network
	if !haveCache || p.node.PoolCacheTTL == 0 || time.Since(cached.Fetched) >= p.node.PoolCacheTTL {
		fresh, err := p.fetchClusterNetwork()
		switch {
		case err == nil:
			cn = *fresh
			if b, err := json.Marshal(clusterCache{Fetched: time.Now(), Network: cn}); err == nil {
				_ = fileutil.WriteAtomic(path, b) // a copy: not synced
			}
		case haveCache:
			p.log.Warn("cluster CIDRs: using the node's last copy", "fetched", cached.Fetched, "err", err)
		default:
			p.log.Warn("cluster CIDRs: none published (is spinneret controller running?); the pod gets no service or pod CIDR routes", "err", err)
			return out
		}
	}
	for _, l := range []struct {
		in  []string
		out *[]netip.Prefix
	}{{cn.ServiceCIDRs, &out.Service}, {cn.PodCIDRs, &out.Pod}} {
		for _, s := range l.in {
			if pre, err := netip.ParsePrefix(s); err == nil {
				*l.out = append(*l.out, pre.Masked())
			}
		}
	}
	p.phase("cluster-cidrs")
	return out
}

func (p *plugin) fetchClusterNetwork() (*clusternet.Network, error) {
	c, err := p.kubeClient()
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, kube.ErrUnreachable
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	path := "/api/v1/namespaces/" + url.PathEscape(p.node.ControllerNamespace) + "/configmaps/" + clusternet.ConfigMapName
	if err := c.Get(context.Background(), path, &cm); err != nil {
		return nil, p.apiError(err)
	}
	var cn clusternet.Network
	if err := json.Unmarshal([]byte(cm.Data[clusternet.ConfigMapKey]), &cn); err != nil {
		return nil, err
	}
	return &cn, nil
}
