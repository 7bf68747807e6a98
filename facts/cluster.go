package facts

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spinneret-cni/spinneret/internal/clusternet"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/plan"
)

// clusterCache is the node's copy of what the controller published.
type clusterCache struct {
	Fetched time.Time          `json:"fetched"`
	Network clusternet.Network `json:"network"`
}

// ClusterCIDRs are the service and pod CIDRs the controller published:
// fetched (one GET), or the node's copy at path while it is younger than
// ttl; if fetch fails, the node's last copy whatever its age: the
// controller (or the API server) being down never blocks a pod. warn says
// what was used instead, when fetch failed.
func ClusterCIDRs(path string, ttl time.Duration, fetch func() (*clusternet.Network, error)) (out plan.ClusterCIDRs, warn error) {
	var cached clusterCache
	haveCache := false
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &cached) == nil {
		haveCache = true
	}
	cn := cached.Network
	if !haveCache || ttl == 0 || time.Since(cached.Fetched) >= ttl {
		fresh, err := fetch()
		switch {
		case err == nil:
			cn = *fresh
			if b, err := json.Marshal(clusterCache{Fetched: time.Now(), Network: cn}); err == nil {
				_ = fileutil.WriteAtomicUnsynced(path, b) // a copy: not synced
			}
		case haveCache:
			warn = fmt.Errorf("using the node's last copy, of %s: %w", cached.Fetched.Format(time.RFC3339), err)
		default:
			return out, fmt.Errorf("none published (is spinneret controller running?); the pod gets no service or pod CIDR routes: %w", err)
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
	return out, warn
}
