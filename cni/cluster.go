package cni

import (
	"context"
	"encoding/json"
	"net/url"

	"github.com/spinneret-cni/spinneret/facts"
	"github.com/spinneret-cni/spinneret/internal/clusternet"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/plan"
)

// clusterCIDRs reads the service and pod CIDRs the controller published
// (facts.ClusterCIDRs), when the primary network's coordinator needs them
// (underlay, and the config names none) and the node conf names a
// kubeconfig.
func (p *plugin) clusterCIDRs() plan.ClusterCIDRs {
	c := p.coord
	if p.node.Kubeconfig == "" || !c.Enabled() || len(c.ServiceCIDR) > 0 || len(c.PodCIDR) > 0 {
		return plan.ClusterCIDRs{}
	}
	out, warn := facts.ClusterCIDRs(statedir.ClusterNetwork(p.node.StateDir), p.node.PoolCacheTTL, p.fetchClusterNetwork)
	if warn != nil {
		p.log.Warn("cluster CIDRs", "err", warn)
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
