// Package ipam is the allocation stage of an ADD. It takes what each NIC
// asks for (its pools and static addresses, in the local store or the
// kubernetes backend, or a run of its NAD's own IPAM plugin) and gives
// every address of the attachment, all or none, through one front
// (Front): each backend's allocation is an entry of the journal's ledger
// (txn.Held) before it takes effect, so rollback, DEL and GC release every
// kind the same way. The "local" backend keeps its state in files under
// the node's state dir; ipam/kubeipam is the kubernetes backend.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spinneret-cni/spinneret/conf"
)

// Allocation is one address handed to one interface.
type Allocation struct {
	IfName  string       `json:"ifname"`
	Pool    string       `json:"pool"`
	Address netip.Prefix `json:"address"` // the address with its subnet's length
	Gateway netip.Addr   `json:"gateway,omitzero"`
	// Object is the IPAllocation of the kubernetes backend.
	Object *KubeRef `json:"object,omitempty"`
}

// KubeRef is an IPAllocation as an ADD left it: DEL deletes it only if it
// is still that version (not taken over since), and never a StatefulSet
// pod's (Sticky: its successor takes it over).
type KubeRef struct {
	Name            string `json:"name"`
	ResourceVersion string `json:"rv"`
	Sticky          bool   `json:"sticky,omitempty"`
}

// Request is what one NIC of an attachment asks for: an address per family
// of its pools, or the given static addresses (each inside one of them).
type Request struct {
	IfName string
	Pools  []conf.Pool
	Static []netip.Addr
}

// Owner identifies who holds addresses: one attachment (container ID and the
// runtime's interface name), for all its NICs.
type Owner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	Network     string `json:"network"`
}

// key names an owner in file names; ':' is valid in neither a container ID
// nor an interface name, so keys cannot collide.
func (o Owner) key() string { return o.ContainerID + ":" + o.IfName }

// ErrExhausted is returned (wrapped) when no pool of a family has a free address.
var ErrExhausted = errors.New("exhausted")

type exhaustedError struct{ pools []string }

func (e *exhaustedError) Error() string {
	if len(e.pools) == 1 {
		return fmt.Sprintf("ipam: pool %q is exhausted", e.pools[0])
	}
	return fmt.Sprintf(`ipam: pools "%s" are exhausted`, strings.Join(e.pools, `", "`))
}

func (e *exhaustedError) Is(target error) bool { return target == ErrExhausted }

// Exhausted is the error of a family whose pools have no free address.
func Exhausted(pools []string) error { return &exhaustedError{pools: pools} }

// Families splits pools by address family, keeping config order.
func Families(pools []conf.Pool) [][]conf.Pool {
	var v4, v6 []conf.Pool
	for _, p := range pools {
		if p.Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	var out [][]conf.Pool
	for _, f := range [][]conf.Pool{v4, v6} {
		if len(f) > 0 {
			out = append(out, f)
		}
	}
	return out
}
