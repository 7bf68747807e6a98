// Package clusternet is the contract between spinneret controller, which
// discovers the cluster's CIDRs and publishes them, and the plugin, which
// routes them through the node: the ConfigMap's name and key, and the
// JSON document it holds. Both sides import it; neither restates it.
package clusternet

// ConfigMapName is the ConfigMap (in the controller's namespace) holding
// the published document under ConfigMapKey.
const (
	// LeaseName is the Lease the controller's replicas elect a leader
	// with, in the same namespace.
	LeaseName     = "spinneret-controller"
	ConfigMapName = "spinneret-cluster-network"
	ConfigMapKey  = "network.json"
)

// Network is the published document: the service CIDRs, the cluster's
// pod CIDRs, and each node's own pod CIDRs, with where each was found.
type Network struct {
	ServiceCIDRs  []string            `json:"serviceCIDRs"`
	ServiceSource string              `json:"serviceSource"`
	PodCIDRs      []string            `json:"podCIDRs"`
	PodSource     string              `json:"podSource"`
	NodePodCIDRs  map[string][]string `json:"nodePodCIDRs,omitempty"`
}
