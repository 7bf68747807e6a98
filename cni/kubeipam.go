package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

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

// allocate allocates every NIC's addresses: the local store's first, then
// the kubernetes backend's; all or none.
func (p *plugin) allocate(args *skel.CmdArgs, nics []plan.NIC) ([]ipam.Allocation, error) {
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName, Network: p.cfg.Name}
	var local, remote []ipam.Request
	for _, r := range ipamRequests(nics) {
		if i := nicIndex(nics, r.IfName); nics[i].Network.KubeIPAM {
			remote = append(remote, r)
		} else {
			local = append(local, r)
		}
	}
	allocs, err := p.store.Allocate(owner, local)
	if err != nil || len(remote) == 0 {
		return allocs, err
	}
	more, err := p.kipam.Allocate(owner, remote)
	if err != nil {
		if rerr := p.store.Release(args.ContainerID, args.IfName); rerr != nil {
			p.log.Error("release after a failed allocation", "err", rerr)
		}
		return nil, p.apiError(err)
	}
	return append(allocs, more...), nil
}

// ipamRequests is what the NICs ask of the IPAM backends.
func ipamRequests(nics []plan.NIC) []ipam.Request {
	var out []ipam.Request
	for _, n := range nics {
		out = append(out, ipam.Request{IfName: n.IfName, Pools: n.Network.Pools, Static: n.Static})
	}
	return out
}

// quarantine keeps a conflicting address away from pods for d, in the
// backend that allocated it.
func (p *plugin) quarantine(owner ipam.Owner, a netip.Addr, d time.Duration) error {
	if p.kipam != nil && p.kipam.Holds(a) {
		return p.kipam.Quarantine(owner, a, time.Now().Add(d))
	}
	return p.store.Quarantine(owner, a, time.Now().Add(d))
}

// releaseKubeRefs frees the IPAllocations a journal records (each only if
// unchanged since its ADD). The API server being down (or refusing) does
// not fail DEL: the pod's network is gone, and the controller frees the
// addresses of pods that no longer exist.
func (p *plugin) releaseKubeRefs(j *txn.Journal) {
	if len(j.IPAM) == 0 {
		return
	}
	var refs []ipam.KubeRef
	if err := json.Unmarshal(j.IPAM, &refs); err != nil {
		p.log.Error("journal's IPAM record unreadable; release left to the controller's GC", "err", err)
		return
	}
	c, err := p.kubeClient()
	if err == nil && c == nil {
		err = errors.New("no kubeconfig in the node conf")
	}
	if err == nil {
		var n int
		if n, err = kubeipam.ReleaseRefs(context.Background(), c, refs); err == nil {
			p.log.Info("released", "backend", "kubernetes", "container", j.ContainerID, "addresses", n)
			return
		}
	}
	p.log.Warn("kubernetes IPAM release left to the controller's GC", "container", j.ContainerID, "err", err)
}

// releaseKube frees what a sandbox without a journal (its ADD died before
// writing one) holds in the kubernetes backend: the IPAllocations with its
// pod UID and container ID, found with one list. The API server being
// down (or refusing) does not fail DEL: the pod's network is gone, and the
// controller frees the addresses of pods that no longer exist.
func (p *plugin) releaseKube(args *skel.CmdArgs) {
	uid := string(p.args.K8S_POD_UID)
	c, err := p.kubeClient()
	if err != nil || c == nil || uid == "" {
		return
	}
	n, err := kubeipam.Release(context.Background(), c, uid, args.ContainerID)
	if err != nil {
		p.log.Warn("kubernetes IPAM release left to the controller's GC", "pod-uid", uid, "container", args.ContainerID, "err", err)
		return
	}
	if n > 0 {
		p.log.Info("released", "backend", "kubernetes", "pod-uid", uid, "container", args.ContainerID, "addresses", n)
	}
	p.phase("release-kube")
}

// releaseAll undoes a failed ADD's allocations: the local store's, and the
// objects the kubernetes backend created in this ADD (what the pod held
// before it, it keeps).
func (p *plugin) releaseAll(containerID, ifname string) error {
	err := p.store.Release(containerID, ifname)
	if p.kipam != nil {
		if kerr := p.kipam.Undo(); kerr != nil {
			err = errors.Join(err, kerr)
		}
	}
	return err
}
