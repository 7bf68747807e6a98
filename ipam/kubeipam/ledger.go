package kubeipam

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
)

func init() {
	txn.Register("ipam.kube", func() txn.Op { return &Held{} })
}

// Held is the kubernetes backend's ledger entry (txn.Held): journaled
// before the backend runs with the pod UID and sandbox (a release then
// lists that sandbox's objects, as for an ADD killed mid-way), and amended
// once it ran with every object the attachment holds, each with the
// version the ADD left (Complete: the release deletes just those, each
// only if still that version, never a StatefulSet pod's).
type Held struct {
	PodUID      string         `json:"podUID,omitempty"`
	ContainerID string         `json:"containerID,omitempty"`
	Objects     []ipam.KubeRef `json:"objects,omitempty"`
	Complete    bool           `json:"complete,omitempty"`
}

func (h *Held) Kind() string    { return "ipam.kube" }
func (h *Held) HeldKey() string { return "ipam.kube" }
func (h *Held) String() string {
	if h.Complete {
		return fmt.Sprintf("%d IPAllocation(s) of the kubernetes IPAM backend", len(h.Objects))
	}
	return fmt.Sprintf("IPAllocations of pod %s sandbox %s", h.PodUID, h.ContainerID)
}

// Do does nothing: the backend runs in the front, after this entry is
// journaled.
func (h *Held) Do(*txn.Env) error { return nil }

// Check does nothing: the NIC's address steps report the addresses.
func (h *Held) Check(*txn.Env) error { return nil }

// Undo deletes the objects. The API server being down (or refusing, or
// not configured any more) does not fail it: the pod's network is gone,
// and the controller frees the addresses of pods that no longer exist.
func (h *Held) Undo(env *txn.Env) error {
	if h.Complete && len(h.Objects) == 0 || !h.Complete && (h.PodUID == "" || h.ContainerID == "") {
		return nil
	}
	var n int
	err := fmt.Errorf("no API server configured")
	if env.Kube != nil {
		c, cerr := env.Kube()
		switch {
		case cerr != nil:
			err = cerr
		case c == nil:
		case h.Complete:
			n, err = ReleaseRefs(context.Background(), c, env.StateDir, h.Objects)
		default:
			n, err = Release(context.Background(), c, env.StateDir, h.PodUID, h.ContainerID)
		}
	}
	if env.Log != nil {
		if err != nil {
			env.Log.Warn("kubernetes IPAM release left to the controller's GC", "entry", h.String(), "err", err)
		} else if n > 0 {
			env.Log.Info("released", "backend", "kubernetes", "addresses", n)
		}
	}
	return nil
}

// Ledger is the backend's ledger entry as things stand (ipam.KubeBackend).
func (k *Backend) Ledger(o ipam.Owner) txn.Held {
	if !k.allocated {
		return &Held{PodUID: k.pod.UID, ContainerID: o.ContainerID}
	}
	return &Held{Objects: refs(k.held, false), Complete: true}
}

// Failed is the entry of a failed ADD: the objects it created, deleted
// also for a StatefulSet pod; what the pod held before stays its own.
func (k *Backend) Failed(ipam.Owner) txn.Held {
	return &Held{Objects: refs(k.created, true), Complete: true}
}

func refs(objs map[netip.Addr]*Alloc, created bool) []ipam.KubeRef {
	out := make([]ipam.KubeRef, 0, len(objs))
	for _, obj := range objs {
		out = append(out, ipam.KubeRef{Name: obj.Metadata.Name, ResourceVersion: obj.Metadata.ResourceVersion,
			Sticky: !created && obj.Spec.OwnerKind == OwnerKindSTS})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
