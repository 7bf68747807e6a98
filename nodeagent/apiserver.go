package nodeagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spinneret-cni/spinneret/internal/install"
	"github.com/spinneret-cni/spinneret/internal/kube"
)

// APIServerEndpoint is the API server's own address, for the node's
// kubeconfig: the plugin runs on the host network before any pod network
// exists, where the `kubernetes` Service's ClusterIP works only once
// kube-proxy (or its replacement, itself maybe a pod) runs. The API
// server publishes its endpoints as the EndpointSlice `kubernetes` in
// `default`; the agent reads it (through serviceURL, the ClusterIP, with
// the ServiceAccount of saDir: ca.crt and token) and takes the first ready
// address, "https://ADDR:PORT".
func APIServerEndpoint(ctx context.Context, serviceURL, saDir string, timeout time.Duration) (string, error) {
	tmp, err := os.CreateTemp("", "spinneret-sa-kubeconfig-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(install.Kubeconfig(serviceURL, saDir))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	c, err := kube.Load(tmp.Name(), timeout)
	if err != nil {
		return "", err
	}
	var slice struct {
		Endpoints []struct {
			Addresses  []string `json:"addresses"`
			Conditions struct {
				Ready *bool `json:"ready"`
			} `json:"conditions"`
		} `json:"endpoints"`
		Ports []struct {
			Name string `json:"name"`
			Port int    `json:"port"`
		} `json:"ports"`
	}
	if err := c.Get(ctx, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes", &slice); err != nil {
		return "", fmt.Errorf("the API server's EndpointSlice default/kubernetes: %w", err)
	}
	port := 0
	for _, p := range slice.Ports {
		if p.Name == "https" || port == 0 {
			port = p.Port
		}
	}
	for _, e := range slice.Endpoints {
		if (e.Conditions.Ready == nil || *e.Conditions.Ready) && len(e.Addresses) > 0 && port > 0 {
			return "https://" + net.JoinHostPort(e.Addresses[0], strconv.Itoa(port)), nil
		}
	}
	return "", fmt.Errorf("the API server's EndpointSlice default/kubernetes has no ready address")
}

// apiServerFor is the kubeconfig's server: configured, else the API
// server's own endpoint, else (with a warning) the Service's ClusterIP.
func (c *Config) apiServerFor(ctx context.Context) {
	o := &c.Install
	if c.APIServer != "" {
		o.APIServer = c.APIServer
		return
	}
	o.APIServer = c.ServiceURL
	if c.ServiceURL == "" || o.ServiceAccountDir == "" {
		return
	}
	ep, err := APIServerEndpoint(ctx, c.ServiceURL, o.ServiceAccountDir, 10*time.Second)
	if err != nil {
		c.Log.Warn("the node's kubeconfig names the kubernetes Service's ClusterIP, which the host network reaches only once kube-proxy (or its replacement) runs: set the chart's apiServer", "server", c.ServiceURL, "err", err)
		return
	}
	c.Log.Info("the node's kubeconfig names the API server's own endpoint", "server", ep, "service", c.ServiceURL)
	o.APIServer = ep
}
