package cni

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/ipam/kubeipam"
	"github.com/spinneret-cni/spinneret/plan"
)

// apiPod is the pod of CNI_ARGS as the API server has it, read once. A pod
// re-created under the same name (another UID than K8S_POD_UID) is refused.
func (p *plugin) apiPod() (*kube.Pod, error) {
	if p.pod != nil {
		return p.pod, nil
	}
	ns, name, uid := string(p.args.K8S_POD_NAMESPACE), string(p.args.K8S_POD_NAME), string(p.args.K8S_POD_UID)
	if ns == "" || name == "" {
		return nil, nil // not a Kubernetes pod
	}
	c, err := p.kubeClient()
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if c == nil {
		return nil, nil
	}
	pod, err := c.GetPod(context.Background(), ns, name)
	if err != nil {
		return nil, p.apiError(err)
	}
	if uid != "" && pod.UID != uid {
		return nil, fmt.Errorf("pod %s/%s: the API server has UID %s, CNI_ARGS K8S_POD_UID %s: the pod was re-created", ns, name, pod.UID, uid)
	}
	p.pod = pod
	p.phase("api")
	return pod, nil
}

// apiError marks an unreachable API server (no later request waits out its
// timeout again) and makes it a try-again-later CNI error.
func (p *plugin) apiError(err error) error {
	if errors.Is(err, kube.ErrUnreachable) {
		p.apiDown = true
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return err
}

// kubeIPAM is the kubernetes IPAM backend for this pod, made once.
func (p *plugin) kubeIPAM(network string) (*kubeipam.Backend, error) {
	if p.kipam != nil {
		return p.kipam, nil
	}
	if p.node.Kubeconfig == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network %s uses the kubernetes IPAM backend, but the node conf names no kubeconfig", network), "")
	}
	if p.node.NodeName == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network %s uses the kubernetes IPAM backend, but the node conf names no nodeName and the host name cannot name a node", network), "")
	}
	if p.apiDown {
		return nil, types.NewError(types.ErrTryAgainLater, "network "+network+": "+kube.ErrUnreachable.Error(), "")
	}
	pod, err := p.apiPod()
	if err != nil {
		return nil, err
	}
	if pod == nil {
		return nil, fmt.Errorf("network %s uses the kubernetes IPAM backend: CNI_ARGS name no pod (K8S_POD_NAMESPACE, K8S_POD_NAME)", network)
	}
	kp := kubeipam.Pod{PodRef: kubeipam.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, Labels: pod.Labels, OwnerKind: pod.OwnerKind}
	p.kipam = kubeipam.New(context.Background(), p.kube, p.node.StateDir, p.node.NodeName, p.node.PoolCacheTTL, kp)
	return p.kipam, nil
}

// selectKubePools gives each NIC of a kubernetes-backed network its
// candidate IPPools (kubeipam.Backend.Select), so routes and gateways are known
// before anything is allocated.
func (p *plugin) selectKubePools(nics []plan.NIC) error {
	for i := range nics {
		n := &nics[i]
		if !n.Network.KubeIPAM {
			continue
		}
		k, err := p.kubeIPAM(n.Network.Name)
		if err != nil {
			return err
		}
		sel := kubeipam.Selection{IfName: n.IfName, Primary: i == 0, Network: n.Network.IPPools,
			Annotated: n.Pools.Annotated, Annot4: n.Pools.IPv4, Annot6: n.Pools.IPv6}
		pools, err := k.Select(sel)
		if err != nil {
			return p.apiError(err)
		}
		n.Network.Pools = pools
	}
	if p.kipam != nil {
		p.phase("select")
	}
	return nil
}

// allocator is the IPAM stage of this ADD: ipam.Front, its ledger kept in
// j (a test may set p.newAllocator instead).
func (p *plugin) allocator(j *txn.Journal, args *skel.CmdArgs) ipam.Allocator {
	if p.newAllocator != nil {
		return p.newAllocator(j, args)
	}
	f := &ipam.Front{Journal: j, Owner: ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName, Network: p.cfg.Name},
		Local: p.store, Path: args.Path, NetNS: args.Netns, Args: args.Args}
	if p.kipam != nil {
		f.Kube = p.kipam
	}
	return f
}

// ipamNeeds is what the NICs ask of the IPAM front.
func ipamNeeds(nics []plan.NIC) []ipam.Need {
	out := make([]ipam.Need, len(nics))
	for i, n := range nics {
		out[i] = ipam.Need{Request: ipam.Request{IfName: n.IfName, Pools: n.Network.Pools, Static: n.Static},
			Kube: n.Network.KubeIPAM, Delegate: n.Network.DelegateIPAM}
	}
	return out
}

// sandboxLedger is the ledger of an attachment that has no journal: what
// an ADD of a binary before journal format 1 (which allocated before
// journaling) may have left when it was killed before its journal: the
// local store's addresses of the attachment, and the kubernetes objects of
// its pod and sandbox.
func (p *plugin) sandboxLedger(containerID, ifname string) []txn.Step {
	steps := []txn.Step{{Op: &ipam.LocalHeld{Network: p.cfg.Name, ContainerID: containerID, IfName: ifname}}}
	if uid := string(p.args.K8S_POD_UID); uid != "" && p.node.Kubeconfig != "" {
		steps = append(steps, txn.Step{Op: &kubeipam.Held{PodUID: uid, ContainerID: containerID}})
	}
	return steps
}
