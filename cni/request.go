package cni

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/facts"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/podres"
	"github.com/spinneret-cni/spinneret/plan"
	"github.com/spinneret-cni/spinneret/request"
)

// podAnnotations are the pod's annotations: as the runtime passed them
// (containerd's pod-annotations capability), or else read from the API
// server when the node conf names a kubeconfig. A pod re-created under the
// same name (another UID than CNI_ARGS' K8S_POD_UID) is refused: its
// annotations are not this sandbox's.
func (p *plugin) podAnnotations() (map[string]string, error) {
	if p.cfg.PodAnnotations != nil || p.node.Kubeconfig == "" {
		return p.cfg.PodAnnotations, nil
	}
	pod, err := p.apiPod()
	if err != nil || pod == nil {
		return nil, err
	}
	return pod.Annotations, nil
}

// apiNADs reads NetworkAttachmentDefinitions from the API server.
type apiNADs struct{ p *plugin }

func (s apiNADs) Network(namespace, name string) (*conf.Network, error) {
	c, err := s.p.kubeClient()
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, s.p.apiError(kube.ErrUnreachable)
	}
	nad, err := c.GetNAD(context.Background(), namespace, name)
	if errors.Is(err, kube.ErrNotFound) {
		return nil, request.ErrNoNAD
	}
	if err != nil {
		return nil, s.p.apiError(err)
	}
	return s.p.cfg.NADNetwork(namespace, name, nad.Config, nad.ResourceName)
}

// request is the request stage (request.Resolve) for this ADD: the pod's
// NICs, in order, with everything the pod and the runtime asked of each,
// validated. Its only I/O is reading the pod's annotations and NADs.
func (p *plugin) request(args *skel.CmdArgs) (*request.Request, error) {
	ann, err := p.podAnnotations()
	if err != nil {
		return nil, err
	}
	in := request.Input{Config: p.cfg, Node: p.node, IfName: args.IfName, Args: p.args, Annotations: ann, NADs: p.nads}
	if in.NADs == nil && p.node.Kubeconfig != "" {
		in.NADs = apiNADs{p}
	}
	return request.Resolve(in)
}

// nicsFor completes the request where that needs the node or the
// cluster: each kubernetes NIC's candidate IPPools, each sriov NIC's VF,
// and the annotation's routes on the NIC whose subnet holds their gateway.
// Every error comes before anything is allocated or created.
func (p *plugin) nicsFor(req *request.Request) ([]plan.NIC, error) {
	nics := make([]plan.NIC, len(req.NICs))
	for i, rn := range req.NICs {
		nics[i].NIC = rn
	}
	if err := p.selectKubePools(nics); err != nil {
		return nil, err
	}
	if err := facts.AssignVFs(nics, string(p.args.K8S_POD_NAME), p.podDevices); err != nil {
		return nil, err
	}
	if err := facts.AssignRoutes(nics, req.Routes); err != nil {
		return nil, err
	}
	return nics, nil
}

// podDevices are the devices of resource the kubelet assigned the pod
// (kubelet PodResources API).
func (p *plugin) podDevices(resource string) ([]string, error) {
	ns, name := string(p.args.K8S_POD_NAMESPACE), string(p.args.K8S_POD_NAME)
	if ns == "" || name == "" {
		return nil, errors.New("CNI_ARGS name no pod to ask the kubelet about")
	}
	devs, err := podres.Devices(context.Background(), p.node.PodResourcesSocket, ns, name, resource, p.node.APITimeout)
	p.phase("podresources")
	return devs, err
}
