package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/testhook"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("ipam.local", func() txn.Op { return &LocalHeld{} })
}

// Need is what one NIC asks of the IPAM front: addresses from its pools
// (or the static ones given) in the local store or the kubernetes backend,
// or a run of the IPAM plugin its NAD names.
type Need struct {
	Request
	Kube     bool               // the pools are IPPools of the kubernetes backend
	Delegate *conf.DelegateIPAM // the NAD's own IPAM plugin
}

// Allocated is what the front gave an attachment: the addresses from
// pools, and each delegated NIC's plugin result (by interface name).
type Allocated struct {
	Addrs     []Allocation
	Delegated map[string]*current.Result
}

// KubeBackend is the kubernetes backend as the front drives it (package
// ipam/kubeipam implements it).
type KubeBackend interface {
	// Ledger is the backend's ledger entry as things stand: before
	// Allocate, what a release by pod and sandbox needs; after it, every
	// object the attachment holds.
	Ledger(o Owner) txn.Held
	// Failed is the ledger entry of an ADD that failed: only the objects
	// it created (what the pod held before, it keeps).
	Failed(o Owner) txn.Held
	Allocate(o Owner, reqs []Request) ([]Allocation, error)
	Holds(a netip.Addr) bool
	Quarantine(o Owner, a netip.Addr, until time.Time) error
}

// Allocator is the IPAM stage of an ADD: all of an attachment's addresses,
// from every backend, at once.
type Allocator interface {
	Allocate(needs []Need) (*Allocated, error)
	Quarantine(a netip.Addr, d time.Duration) error
	// Failed readies the ledger for the rollback of a failed ADD.
	Failed()
}

// Front is the one place addresses are allocated. Each backend's
// allocation is recorded in the attachment's journal (its ledger, see
// txn.Held) before it takes effect: the kubernetes backend's by pod and
// sandbox and then by object, each delegated plugin run with its config
// and arguments; the local store's by owner, written with the journal's
// next write, since the store's own owner record is durable before it
// claims anything. So a rollback, a
// DEL and a GC release every kind the same way, by rolling the journal
// back, also after the process was killed at any point.
//
// All or none: when Allocate fails, what it took is in the ledger, and the
// caller's one cleanup path (txn.Rollback of the journal) releases it.
type Front struct {
	Journal *txn.Journal
	Owner   Owner
	Local   *Local
	// Kube is the kubernetes backend; nil when no NIC uses it.
	Kube KubeBackend
	// Path, NetNS and Args are what a delegated plugin runs with (CNI_PATH,
	// CNI_NETNS, CNI_ARGS).
	Path, NetNS, Args string
}

// Allocate allocates every NIC's addresses: the local store's, then the
// kubernetes backend's, then each delegated plugin's.
func (f *Front) Allocate(needs []Need) (*Allocated, error) {
	for _, n := range needs {
		if err := staticsHonoured(n); err != nil {
			return nil, err
		}
	}
	out := &Allocated{Delegated: map[string]*current.Result{}}
	var local, kube []Request
	for _, n := range needs {
		switch {
		case n.Delegate != nil:
		case n.Kube:
			kube = append(kube, n.Request)
		case len(n.Pools) > 0 || len(n.Static) > 0:
			local = append(local, n.Request)
		}
	}
	if len(local) > 0 {
		// written with the journal's next write: until then the store's
		// owner record, on disk before any claim, is what a DEL without
		// journal (and GC) releases by (measured: the ADD's own fsync'd
		// write costs ~2 ms of a ~40 ms ADD here)
		// (one carried from an earlier ADD of the attachment is the same)
		f.Journal.Note(&LocalHeld{Network: f.Owner.Network, ContainerID: f.Owner.ContainerID, IfName: f.Owner.IfName})
		testhook.Point("ledger-local")
		got, err := f.Local.Allocate(f.Owner, local)
		if err != nil {
			return nil, err
		}
		out.Addrs = append(out.Addrs, got...)
	}
	if len(kube) > 0 {
		if f.Kube == nil {
			return nil, errors.New("ipam: a NIC uses the kubernetes backend, which is not set up")
		}
		if err := f.Journal.Hold(f.Kube.Ledger(f.Owner)); err != nil {
			return nil, err
		}
		testhook.Point("ledger-kube")
		got, err := f.Kube.Allocate(f.Owner, kube)
		// the entry names the objects now held (if Allocate failed, it
		// deleted what it created: those the pod held before)
		if herr := f.Journal.Hold(f.Kube.Ledger(f.Owner)); herr != nil && err == nil {
			err = herr
		}
		if err != nil {
			return nil, err
		}
		testhook.Point("ledger-kube-objects")
		out.Addrs = append(out.Addrs, got...)
	}
	for _, n := range needs {
		d := n.Delegate
		if d == nil {
			continue
		}
		cfg, err := withIPs(d.Conf, n.Static)
		if err != nil {
			return nil, err
		}
		op := &Delegated{Type: d.Type, Conf: cfg, Path: f.Path, ContainerID: f.Owner.ContainerID, NetNS: f.NetNS, IfName: n.IfName, Args: f.Args}
		if err := f.Journal.Hold(op); err != nil {
			return nil, err
		}
		testhook.Point("ledger-delegated")
		res, err := op.Add(context.Background())
		if err != nil {
			return nil, &DelegateError{err}
		}
		out.Delegated[n.IfName] = res
		if err := delegatedStatics(n, res); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// staticsHonoured refuses, before anything is allocated, a static address
// that cannot be honoured: one of a family none of the NIC's pools has
// (it used to be ignored).
func staticsHonoured(n Need) error {
	if n.Delegate != nil {
		return nil // the plugin is asked for it, and its result checked
	}
	for _, a := range n.Static {
		if !slices.ContainsFunc(n.Pools, func(p conf.Pool) bool { return p.Is4() == a.Is4() }) {
			fam := "IPv6"
			if a.Is4() {
				fam = "IPv4"
			}
			return fmt.Errorf("ipam: %s: static address %s: the network has no %s pool (%s): %w", n.IfName, a, fam, strings.Join(PoolNames(n.Pools), ", "), ErrStaticOutside)
		}
	}
	return nil
}

// withIPs is a delegated plugin's config asking for the NIC's static
// addresses as CNI's "ips" capability does (runtimeConfig.ips, what
// Multus passes and host-local and static honour).
func withIPs(cfg []byte, static []netip.Addr) ([]byte, error) {
	if len(static) == 0 {
		return cfg, nil
	}
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		return nil, fmt.Errorf("ipam: delegated config: %w", err)
	}
	rc, _ := m["runtimeConfig"].(map[string]any)
	if rc == nil {
		rc = map[string]any{}
	}
	ips := make([]string, len(static))
	for i, a := range static {
		ips[i] = a.String()
	}
	rc["ips"] = ips
	m["runtimeConfig"] = rc
	return json.Marshal(m)
}

// delegatedStatics refuses a delegated plugin's result that lacks a
// static address it was asked for (a plugin without the ips capability
// ignores it): the ADD is rolled back, the plugin's DEL releasing what it
// gave.
func delegatedStatics(n Need, res *current.Result) error {
	for _, a := range n.Static {
		if !slices.ContainsFunc(res.IPs, func(c *current.IPConfig) bool { return c.Address.IP.Equal(a.AsSlice()) }) {
			var got []string
			for _, c := range res.IPs {
				got = append(got, c.Address.String())
			}
			return fmt.Errorf("ipam: %s: static address %s: IPAM plugin %s did not honour it (gave %s; does it take CNI's ips capability?): %w", n.IfName, a, n.Delegate.Type, strings.Join(got, ", "), ErrStaticRefused)
		}
	}
	return nil
}

// DelegateError is the failure of a delegated IPAM plugin's ADD.
type DelegateError struct{ Err error }

func (e *DelegateError) Error() string { return e.Err.Error() }
func (e *DelegateError) Unwrap() error { return e.Err }

// Quarantine keeps a conflicting address away from pods for d, in the
// backend that allocated it.
func (f *Front) Quarantine(a netip.Addr, d time.Duration) error {
	if f.Kube != nil && f.Kube.Holds(a) {
		return f.Kube.Quarantine(f.Owner, a, time.Now().Add(d))
	}
	return f.Local.Quarantine(f.Owner, a, time.Now().Add(d))
}

// Failed makes the kubernetes backend's entry name only what this ADD
// created; the rollback that follows releases that (Journal.Note: if the
// rollback is left incomplete, the journal is saved with it).
func (f *Front) Failed() {
	if f.Kube != nil {
		f.Journal.Note(f.Kube.Failed(f.Owner))
	}
}

// LocalHeld is the ledger entry of the local store: what one owner (an
// attachment) holds there. The store's owner record lists the addresses;
// releasing is by owner, so the entry is the same before and after the
// allocation and a process killed in between leaves nothing a rollback
// cannot free.
type LocalHeld struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

func (o *LocalHeld) Kind() string    { return "ipam.local" }
func (o *LocalHeld) HeldKey() string { return "ipam.local" }
func (o *LocalHeld) String() string {
	return fmt.Sprintf("addresses of %s:%s in the local store", o.ContainerID, o.IfName)
}

// Do does nothing: the allocation runs in the front, after this entry is
// journaled.
func (o *LocalHeld) Do(*txn.Env) error { return nil }

// Undo releases the owner's addresses (none held: nothing to do).
func (o *LocalHeld) Undo(env *txn.Env) error {
	if env.StateDir == "" {
		return errors.New("no state dir to release from")
	}
	return NewLocal(env.StateDir).Release(o.ContainerID, o.IfName)
}

// Check does nothing: the NIC's address steps report the addresses.
func (o *LocalHeld) Check(*txn.Env) error { return nil }
