package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
)

// The kubernetes backend. Pools are IPPool objects; an allocation is one
// IPAllocation object per address, named from pool and address, so
// creating it is the allocation: two pods racing for one address get a 409
// from the API server, and no shared object is compared-and-swapped (the
// model of Kubernetes' own ClusterIP allocator, KEP-1880). An ADD lists the
// allocations of the pools it draws from (one request per pool, which also
// finds what the pod already holds) and creates one object per address:
// two requests per address when the node's cached IPPool and ReservedIP
// lists are fresh. Addresses are picked at random among the free ones, so
// concurrent ADDs on many nodes seldom pick the same one.
//
// The plugin's CNI path uses the project's small REST client (no client-go)
// and these lean mirrors of the v1alpha1 types (kept in step by a test).

const (
	apiGroup       = "/apis/spinneret.io/v1alpha1"
	LabelPool      = "spinneret.io/pool"
	LabelPodUID    = "spinneret.io/pod-uid"
	LabelNode      = "spinneret.io/node"
	OwnerKindSTS   = "StatefulSet"
	maxCreateTries = 64
)

// KubePodRef names a pod by namespace, name and UID.
type KubePodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// KubeAllocSpec mirrors v1alpha1.IPAllocationSpec.
type KubeAllocSpec struct {
	Pool             string     `json:"pool"`
	Address          string     `json:"address"`
	Pod              KubePodRef `json:"pod"`
	ContainerID      string     `json:"containerID"`
	Interface        string     `json:"interface"`
	Node             string     `json:"node"`
	OwnerKind        string     `json:"ownerKind,omitempty"`
	QuarantinedUntil *time.Time `json:"quarantinedUntil,omitempty"`
}

// KubeAlloc mirrors v1alpha1.IPAllocation.
type KubeAlloc struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Metadata   kube.Meta     `json:"metadata"`
	Spec       KubeAllocSpec `json:"spec"`
}

// Addr is the allocation's address (invalid if the object is malformed).
func (a *KubeAlloc) Addr() netip.Addr {
	ad, _ := netip.ParseAddr(a.Spec.Address)
	return ad
}

// Quarantined reports whether the address waits out a conflict at now.
func (a *KubeAlloc) Quarantined(now time.Time) bool {
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

// kubePoolObj mirrors v1alpha1.IPPool (what the plugin reads of it).
type kubePoolObj struct {
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

// kubePool is a validated IPPool.
type kubePool struct {
	conf.Pool
	obj kubePoolObj
	err error // the spec is invalid: the pool is unusable, with this reason
}

// poolCache is what the node keeps of the cluster's IPPools and ReservedIPs.
type poolCache struct {
	Fetched  time.Time         `json:"fetched"`
	Pools    []json.RawMessage `json:"pools"`
	Reserved []string          `json:"reserved"`
}

// KubePod is the pod an ADD works for.
type KubePod struct {
	KubePodRef
	Labels    map[string]string
	OwnerKind string
}

// Kube is the kubernetes IPAM backend for one CNI invocation.
type Kube struct {
	c        *kube.Client
	ctx      context.Context
	node     string
	cache    string
	ttl      time.Duration
	pod      KubePod
	now      func() time.Time
	rnd      *rand.Rand
	pools    map[string]*kubePool
	reserved []netip.Prefix
	fetched  bool
	nsMeta   *kube.Meta
	nodeMeta *kube.Meta
	// created are the objects this invocation created, by address
	created map[netip.Addr]*KubeAlloc
	// Conflicts counts creates answered 409 (for benchmarks).
	Conflicts int
}

// NewKube returns the backend for pod on node. The IPPool and ReservedIP
// lists are cached under stateDir for ttl (0: read on every ADD).
func NewKube(ctx context.Context, c *kube.Client, stateDir, node string, ttl time.Duration, pod KubePod) *Kube {
	return &Kube{c: c, ctx: ctx, node: node, ttl: ttl, pod: pod, now: time.Now,
		cache:   filepath.Join(stateDir, "ipam", "kube-pools.json"),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), uint64(time.Now().UnixNano()))),
		created: map[netip.Addr]*KubeAlloc{}}
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
func (k *Kube) loadPools(want []string) error {
	if k.fetched && k.hasAll(want) {
		return nil
	}
	if !k.fetched && k.ttl > 0 {
		if b, err := os.ReadFile(k.cache); err == nil {
			var pc poolCache
			if json.Unmarshal(b, &pc) == nil && k.now().Sub(pc.Fetched) < k.ttl && k.now().After(pc.Fetched.Add(-time.Second)) {
				k.setPools(&pc)
				if k.hasAll(want) {
					return nil
				}
			}
		}
	}
	var pl struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := k.c.List(k.ctx, apiGroup+"/ippools", "", &pl); err != nil {
		return fmt.Errorf("ipam: list IPPools: %w", err)
	}
	var rl struct {
		Items []struct {
			Spec struct {
				Addresses []string `json:"addresses"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := k.c.List(k.ctx, apiGroup+"/reservedips", "", &rl); err != nil {
		return fmt.Errorf("ipam: list ReservedIPs: %w", err)
	}
	pc := poolCache{Fetched: k.now(), Pools: pl.Items}
	for _, r := range rl.Items {
		pc.Reserved = append(pc.Reserved, r.Spec.Addresses...)
	}
	k.setPools(&pc)
	if k.ttl > 0 {
		if b, err := json.Marshal(&pc); err == nil && os.MkdirAll(filepath.Dir(k.cache), 0o700) == nil {
			_ = fileutil.WriteAtomic(k.cache, b) // a hint: not synced
		}
	}
	return nil
}

func (k *Kube) hasAll(names []string) bool {
	for _, n := range names {
		if _, ok := k.pools[n]; !ok {
			return false
		}
	}
	return true
}

func (k *Kube) setPools(pc *poolCache) {
	k.fetched = true
	k.pools = map[string]*kubePool{}
	for _, raw := range pc.Pools {
		var obj kubePoolObj
		var spec struct {
			Spec json.RawMessage `json:"spec"`
		}
		if json.Unmarshal(raw, &obj) != nil || json.Unmarshal(raw, &spec) != nil {
			continue
		}
		kp := &kubePool{obj: obj}
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

func (k *Kube) isReserved(a netip.Addr) bool {
	return slices.ContainsFunc(k.reserved, func(p netip.Prefix) bool { return p.Contains(a) })
}

func (k *Kube) namespace() (*kube.Meta, error) {
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

// KubeSelect is what one NIC asks of the kubernetes backend.
type KubeSelect struct {
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
func (k *Kube) Select(s KubeSelect) ([]conf.Pool, error) {
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
func (k *Kube) nsDefaults() ([]namedPools, error) {
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
func (k *Kube) refuses(kp *kubePool) (string, error) {
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

// listPool lists a pool's allocations (once per invocation and pool, unless
// fresh is set).
func (k *Kube) listPool(lists map[string][]*KubeAlloc, pool string, fresh bool) ([]*KubeAlloc, error) {
	if l, ok := lists[pool]; ok && !fresh {
		return l, nil
	}
	var al struct {
		Items []*KubeAlloc `json:"items"`
	}
	if err := k.c.List(k.ctx, apiGroup+"/ipallocations", LabelPool+"="+pool, &al); err != nil {
		return nil, fmt.Errorf("ipam: list allocations of IPPool %s: %w", pool, err)
	}
	lists[pool] = al.Items
	return al.Items, nil
}

// Allocate gives each NIC one address per address family of its pools (the
// candidates Select chose, in order), or the static addresses it asks for.
// It is idempotent per (pod UID, interface): what the pod already holds is
// handed back (and recorded for this sandbox), and a StatefulSet pod takes
// over the address its predecessor of the same name held. All or none: on
// failure the objects this call created are deleted.
func (k *Kube) Allocate(o Owner, reqs []Request) ([]Allocation, error) {
	lists := map[string][]*KubeAlloc{}
	var out []Allocation
	for _, r := range reqs {
		for _, fam := range Families(r.Pools) {
			a, err := k.allocateOne(o, r, fam, lists)
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
func (k *Kube) Undo() error {
	var errs []error
	for a, obj := range k.created {
		err := k.c.Delete(k.ctx, allocPath(obj.Metadata.Name), obj.Metadata.UID, "")
		if err == nil || kube.IsStatus(err, http.StatusNotFound) {
			delete(k.created, a)
		} else {
			errs = append(errs, fmt.Errorf("ipam: delete IPAllocation %s: %w", obj.Metadata.Name, err))
		}
	}
	return errors.Join(errs...)
}

func allocation(ifname string, p *conf.Pool, a netip.Addr) Allocation {
	return Allocation{IfName: ifname, Pool: p.Name, Address: netip.PrefixFrom(a, p.Subnet.Bits()), Gateway: p.Gateway}
}

func (k *Kube) allocateOne(o Owner, r Request, fam []conf.Pool, lists map[string][]*KubeAlloc) (Allocation, error) {
	var static netip.Addr
	for _, st := range r.Static {
		if st.Is4() == fam[0].Is4() {
			static = st
		}
	}
	now := k.now()
	// what the pod (or, for a StatefulSet, its predecessor) already holds
	for i := range fam {
		p := &fam[i]
		items, err := k.listPool(lists, p.Name, false)
		if err != nil {
			return Allocation{}, err
		}
		for _, it := range items {
			if it.Spec.Interface != r.IfName || it.Quarantined(now) {
				continue
			}
			mine := it.Spec.Pod.UID == k.pod.UID
			heir := k.pod.OwnerKind == OwnerKindSTS && it.Spec.OwnerKind == OwnerKindSTS &&
				it.Spec.Pod.Namespace == k.pod.Namespace && it.Spec.Pod.Name == k.pod.Name
			if !mine && !heir {
				continue
			}
			a := it.Addr()
			if !p.Subnet.Contains(a) || static.IsValid() && a != static {
				continue // the pool or the request changed: allocate anew
			}
			if err := k.adopt(o, r.IfName, it); err != nil {
				return Allocation{}, err
			}
			return allocation(r.IfName, p, a), nil
		}
	}
	if static.IsValid() {
		i := slices.IndexFunc(fam, func(p conf.Pool) bool { return p.Subnet.Contains(static) })
		if i < 0 {
			return Allocation{}, fmt.Errorf("ipam: %s: static address %s is %w %q", r.IfName, static, ErrStaticOutside, poolNames(fam))
		}
		if k.isReserved(static) {
			return Allocation{}, fmt.Errorf("ipam: %s: static address %s is reserved: %w", r.IfName, static, ErrStaticTaken)
		}
		ok, err := k.create(o, r.IfName, &fam[i], static)
		if err != nil {
			return Allocation{}, err
		}
		if !ok {
			return Allocation{}, fmt.Errorf("ipam: %s: static address %s: %w", r.IfName, static, ErrStaticTaken)
		}
		return allocation(r.IfName, &fam[i], static), nil
	}
	for i := range fam {
		p := &fam[i]
		items, _ := k.listPool(lists, p.Name, false)
		conflicts := 0
		for tries := 0; tries < maxCreateTries; tries++ {
			free, expired := k.free(p, items, now)
			if len(free) == 0 {
				if conflicts == 0 {
					break // truly full as of the list
				}
				// others took addresses since the list: read it again
				var err error
				if items, err = k.listPool(lists, p.Name, true); err != nil {
					return Allocation{}, err
				}
				conflicts = 0
				continue
			}
			a := free[k.rnd.IntN(len(free))]
			if old, ok := expired[a]; ok {
				// a quarantine that ran out: its object goes first
				if err := k.c.Delete(k.ctx, allocPath(old.Metadata.Name), old.Metadata.UID, old.Metadata.ResourceVersion); err != nil &&
					!kube.IsStatus(err, http.StatusNotFound) && !kube.IsStatus(err, http.StatusConflict) {
					return Allocation{}, fmt.Errorf("ipam: delete expired quarantine %s: %w", old.Metadata.Name, err)
				}
			}
			ok, err := k.create(o, r.IfName, p, a)
			if err != nil {
				return Allocation{}, err
			}
			if ok {
				return allocation(r.IfName, p, a), nil
			}
			k.Conflicts++
			conflicts++
			// taken meanwhile: count it as used and pick another
			items = append(items, &KubeAlloc{Spec: KubeAllocSpec{Address: a.String()}})
			if conflicts >= 8 {
				var err error
				if items, err = k.listPool(lists, p.Name, true); err != nil {
					return Allocation{}, err
				}
				conflicts = 0
			}
		}
	}
	return Allocation{}, fmt.Errorf("ipam: %s: %w", r.IfName, &exhaustedError{pools: poolNames(fam)})
}

// adopt records this sandbox (and node, and pod UID for a StatefulSet
// heir) on an allocation the pod already holds.
func (k *Kube) adopt(o Owner, ifname string, it *KubeAlloc) error {
	if it.Spec.Pod.UID == k.pod.UID && it.Spec.ContainerID == o.ContainerID && it.Spec.Node == k.node {
		return nil
	}
	upd := *it
	upd.APIVersion, upd.Kind = "spinneret.io/v1alpha1", "IPAllocation"
	upd.Spec.Pod = k.pod.KubePodRef
	upd.Spec.ContainerID, upd.Spec.Node, upd.Spec.OwnerKind = o.ContainerID, k.node, k.pod.OwnerKind
	upd.Metadata.Labels = k.labels(it.Spec.Pool)
	if err := k.c.Update(k.ctx, allocPath(it.Metadata.Name), &upd, nil); err != nil {
		return fmt.Errorf("ipam: %s: take over %s: %w", ifname, it.Metadata.Name, err)
	}
	return nil
}

func (k *Kube) labels(pool string) map[string]string {
	l := map[string]string{LabelPool: pool, LabelPodUID: k.pod.UID}
	if len(k.node) <= 63 {
		l[LabelNode] = k.node
	}
	return l
}

// create creates the allocation object of address a; false if it exists.
func (k *Kube) create(o Owner, ifname string, p *conf.Pool, a netip.Addr) (bool, error) {
	obj := &KubeAlloc{APIVersion: "spinneret.io/v1alpha1", Kind: "IPAllocation",
		Metadata: kube.Meta{Name: AllocName(p.Name, a), Labels: k.labels(p.Name)},
		Spec: KubeAllocSpec{Pool: p.Name, Address: a.String(), Pod: k.pod.KubePodRef, ContainerID: o.ContainerID,
			Interface: ifname, Node: k.node, OwnerKind: k.pod.OwnerKind}}
	var got KubeAlloc
	err := k.c.Create(k.ctx, apiGroup+"/ipallocations", obj, &got)
	switch {
	case kube.IsStatus(err, http.StatusConflict):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("ipam: create IPAllocation %s: %w", obj.Metadata.Name, err)
	}
	k.created[a] = &got
	return true, nil
}

// smallPool is the size up to which a pool's free addresses are listed in
// full; larger pools are sampled at random.
const smallPool = 1 << 16

// free returns free addresses of p given its allocations: all of them for a
// small pool, a random sample for a large one. expired are allocation
// objects whose quarantine ran out (free, but their object must go first).
func (k *Kube) free(p *conf.Pool, items []*KubeAlloc, now time.Time) ([]netip.Addr, map[netip.Addr]*KubeAlloc) {
	used := make(map[netip.Addr]bool, len(items))
	expired := map[netip.Addr]*KubeAlloc{}
	for _, it := range items {
		a := it.Addr()
		if it.Spec.QuarantinedUntil != nil && !it.Quarantined(now) {
			expired[a] = it
			continue
		}
		used[a] = true
	}
	ok := func(a netip.Addr) bool { return !used[a] && !p.Excluded(a) && !k.isReserved(a) }
	var out []netip.Addr
	var total uint64
	for _, r := range p.Ranges {
		total += rangeSize(r)
	}
	if total <= smallPool {
		for _, r := range p.Ranges {
			for a := r.Start; a.IsValid() && !r.End.Less(a); a = nextCandidate(p, a) {
				if ok(a) {
					out = append(out, a)
				}
			}
		}
		return out, expired
	}
	for tries := 0; tries < 4096 && len(out) < 16; tries++ {
		r := p.Ranges[k.rnd.IntN(len(p.Ranges))]
		a := addrAdd(r.Start, k.rnd.Uint64N(rangeSize(r)))
		if ok(a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, expired
}

// rangeSize is how many addresses a range holds, capped at 1<<62.
func rangeSize(r conf.Range) uint64 {
	const maxSize = 1 << 62
	s, e := r.Start.As16(), r.End.As16()
	var hiS, hiE, loS, loE uint64
	for i := 0; i < 8; i++ {
		hiS, hiE = hiS<<8|uint64(s[i]), hiE<<8|uint64(e[i])
		loS, loE = loS<<8|uint64(s[i+8]), loE<<8|uint64(e[i+8])
	}
	if hiS != hiE || loE-loS >= maxSize {
		return maxSize
	}
	return loE - loS + 1
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

// Quarantine keeps address a (allocated by this call) away from pods until
// the given time: its object stays, detached from the pod and sandbox, so
// no release frees it; once the time is up the next allocation that picks
// it (or the controller) deletes it.
func (k *Kube) Quarantine(o Owner, a netip.Addr, until time.Time) error {
	obj, ok := k.created[a]
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
	return nil
}

// KubeRelease deletes the allocations of one sandbox of a pod: those whose
// pod UID and container ID are both the given ones, except a StatefulSet
// pod's (its successor of the same name takes them over). A new pod's (or a new
// sandbox's) address is never freed by an old one's late DEL. It returns
// how many it deleted.
func KubeRelease(ctx context.Context, c *kube.Client, podUID, containerID string) (int, error) {
	var al struct {
		Items []*KubeAlloc `json:"items"`
	}
	if err := c.List(ctx, apiGroup+"/ipallocations", LabelPodUID+"="+podUID, &al); err != nil {
		return 0, fmt.Errorf("ipam: list allocations of pod %s: %w", podUID, err)
	}
	n := 0
	for _, it := range al.Items {
		if it.Spec.Pod.UID != podUID || it.Spec.ContainerID != containerID || it.Spec.QuarantinedUntil != nil {
			continue
		}
		if it.Spec.OwnerKind == OwnerKindSTS {
			continue // kept for the pod's successor; the controller frees scaled-away ordinals
		}
		err := c.Delete(ctx, allocPath(it.Metadata.Name), it.Metadata.UID, it.Metadata.ResourceVersion)
		switch {
		case err == nil:
			n++
		case kube.IsStatus(err, http.StatusNotFound), kube.IsStatus(err, http.StatusConflict):
			// gone, or taken over meanwhile: not ours any more
		default:
			return n, fmt.Errorf("ipam: release %s: %w", it.Metadata.Name, err)
		}
	}
	return n, nil
}
