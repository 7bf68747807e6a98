// Package kubeipam is spinneret's kubernetes IPAM backend: IPPool objects
// are the pools, and one IPAllocation object per address is the
// allocation (see Backend).
package kubeipam

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/testhook"
	"github.com/spinneret-cni/spinneret/ipam"
)

// How it works. Pools are IPPool objects; an allocation is one
// IPAllocation object per address, named from pool and address, so
// creating it is the allocation: two pods racing for one address get a 409
// from the API server, and no shared object is compared-and-swapped (the
// model of Kubernetes' own ClusterIP allocator, KEP-1880). An ADD lists
// what the pod already holds (one request, by label) and creates one
// object per address: two requests per address when the node's cached
// IPPool and ReservedIP lists and its view of the pool are fresh. The
// view is the node's own blocks of the pool, not the whole pool (see
// view.go), so what an allocation reads does not grow with the pool or
// the nodes, and nodes seldom pick the same address.
//
// The plugin's CNI path uses the project's small REST client (no client-go)
// and these lean mirrors of the v1alpha1 types (kept in step by a test).

const (
	apiGroup       = "/apis/spinneret.io/v1alpha1"
	LabelPool      = "spinneret.io/pool"
	LabelPodUID    = "spinneret.io/pod-uid"
	LabelNode      = "spinneret.io/node"
	LabelPod       = "spinneret.io/pod"
	OwnerKindSTS   = "StatefulSet"
	maxCreateTries = 64
)

// PodRef names a pod by namespace, name and UID.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// AllocSpec mirrors v1alpha1.IPAllocationSpec.
type AllocSpec struct {
	Pool             string     `json:"pool"`
	Address          string     `json:"address"`
	Pod              PodRef     `json:"pod"`
	ContainerID      string     `json:"containerID"`
	Interface        string     `json:"interface"`
	Node             string     `json:"node"`
	OwnerKind        string     `json:"ownerKind,omitempty"`
	QuarantinedUntil *time.Time `json:"quarantinedUntil,omitempty"`
}

// Alloc mirrors v1alpha1.IPAllocation.
type Alloc struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Metadata   kube.Meta `json:"metadata"`
	Spec       AllocSpec `json:"spec"`
}

// Addr is the allocation's address (invalid if the object is malformed).
func (a *Alloc) Addr() netip.Addr {
	ad, _ := netip.ParseAddr(a.Spec.Address)
	return ad
}

// Quarantined reports whether the address waits out a conflict at now.
func (a *Alloc) Quarantined(now time.Time) bool {
	return a.Spec.QuarantinedUntil != nil && now.Before(*a.Spec.QuarantinedUntil)
}

// labelSelector mirrors metav1.LabelSelector.
type labelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values,omitempty"`
	} `json:"matchExpressions,omitempty"`
}

// Matches reports whether labels satisfy the selector (nil matches all).
func (s *labelSelector) Matches(labels map[string]string) bool {
	if s == nil {
		return true
	}
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, ok := labels[e.Key]
		switch e.Operator {
		case "In":
			if !ok || !slices.Contains(e.Values, v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(e.Values, v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// ippoolObj mirrors v1alpha1.IPPool (what the plugin reads of it).
type ippoolObj struct {
	Metadata kube.Meta `json:"metadata"`
	Spec     struct {
		NodeAffinity      *labelSelector `json:"nodeAffinity,omitempty"`
		NamespaceAffinity *labelSelector `json:"namespaceAffinity,omitempty"`
		PodAffinity       *labelSelector `json:"podAffinity,omitempty"`
		Default           bool           `json:"default,omitempty"`
		Disabled          bool           `json:"disabled,omitempty"`
	} `json:"spec"`
	RawSpec json.RawMessage `json:"-"`
}

// ippool is a validated IPPool.
type ippool struct {
	conf.Pool
	obj ippoolObj
	err error // the spec is invalid: the pool is unusable, with this reason
}

// poolCache is what the node keeps of the cluster's IPPools and ReservedIPs.
type poolCache struct {
	Fetched  time.Time         `json:"fetched"`
	Pools    []json.RawMessage `json:"pools"`
	Reserved []string          `json:"reserved"`
}

// Pod is the pod an ADD works for.
type Pod struct {
	PodRef
	Labels    map[string]string
	OwnerKind string
}

// Backend is the kubernetes IPAM backend for one CNI invocation.
type Backend struct {
	c        *kube.Client
	ctx      context.Context
	node     string
	cache    string
	viewDir  string // the node views of the pools
	ttl      time.Duration
	pod      Pod
	now      func() time.Time
	rnd      *rand.Rand
	pools    map[string]*ippool
	reserved []netip.Prefix
	fetched  bool
	nsMeta   *kube.Meta
	nodeMeta *kube.Meta
	// created are the objects this invocation created, by address; held
	// those and the ones it took over
	created, held map[netip.Addr]*Alloc
	// mine are the allocations of pods of this pod's name (podAllocs),
	// once mineRead
	mine     []*Alloc
	mineRead bool
	// views are the node's views of pools' allocations, by pool
	views map[string]*poolView
	cands map[string]poolCandidates
	// allocated is set once Allocate ran: the ledger then lists objects
	allocated bool
	// Conflicts counts creates answered 409 (for benchmarks).
	Conflicts int
}

// New returns the backend for pod on node. The IPPool and ReservedIP
// lists are cached under stateDir for ttl (0: read on every ADD).
func New(ctx context.Context, c *kube.Client, stateDir, node string, ttl time.Duration, pod Pod) *Backend {
	return &Backend{c: c, ctx: ctx, node: node, ttl: ttl, pod: pod, now: time.Now,
		cache:   statedir.KubePoolCache(stateDir),
		viewDir: viewsDir(stateDir),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), uint64(time.Now().UnixNano()))),
		created: map[netip.Addr]*Alloc{}, held: map[netip.Addr]*Alloc{}}
}

// viewsDir is where the node's views of the pools are kept ("": none).
func viewsDir(stateDir string) string {
	if stateDir == "" {
		return ""
	}
	return statedir.KubeViews(stateDir)
}

// AllocName is the IPAllocation name of an address of a pool: the pool's
// name, '.', the address (IPv6 written in full with '-' for ':').
func AllocName(pool string, a netip.Addr) string {
	if a.Is4() {
		return pool + "." + a.String()
	}
	return pool + "." + strings.ReplaceAll(a.StringExpanded(), ":", "-")
}

func allocPath(name string) string { return apiGroup + "/ipallocations/" + url.PathEscape(name) }

// loadPools reads the IPPools and ReservedIPs, from the node's cache when it
// is fresh and holds every pool named in want.
func (k *Backend) loadPools(want []string) error {
	if k.fetched && k.hasAll(want) {
		return nil
	}
	if !k.fetched && k.ttl > 0 {
		if k.readCache(want) {
			return nil
		}
		// one refresh at a time on the node: pods started together wait
		// for it instead of all listing the same objects
		if err := os.MkdirAll(filepath.Dir(k.cache), 0o700); err != nil {
			return fmt.Errorf("ipam: %w", err)
		}
		l, err := fileutil.LockFile(k.cache + ".lock")
		if err != nil {
			return fmt.Errorf("ipam: %w", err)
		}
		defer l.Unlock()
		if k.readCache(want) {
			return nil
		}
	}
	pools, err := kube.List[json.RawMessage](k.ctx, k.c, apiGroup+"/ippools", "")
	if err != nil {
		return fmt.Errorf("ipam: list IPPools: %w", err)
	}
	reserved, err := kube.List[struct {
		Spec struct {
			Addresses []string `json:"addresses"`
		} `json:"spec"`
	}](k.ctx, k.c, apiGroup+"/reservedips", "")
	if err != nil {
		return fmt.Errorf("ipam: list ReservedIPs: %w", err)
	}
	pc := poolCache{Fetched: k.now(), Pools: pools}
	for _, r := range reserved {
		pc.Reserved = append(pc.Reserved, r.Spec.Addresses...)
	}
	k.setPools(&pc)
	if k.ttl > 0 {
		if b, err := json.Marshal(&pc); err == nil {
			_ = fileutil.WriteAtomicUnsynced(k.cache, b) // a hint: not synced
		}
	}
	return nil
}

// readCache uses the node's cached lists if they are fresh and name every
// pool in want.
func (k *Backend) readCache(want []string) bool {
	b, err := os.ReadFile(k.cache)
	if err != nil {
		return false
	}
	var pc poolCache
	if json.Unmarshal(b, &pc) != nil || k.now().Sub(pc.Fetched) >= k.ttl || k.now().Before(pc.Fetched.Add(-time.Second)) {
		return false
	}
	k.setPools(&pc)
	return k.hasAll(want)
}

func (k *Backend) hasAll(names []string) bool {
	for _, n := range names {
		if _, ok := k.pools[n]; !ok {
			return false
		}
	}
	return true
}

func (k *Backend) setPools(pc *poolCache) {
	k.fetched = true
	k.pools = map[string]*ippool{}
	for _, raw := range pc.Pools {
		var obj ippoolObj
		var spec struct {
			Spec json.RawMessage `json:"spec"`
		}
		if json.Unmarshal(raw, &obj) != nil || json.Unmarshal(raw, &spec) != nil {
			continue
		}
		kp := &ippool{obj: obj}
		p, err := conf.PoolFromSpec(obj.Metadata.Name, spec.Spec)
		if err != nil {
			kp.err = err
			kp.Pool = conf.Pool{Name: obj.Metadata.Name}
		} else {
			kp.Pool = *p
		}
		k.pools[obj.Metadata.Name] = kp
	}
	k.reserved = nil
	for _, s := range pc.Reserved {
		if p, err := netip.ParsePrefix(s); err == nil {
			k.reserved = append(k.reserved, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			k.reserved = append(k.reserved, netip.PrefixFrom(a, a.BitLen()))
		}
	}
}

func (k *Backend) isReserved(a netip.Addr) bool {
	return slices.ContainsFunc(k.reserved, func(p netip.Prefix) bool { return p.Contains(a) })
}

func (k *Backend) namespace() (*kube.Meta, error) {
	if k.nsMeta == nil {
		m, err := k.c.GetMeta(k.ctx, "/api/v1/namespaces/"+url.PathEscape(k.pod.Namespace))
		if err != nil {
			return nil, fmt.Errorf("ipam: %w", err)
		}
		k.nsMeta = m
	}
	return k.nsMeta, nil
}

// Namespace annotations naming a namespace's default pools for the pod's
// first NIC (JSON lists of IPPool names).
const (
	AnnotNSDefaultV4 = "spinneret.io/default-ipv4-ippools"
	AnnotNSDefaultV6 = "spinneret.io/default-ipv6-ippools"
)

// Selection is what one NIC asks of the kubernetes backend.
type Selection struct {
	IfName string
	// Primary: the pod's first NIC, the one namespace defaults apply to.
	Primary bool
	// Annotated: spinneret.io/ippools names this NIC's pools, per family.
	Annotated      bool
	Annot4, Annot6 []string
	// Network are the network's IPPools.
	Network []string
}

// Select chooses a NIC's pools, in the order of the first rule that names
// any: the pod's spinneret.io/ippools annotation, the namespace's default
// pools (first NIC only), the network's ippools, the cluster's default
// pools. Disabled pools and pools whose node, namespace or pod affinity
// does not admit the pod are dropped; a family left without a pool is an
// error that says why each was refused.
func (k *Backend) Select(s Selection) ([]conf.Pool, error) {
	var lists []namedPools
	var source string
	var err error
	switch {
	case s.Annotated:
		source = "spinneret.io/ippools"
		lists = []namedPools{{s.Annot4, 4}, {s.Annot6, 6}}
	case s.Primary:
		if lists, err = k.nsDefaults(); err != nil {
			return nil, err
		}
		source = "namespace " + k.pod.Namespace + "'s default pools"
	}
	switch {
	case lists != nil:
	case len(s.Network) > 0:
		source = "the network's ippools"
		lists = []namedPools{{s.Network, 0}}
	default:
		source = "the cluster's default pools"
		if err := k.loadPools(nil); err != nil {
			return nil, err
		}
		var names []string
		for n, p := range k.pools {
			if p.obj.Spec.Default {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if len(names) == 0 {
			return nil, fmt.Errorf("ipam: %s: no pool is named (pod annotation, namespace, network) and no IPPool is a default pool", s.IfName)
		}
		lists = []namedPools{{names, 0}}
	}
	var all []string
	for _, l := range lists {
		all = append(all, l.names...)
	}
	if err := k.loadPools(all); err != nil {
		return nil, err
	}
	var out []conf.Pool
	var refused []string
	fams := map[int]bool{}
	for _, l := range lists {
		for _, name := range l.names {
			kp, ok := k.pools[name]
			if !ok {
				return nil, fmt.Errorf("ipam: %s: IPPool %q (from %s) does not exist", s.IfName, name, source)
			}
			if kp.err != nil {
				refused = append(refused, fmt.Sprintf("%s: %v", name, kp.err))
				continue
			}
			fam := 6
			if kp.Is4() {
				fam = 4
			}
			if l.family != 0 && l.family != fam {
				return nil, fmt.Errorf("ipam: %s: IPPool %q (from %s) is not an IPv%d pool", s.IfName, name, source, l.family)
			}
			fams[fam] = true
			why, err := k.refuses(kp)
			if err != nil {
				return nil, err
			}
			if why != "" {
				refused = append(refused, name+": "+why)
				continue
			}
			out = append(out, kp.Pool)
		}
	}
	for _, fam := range []int{4, 6} {
		if fams[fam] && !slices.ContainsFunc(out, func(p conf.Pool) bool { return p.Is4() == (fam == 4) }) {
			return nil, fmt.Errorf("ipam: %s: no IPv%d pool from %s admits pod %s/%s on node %s (%s)", s.IfName, fam, source, k.pod.Namespace, k.pod.Name, k.node, strings.Join(refused, "; "))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ipam: %s: no pool from %s admits pod %s/%s (%s)", s.IfName, source, k.pod.Namespace, k.pod.Name, strings.Join(refused, "; "))
	}
	return out, nil
}

type namedPools struct {
	names  []string
	family int // 4, 6, or 0: either
}

// nsDefaults reads the namespace's default pools; nil if it names none.
func (k *Backend) nsDefaults() ([]namedPools, error) {
	ns, err := k.namespace()
	if err != nil {
		return nil, err
	}
	var out []namedPools
	for _, d := range []struct {
		key string
		fam int
	}{{AnnotNSDefaultV4, 4}, {AnnotNSDefaultV6, 6}} {
		v, ok := ns.Annotations[d.key]
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		var names []string
		if err := json.Unmarshal([]byte(v), &names); err != nil {
			return nil, fmt.Errorf("ipam: namespace %s: annotation %s: %q is not a JSON list of IPPool names", k.pod.Namespace, d.key, v)
		}
		out = append(out, namedPools{names, d.fam})
	}
	return out, nil
}

// refuses says why a pool does not admit the pod ("" if it does).
func (k *Backend) refuses(kp *ippool) (string, error) {
	sp := kp.obj.Spec
	if sp.Disabled {
		return "disabled", nil
	}
	if !sp.PodAffinity.Matches(k.pod.Labels) {
		return "pod affinity does not match the pod's labels", nil
	}
	if sp.NamespaceAffinity != nil {
		ns, err := k.namespace()
		if err != nil {
			return "", err
		}
		if !sp.NamespaceAffinity.Matches(ns.Labels) {
			return "namespace " + k.pod.Namespace + " is not admitted", nil
		}
	}
	if sp.NodeAffinity != nil {
		if k.nodeMeta == nil {
			m, err := k.c.GetMeta(k.ctx, "/api/v1/nodes/"+url.PathEscape(k.node))
			if err != nil {
				return "", fmt.Errorf("ipam: %w", err)
			}
			k.nodeMeta = m
		}
		if !sp.NodeAffinity.Matches(k.nodeMeta.Labels) {
			return "node affinity does not match node " + k.node, nil
		}
	}
	return "", nil
}

// podLabel is the value of LabelPod for a pod: a hash of its namespace and
// name (label values are at most 63 characters; names are longer).
func podLabel(namespace, name string) string {
	h := fnv.New64a()
	h.Write([]byte(namespace + "/" + name))
	return fmt.Sprintf("%016x", h.Sum64())
}

// podAllocs lists, once per invocation, the allocations of every pod of
// this pod's namespace and name: a StatefulSet pod's own and its
// predecessors' (it takes them over, from any node). A small answer (the
// API server filters by label), but the API server reads every
// allocation to give it.
func (k *Backend) podAllocs() ([]*Alloc, error) {
	if k.mineRead {
		return k.mine, nil
	}
	mine, err := kube.ListCached[*Alloc](k.ctx, k.c, apiGroup+"/ipallocations", LabelPod+"="+podLabel(k.pod.Namespace, k.pod.Name))
	if err != nil {
		return nil, fmt.Errorf("ipam: list allocations of pod %s/%s: %w", k.pod.Namespace, k.pod.Name, err)
	}
	k.mine, k.mineRead = mine, true
	return k.mine, nil
}

// Allocate gives each NIC one address per address family of its pools (the
// candidates Select chose, in order), or the static addresses it asks for.
// It is idempotent per (pod UID, interface): what the pod already holds is
// handed back (and recorded for this sandbox), and a StatefulSet pod takes
// over the address its predecessor of the same name held. All or none: on
// failure the objects this call created are deleted.
func (k *Backend) Allocate(o ipam.Owner, reqs []ipam.Request) ([]ipam.Allocation, error) {
	k.allocated = true
	var out []ipam.Allocation
	for _, r := range reqs {
		for _, fam := range ipam.Families(r.Pools) {
			a, err := k.allocateOne(o, r, fam)
			if err != nil {
				k.Undo()
				return nil, err
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// Undo deletes the objects this invocation created (and did not
// quarantine).
func (k *Backend) Undo() error {
	var errs []error
	var freed []string
	defer func() { noteReleased(k.viewDir, freed, k.now()) }()
	for a, obj := range k.created {
		err := k.c.Delete(k.ctx, allocPath(obj.Metadata.Name), obj.Metadata.UID, "")
		if err == nil || kube.IsStatus(err, http.StatusNotFound) {
			freed = append(freed, obj.Metadata.Name)
			delete(k.created, a)
			delete(k.held, a)
		} else {
			errs = append(errs, fmt.Errorf("ipam: delete IPAllocation %s: %w", obj.Metadata.Name, err))
		}
	}
	return errors.Join(errs...)
}

func allocation(ifname string, p *conf.Pool, obj *Alloc) ipam.Allocation {
	a := obj.Addr()
	return ipam.Allocation{IfName: ifname, Pool: p.Name, Address: netip.PrefixFrom(a, p.Subnet.Bits()), Gateway: p.Gateway,
		Object: &ipam.KubeRef{Name: obj.Metadata.Name, ResourceVersion: obj.Metadata.ResourceVersion, Sticky: obj.Spec.OwnerKind == OwnerKindSTS}}
}

func (k *Backend) allocateOne(o ipam.Owner, r ipam.Request, fam []conf.Pool) (ipam.Allocation, error) {
	var static netip.Addr
	for _, st := range r.Static {
		if st.Is4() == fam[0].Is4() {
			static = st
		}
	}
	// what the pod (or, for a StatefulSet, its predecessor) already holds
	if obj, p, err := k.holding(o, r.IfName, fam, static); err != nil || obj != nil {
		if err != nil {
			return ipam.Allocation{}, err
		}
		k.held[obj.Addr()] = obj
		return allocation(r.IfName, p, obj), nil
	}
	if static.IsValid() {
		i := slices.IndexFunc(fam, func(p conf.Pool) bool { return p.Subnet.Contains(static) })
		if i < 0 {
			return ipam.Allocation{}, fmt.Errorf("ipam: %s: static address %s is %w %q", r.IfName, static, ipam.ErrStaticOutside, ipam.PoolNames(fam))
		}
		if err := ipam.RefusedStatic(r.IfName, &fam[i], static); err != nil {
			return ipam.Allocation{}, err
		}
		if k.isReserved(static) {
			return ipam.Allocation{}, fmt.Errorf("ipam: %s: static address %s is reserved: %w", r.IfName, static, ipam.ErrStaticTaken)
		}
		obj, err := k.create(o, r.IfName, &fam[i], static)
		if err == nil && obj == nil && k.pod.OwnerKind != OwnerKindSTS {
			// held: by the pod itself (a new sandbox whose old one's
			// DEL was lost)?
			obj, err = k.takeOver(o, &fam[i], r.IfName, static, &Alloc{Metadata: kube.Meta{Name: AllocName(fam[i].Name, static)}}, true)
			if obj != nil {
				k.held[obj.Addr()] = obj
			}
		}
		if err != nil {
			return ipam.Allocation{}, err
		}
		if obj == nil {
			return ipam.Allocation{}, fmt.Errorf("ipam: %s: static address %s: %w", r.IfName, static, ipam.ErrStaticTaken)
		}
		return allocation(r.IfName, &fam[i], obj), nil
	}
	for i := range fam {
		p := &fam[i]
		v := k.view(p.Name)
		for tries := 0; tries < maxCreateTries; tries++ {
			seen := k.now()
			a, old, fresh, err := v.pick(k, p, r.IfName)
			if err != nil {
				return ipam.Allocation{}, err
			}
			if !a.IsValid() {
				if fresh {
					break // none free as of a list read just now
				}
				if err := v.refreshSince(k, p, k.now()); err != nil {
					return ipam.Allocation{}, err
				}
				continue
			}
			if old != nil {
				// a quarantine that ran out: its object goes first
				if err := k.c.Delete(k.ctx, allocPath(old.Metadata.Name), "", old.Metadata.ResourceVersion); err != nil &&
					!kube.IsStatus(err, http.StatusNotFound) && !kube.IsStatus(err, http.StatusConflict) {
					return ipam.Allocation{}, fmt.Errorf("ipam: delete expired quarantine %s: %w", old.Metadata.Name, err)
				}
			}
			obj, err := k.create(o, r.IfName, p, a)
			if err != nil {
				return ipam.Allocation{}, err
			}
			if obj != nil {
				return allocation(r.IfName, p, obj), nil
			}
			// taken by another node (or held by an allocation the
			// view does not show): noted, and after a few, the node's
			// blocks read again (unless another ADD of the node just
			// did)
			k.Conflicts++
			if err := v.taken(k, a); err != nil {
				return ipam.Allocation{}, err
			}
			if tries%4 == 3 {
				if err := v.refreshSince(k, p, seen); err != nil {
					return ipam.Allocation{}, err
				}
			}
		}
	}
	return ipam.Allocation{}, fmt.Errorf("ipam: %s: %w", r.IfName, ipam.Exhausted(ipam.PoolNames(fam)))
}

// holding finds what the pod already holds on NIC ifname in the pools of
// fam (static: that address), and takes it over for this sandbox: a
// StatefulSet pod's, or its predecessor's of the same name on any node,
// through the pod label's list; another pod's, which is on this node
// since it started, through the node's view of the pools (no request
// when the view is cached: a list per ADD costs the API server the whole
// resource, every allocation of the cluster, even from its cache). A
// static address is found by its create's 409 instead (allocateOne).
func (k *Backend) holding(o ipam.Owner, ifname string, fam []conf.Pool, static netip.Addr) (*Alloc, *conf.Pool, error) {
	if k.pod.OwnerKind != OwnerKindSTS && static.IsValid() {
		return nil, nil, nil
	}
	var mine []*Alloc
	if k.pod.OwnerKind == OwnerKindSTS {
		var err error
		if mine, err = k.podAllocs(); err != nil {
			return nil, nil, err
		}
	}
	for i := range fam {
		p := &fam[i]
		cands, read := mine, false
		if k.pod.OwnerKind != OwnerKindSTS {
			var err error
			if cands, err = k.view(p.Name).own(k, p, ifname); err != nil {
				return nil, nil, err
			}
			read = true
		}
		for _, it := range cands {
			// the view's items are what picking needs, and the pod UID
			// and NIC of the node's own: read fully before the take-over
			if read && !p.Subnet.Contains(it.Addr()) || !read && !k.podHolds(it, p, ifname, static) {
				continue
			}
			obj, err := k.takeOver(o, p, ifname, static, it, read)
			if err != nil || obj != nil {
				return obj, p, err
			}
		}
	}
	return nil, nil, nil
}

// takeOver takes allocation it over for this sandbox if it still is the
// pod's address of pool p on ifname (nil if it is not, or is gone). it is
// a hint, from the API server's cache or the node's view: read says to
// read it first (it is always read when the take-over would be no write
// at all, which would otherwise confirm nothing).
func (k *Backend) takeOver(o ipam.Owner, p *conf.Pool, ifname string, static netip.Addr, it *Alloc, read bool) (*Alloc, error) {
	get := func() (*Alloc, error) {
		var fresh Alloc
		if err := k.c.Get(k.ctx, allocPath(it.Metadata.Name), &fresh); kube.IsStatus(err, http.StatusNotFound) {
			return nil, nil
		} else if err != nil {
			return nil, fmt.Errorf("ipam: %s: read %s: %w", ifname, it.Metadata.Name, err)
		}
		if !k.podHolds(&fresh, p, ifname, static) {
			return nil, nil
		}
		return &fresh, nil
	}
	if read || k.same(o, it) {
		fresh, err := get()
		if fresh == nil {
			return nil, err
		}
		it = fresh
	}
	obj, err := k.adopt(o, p, ifname, it)
	switch {
	case kube.IsStatus(err, http.StatusNotFound):
		return nil, nil // deleted since it was read (a DEL of the pod's last sandbox just before this ADD)
	case kube.IsStatus(err, http.StatusConflict):
		// changed since it was read: take it over only if it still is
		// the pod's
		fresh, err := get()
		if fresh == nil {
			return nil, err
		}
		return k.adopt(o, p, ifname, fresh)
	}
	return obj, err
}

// podHolds reports whether allocation it is the pod's (or, for a
// StatefulSet pod, its predecessor's) address of pool p on ifname, as a
// new sandbox of the pod takes over: not quarantined, still inside the
// pool, and the static address if one is asked for.
func (k *Backend) podHolds(it *Alloc, p *conf.Pool, ifname string, static netip.Addr) bool {
	if it.Spec.Pool != p.Name || it.Spec.Interface != ifname || it.Spec.QuarantinedUntil != nil {
		return false
	}
	heir := k.pod.OwnerKind == OwnerKindSTS && it.Spec.OwnerKind == OwnerKindSTS
	if it.Spec.Pod.UID != k.pod.UID && !heir {
		return false // a stateless pod of the same name: not ours
	}
	if !heir && it.Spec.Node != k.node {
		return false // a pod other than a StatefulSet's never moves: another node's object naming it is not the pod's
	}
	a := it.Addr()
	// the pool or the request changed: allocate anew
	return p.Subnet.Contains(a) && (!static.IsValid() || a == static)
}

// adopt records this sandbox (and node, and pod UID for a StatefulSet
// heir) on an allocation the pod already holds.
func (k *Backend) adopt(o ipam.Owner, p *conf.Pool, ifname string, it *Alloc) (*Alloc, error) {
	if k.same(o, it) {
		return it, nil
	}
	upd := *it
	upd.APIVersion, upd.Kind = "spinneret.io/v1alpha1", "IPAllocation"
	upd.Spec.Pod = k.pod.PodRef
	upd.Spec.ContainerID, upd.Spec.Node, upd.Spec.OwnerKind = o.ContainerID, k.node, k.pod.OwnerKind
	upd.Metadata.Labels = k.labels(p, it.Addr())
	var got Alloc
	if err := k.c.Update(k.ctx, allocPath(it.Metadata.Name), &upd, &got); err != nil {
		return nil, fmt.Errorf("ipam: %s: take over %s: %w", ifname, it.Metadata.Name, err)
	}
	return &got, nil
}

// same reports whether it already is this sandbox's (a repeated ADD).
func (k *Backend) same(o ipam.Owner, it *Alloc) bool {
	return it.Spec.Pod.UID == k.pod.UID && it.Spec.ContainerID == o.ContainerID && it.Spec.Node == k.node
}

// labels are an allocation's labels: its pool, block, node and pod.
func (k *Backend) labels(p *conf.Pool, a netip.Addr) map[string]string {
	return map[string]string{LabelPool: p.Name, LabelBlock: BlockLabel(BlockOf(p.Subnet, a)), LabelNode: nodeLabel(k.node),
		LabelPodUID: k.pod.UID, LabelPod: podLabel(k.pod.Namespace, k.pod.Name)}
}

// create creates the allocation object of address a; nil if it exists.
func (k *Backend) create(o ipam.Owner, ifname string, p *conf.Pool, a netip.Addr) (*Alloc, error) {
	obj := &Alloc{APIVersion: "spinneret.io/v1alpha1", Kind: "IPAllocation",
		Metadata: kube.Meta{Name: AllocName(p.Name, a), Labels: k.labels(p, a)},
		Spec: AllocSpec{Pool: p.Name, Address: a.String(), Pod: k.pod.PodRef, ContainerID: o.ContainerID,
			Interface: ifname, Node: k.node, OwnerKind: k.pod.OwnerKind}}
	var got Alloc
	err := k.c.Create(k.ctx, apiGroup+"/ipallocations", obj, &got)
	switch {
	case kube.IsStatus(err, http.StatusConflict):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("ipam: create IPAllocation %s: %w", obj.Metadata.Name, err)
	}
	k.created[a], k.held[a] = &got, &got
	testhook.Point("kube-created")
	return &got, nil
}

// maxRangeSize caps rangeSize: a range (or a pool) at least this large is
// sampled at random offsets below it, all inside the range.
const maxRangeSize = 1 << 62

// rangeSize is how many addresses a range holds, capped at maxRangeSize:
// end - start + 1 in 128 bits (a range may cross a 64-bit boundary and
// still be small).
func rangeSize(r conf.Range) uint64 {
	s, e := r.Start.As16(), r.End.As16()
	hiS, loS := binary.BigEndian.Uint64(s[:8]), binary.BigEndian.Uint64(s[8:])
	hiE, loE := binary.BigEndian.Uint64(e[:8]), binary.BigEndian.Uint64(e[8:])
	lo, borrow := bits.Sub64(loE, loS, 0)
	hi, _ := bits.Sub64(hiE, hiS, borrow)
	if hi != 0 || lo >= maxRangeSize-1 {
		return maxRangeSize
	}
	return lo + 1
}

// poolSize is how many addresses a pool's ranges hold, capped at
// maxRangeSize (a sum that cannot wrap: four ranges of 2^62 once summed
// to 0 and made a huge pool look small enough to list).
func poolSize(rs []conf.Range) uint64 {
	var total uint64
	for _, r := range rs {
		total += rangeSize(r)
		if total >= maxRangeSize {
			return maxRangeSize
		}
	}
	return total
}

// addrAdd returns a + off.
func addrAdd(a netip.Addr, off uint64) netip.Addr {
	b := a.As16()
	carry := off
	for i := 15; i >= 0 && carry > 0; i-- {
		sum := uint64(b[i]) + carry&0xff
		b[i] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	out := netip.AddrFrom16(b)
	if a.Is4() {
		out = out.Unmap()
	}
	return out
}

// Holds reports whether this invocation allocated a (created or took over
// its object).
func (k *Backend) Holds(a netip.Addr) bool { _, ok := k.held[a]; return ok }

// Quarantine keeps address a (allocated by this call) away from pods until
// the given time: its object stays, detached from the pod and sandbox, so
// no release frees it; once the time is up the next allocation that picks
// it (or the controller) deletes it.
func (k *Backend) Quarantine(o ipam.Owner, a netip.Addr, until time.Time) error {
	obj, ok := k.held[a]
	if !ok {
		return fmt.Errorf("ipam: quarantine %s: not allocated by this ADD", a)
	}
	u := until.UTC().Truncate(time.Second)
	patch := map[string]any{
		"metadata": map[string]any{"labels": map[string]any{LabelPodUID: nil}},
		"spec":     map[string]any{"quarantinedUntil": u, "containerID": ""},
	}
	if err := k.c.MergePatch(k.ctx, allocPath(obj.Metadata.Name), patch, nil); err != nil {
		return fmt.Errorf("ipam: quarantine %s: %w", a, err)
	}
	delete(k.created, a)
	delete(k.held, a)
	return nil
}

// Release deletes the allocations of one sandbox of a pod: those whose
// pod UID and container ID are both the given ones, except a StatefulSet
// pod's (its successor of the same name takes them over). A new pod's (or a new
// sandbox's) address is never freed by an old one's late DEL. It returns
// how many it deleted, and notes them in the node's views (stateDir: ""
// for none).
func Release(ctx context.Context, c *kube.Client, stateDir, podUID, containerID string) (int, error) {
	items, err := kube.List[*Alloc](ctx, c, apiGroup+"/ipallocations", LabelPodUID+"="+podUID)
	if err != nil {
		return 0, fmt.Errorf("ipam: list allocations of pod %s: %w", podUID, err)
	}
	var freed []string
	defer func() { noteReleased(viewsDir(stateDir), freed, time.Now()) }()
	for _, it := range items {
		if it.Spec.Pod.UID != podUID || it.Spec.ContainerID != containerID || it.Spec.QuarantinedUntil != nil {
			continue
		}
		if it.Spec.OwnerKind == OwnerKindSTS {
			continue // kept for the pod's successor; the controller frees scaled-away ordinals
		}
		err := c.Delete(ctx, allocPath(it.Metadata.Name), it.Metadata.UID, it.Metadata.ResourceVersion)
		switch {
		case err == nil:
			freed = append(freed, it.Metadata.Name)
		case kube.IsStatus(err, http.StatusNotFound), kube.IsStatus(err, http.StatusConflict):
			// gone, or taken over meanwhile: not ours any more
		default:
			return len(freed), fmt.Errorf("ipam: release %s: %w", it.Metadata.Name, err)
		}
	}
	return len(freed), nil
}

// ReleaseRefs deletes the allocations an ADD recorded, each only if it
// is still the version that ADD left (a new pod's or sandbox's take-over
// changes it), and never a StatefulSet pod's. It returns how many it
// deleted, and notes them in the node's views (stateDir: "" for none).
func ReleaseRefs(ctx context.Context, c *kube.Client, stateDir string, refs []ipam.KubeRef) (int, error) {
	var freed []string
	defer func() { noteReleased(viewsDir(stateDir), freed, time.Now()) }()
	for _, r := range refs {
		if r.Sticky {
			continue
		}
		err := c.Delete(ctx, allocPath(r.Name), "", r.ResourceVersion)
		switch {
		case err == nil:
			freed = append(freed, r.Name)
		case kube.IsStatus(err, http.StatusNotFound), kube.IsStatus(err, http.StatusConflict):
		default:
			return len(freed), fmt.Errorf("ipam: release %s: %w", r.Name, err)
		}
	}
	return len(freed), nil
}
