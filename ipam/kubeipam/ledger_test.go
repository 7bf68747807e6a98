package kubeipam

import (
	"net/netip"
	"testing"

	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
)

// The backend's ledger entry: before Allocate, the pod and sandbox; after
// it, every object held, a StatefulSet pod's kept for its successor; for a
// failed ADD, only what it created, deleted even for a StatefulSet pod.
func TestLedgerEntries(t *testing.T) {
	k := New(t.Context(), nil, t.TempDir(), "node-a", 0, Pod{PodRef: PodRef{Namespace: "ns", Name: "db-0", UID: "u1"}, OwnerKind: OwnerKindSTS})
	o := ipam.Owner{ContainerID: "c1", IfName: "eth0", Network: "n"}
	if h := k.Ledger(o).(*Held); h.Complete || h.PodUID != "u1" || h.ContainerID != "c1" {
		t.Fatalf("before Allocate: %+v", h)
	}
	obj := func(name, rv string) *Alloc {
		return &Alloc{Metadata: kube.Meta{Name: name, ResourceVersion: rv}, Spec: AllocSpec{OwnerKind: OwnerKindSTS}}
	}
	adopted, created := obj("p.192.0.2.1", "5"), obj("p.192.0.2.2", "9")
	k.allocated = true
	k.held = map[netip.Addr]*Alloc{netip.MustParseAddr("192.0.2.1"): adopted, netip.MustParseAddr("192.0.2.2"): created}
	k.created = map[netip.Addr]*Alloc{netip.MustParseAddr("192.0.2.2"): created}
	h := k.Ledger(o).(*Held)
	if !h.Complete || len(h.Objects) != 2 || h.Objects[0] != (ipam.KubeRef{Name: "p.192.0.2.1", ResourceVersion: "5", Sticky: true}) || !h.Objects[1].Sticky {
		t.Fatalf("after Allocate: %+v", h)
	}
	f := k.Failed(o).(*Held)
	if !f.Complete || len(f.Objects) != 1 || f.Objects[0] != (ipam.KubeRef{Name: "p.192.0.2.2", ResourceVersion: "9"}) {
		t.Fatalf("failed ADD: %+v", f)
	}
	// with no API server configured the release is left to the
	// controller, and does not hold DEL back
	if err := f.Undo(txn.NewEnv("", 0)); err != nil {
		t.Fatal(err)
	}
}
