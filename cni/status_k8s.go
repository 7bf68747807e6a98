package cni

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/plan"
	"github.com/spinneret-cni/spinneret/request"
)

// AnnotNetworkStatus is the Network Plumbing WG's status annotation.
const AnnotNetworkStatus = "k8s.v1.cni.cncf.io/network-status"

// kubeClient is the API client of the node conf's kubeconfig, loaded once;
// nil without one.
func (p *plugin) kubeClient() (*kube.Client, error) {
	if p.node.Kubeconfig == "" || p.apiDown {
		return nil, nil
	}
	if p.kube == nil {
		c, err := kube.Load(p.node.Kubeconfig, p.node.APITimeout)
		if err != nil {
			return nil, err
		}
		// the next call resumes this one's TLS session instead of a
		// full handshake
		c.ResumeSessions(statedir.APISessions(p.node.StateDir))
		p.kube = c
	}
	return p.kube, nil
}

// kubePod is the pod CNI_ARGS name, as the API client takes it; nil when
// they name none.
func kubePod(a request.Args) *kube.Pod {
	if pod := a.Pod(); pod != nil {
		return &kube.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
	}
	return nil
}

// networkStatus is one entry of the network-status annotation.
type networkStatus struct {
	Name      string      `json:"name"`
	Interface string      `json:"interface"`
	IPs       []string    `json:"ips,omitempty"`
	MAC       string      `json:"mac,omitempty"`
	Default   bool        `json:"default,omitempty"`
	DNS       *types.DNS  `json:"dns,omitempty"`
	Gateway   []string    `json:"gateway,omitempty"`
	Device    interface{} `json:"device-info,omitempty"`
}

// NetworkStatus is the pod's network-status: one entry per NIC, in order,
// the default-route NIC marked default with its gateways and the DNS.
func NetworkStatus(nics []plan.NIC, res *current.Result) ([]byte, error) {
	var out []networkStatus
	for i, n := range nics {
		st := networkStatus{Name: n.StatusName, Interface: n.IfName, Default: n.DefaultRoute}
		if st.Name == "" {
			st.Name = n.Network.Name
		}
		if i < len(res.Interfaces) {
			st.MAC = res.Interfaces[i].Mac
		}
		if n.VF != nil {
			// the Network Plumbing WG's device-info for a PCI device
			st.Device = map[string]any{"type": "pci", "version": "1.1.0", "pci": map[string]string{"pci-address": n.VF.PCI, "pf-pci-address": n.VF.PFPCI}}
		}
		for _, a := range n.Addrs {
			st.IPs = append(st.IPs, a.Address.Addr().String())
			if n.DefaultRoute && a.Gateway.IsValid() {
				st.Gateway = append(st.Gateway, a.Gateway.String())
			}
		}
		if n.DefaultRoute && !res.DNS.IsEmpty() {
			dns := res.DNS
			st.DNS = &dns
		}
		out = append(out, st)
	}
	return json.Marshal(out)
}

// writeNetworkStatus patches the pod's network-status after a successful
// ADD (one request). A failure is logged, not returned: the pod's network
// works, only its status is missing.
func (p *plugin) writeNetworkStatus(args *skel.CmdArgs, nics []plan.NIC, res *current.Result) {
	c, err := p.kubeClient()
	pod := kubePod(p.args)
	if err != nil || c == nil || pod == nil {
		return
	}
	b, err := NetworkStatus(nics, res)
	if err == nil {
		err = c.SetPodAnnotation(context.Background(), pod.Namespace, pod.Name, AnnotNetworkStatus, string(b))
	}
	if err != nil {
		p.log.Warn("network-status not written", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
	p.phase("status")
}

// reportFailure records a failed ADD as a Warning event on the pod, with a
// reason that says what failed.
func (p *plugin) reportFailure(args *skel.CmdArgs, cause error) {
	c, err := p.kubeClient()
	pod := kubePod(p.args)
	if err != nil || c == nil || pod == nil {
		return
	}
	reason := "NetworkSetupFailed"
	var te *types.Error
	if errors.As(cause, &te) {
		switch te.Code {
		case ErrPoolExhausted:
			reason = "IPPoolExhausted"
		case ErrBadRequest:
			reason = "BadNetworkRequest"
		case ErrIPConflict:
			reason = "IPConflict"
		case ErrGatewayUnreachable:
			reason = "GatewayUnreachable"
		}
	}
	if err := c.PodEvent(context.Background(), pod, reason, cause.Error()); err != nil {
		p.log.Warn("event not recorded", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}
