package kubeipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/ipam"
)

// Blocks. A pool's subnet is cut into blocks of 64 addresses (a /26 of
// IPv4, a /122 of IPv6; the whole subnet if it is smaller), and every
// allocation carries its block as a label. A node fills the blocks where
// it holds the most addresses; when they are full it looks for a block
// nobody holds an address in, from its home block (a hash of its name)
// on, a block per request; and only when a few such reads find none
// (the pool is nearly full, or has fewer blocks than nodes) does it read
// the whole pool and take any free address. So what a node reads per
// allocation is its own blocks (found by the node label), not the pool:
// its cost does not grow with the pool's allocations or the nodes.
//
// Nothing about a block is claimed or compared-and-swapped (Calico's block
// affinity, without the block objects): a block is a node's because its
// allocations there are; a node that is gone costs nothing; and the API
// server's 409 on an address's object stays what keeps every address
// single-owner. A wrong label (an allocation made before blocks, or by a
// hostile node) only hides an address from a view, and picking it costs
// one 409.
const (
	LabelBlock = "spinneret.io/block"
	blockBits  = 6
	// maxProbes is how many blocks an allocation reads, looking for an
	// empty one, before it reads the whole pool instead: with 3 of 4
	// blocks held, 32 reads all miss once in 10,000
	maxProbes = 32
	// labelsPerList bounds a list's "block in (...)" selector.
	labelsPerList = 32
)

// BlockOf is the block of a pool of subnet that holds address a.
func BlockOf(subnet netip.Prefix, a netip.Addr) netip.Prefix {
	b, _ := a.Prefix(max(subnet.Bits(), a.BitLen()-blockBits))
	return b
}

// BlockLabel is the value of LabelBlock for block b: its first address,
// IPv6 written in full with '-' for ':' (a label value has no ':').
func BlockLabel(b netip.Prefix) string {
	if a := b.Addr(); !a.Is4() {
		return strings.ReplaceAll(a.StringExpanded(), ":", "-")
	}
	return b.Addr().String()
}

// nodeLabel is the value of LabelNode: the node's name, or a hash of it
// if it is longer than a label value may be.
func nodeLabel(node string) string {
	if len(node) <= 63 {
		return node
	}
	h := fnv.New64a()
	h.Write([]byte(node))
	return fmt.Sprintf("node-%016x", h.Sum64())
}

// poolView is the node's view of one pool's allocations: a snapshot (its
// own blocks, read by label; or the whole pool, when those are full and
// no empty block was found) shared by the node's ADDs for the cache TTL,
// plus a log of the addresses the node's ADDs picked since, and of those
// other nodes took (a 409). An ADD picks an address free in the view and
// logs it under the view's lock, so the node's concurrent ADDs never pick
// the same one; other nodes' picks show up as 409s. The view is a hint:
// the API server's 409 is what keeps an address single-owner, and a pool
// is exhausted only when a list of the whole pool read just now shows
// nothing free.
type poolView struct {
	pool  string
	dir   string
	fresh bool // the whole pool was listed by this invocation
	// mem is the view when nothing is cached (ttl 0): every ADD reads
	// the pool
	mem *viewSnapshot
}

type viewSnapshot struct {
	Fetched time.Time `json:"fetched"`
	// Full: Items are the whole pool's, not only the node's blocks'
	Full  bool     `json:"full,omitempty"`
	Items []*Alloc `json:"items"`
	// Freed are addresses the node's DELs freed since: free, and their
	// blocks still the node's (else a node whose pods all went would
	// read a block on its next ADD to find one)
	Freed []netip.Addr `json:"freed,omitempty"`
}

// owned is what says which blocks are the node's: the items, and the
// addresses it freed since, as its own.
func (s *viewSnapshot) owned(node string) []*Alloc {
	if len(s.Freed) == 0 {
		return s.Items
	}
	out := slices.Clip(s.Items)
	for _, a := range s.Freed {
		out = append(out, &Alloc{Spec: AllocSpec{Address: a.String(), Node: node}})
	}
	return out
}

func (k *Backend) view(pool string) *poolView {
	if k.views == nil {
		k.views = map[string]*poolView{}
	}
	if v, ok := k.views[pool]; ok {
		return v
	}
	v := &poolView{pool: pool, dir: k.viewDir}
	k.views[pool] = v
	return v
}

func (v *poolView) path(ext string) string { return filepath.Join(v.dir, v.pool+ext) }

// listSel reads the pool's allocations a selector (after the pool's own)
// picks out, trimmed to what picking needs.
func (v *poolView) listSel(k *Backend, sel string) ([]*Alloc, error) {
	items, _, err := v.listN(k, sel, 0)
	return items, err
}

// listN is listSel reading only the first n (0: all); whole: the answer
// holds all of them.
func (v *poolView) listN(k *Backend, sel string, n int) (out []*Alloc, whole bool, err error) {
	s := LabelPool + "=" + v.pool
	if sel != "" {
		s += "," + sel
	}
	var items []*Alloc
	whole = true
	switch {
	case n > 0:
		items, whole, err = kube.ListFirstCached[*Alloc](k.ctx, k.c, apiGroup+"/ipallocations", s, n)
	case sel != "":
		// a part of the pool: from the watch cache (a hint; the 409
		// corrects it)
		items, err = kube.ListCached[*Alloc](k.ctx, k.c, apiGroup+"/ipallocations", s)
	default:
		// the whole pool, which says whether it is exhausted: from etcd
		items, err = kube.List[*Alloc](k.ctx, k.c, apiGroup+"/ipallocations", s)
	}
	if err != nil {
		return nil, false, fmt.Errorf("ipam: list allocations of IPPool %s (%s): %w", v.pool, s, err)
	}
	out = make([]*Alloc, 0, len(items))
	for _, it := range items {
		t := &Alloc{Metadata: kube.Meta{Name: it.Metadata.Name, ResourceVersion: it.Metadata.ResourceVersion},
			Spec: AllocSpec{Address: it.Spec.Address, Node: it.Spec.Node, QuarantinedUntil: it.Spec.QuarantinedUntil}}
		if it.Spec.Node == k.node {
			// whose it is: a pod's new sandbox finds its address here
			t.Spec.Pod.UID, t.Spec.Interface = it.Spec.Pod.UID, it.Spec.Interface
		}
		out = append(out, t)
	}
	return out, whole, nil
}

// listNode reads the node's part of the pool: its own allocations (by
// the node label), then every allocation in the blocks those are in.
func (v *poolView) listNode(k *Backend, p *conf.Pool) ([]*Alloc, error) {
	mine, err := v.listSel(k, LabelNode+"="+nodeLabel(k.node))
	if err != nil {
		return nil, err
	}
	var blocks []string
	for b := range blocksOf(p, mine) {
		blocks = append(blocks, BlockLabel(b))
	}
	slices.Sort(blocks)
	items := mine
	for chunk := range slices.Chunk(blocks, labelsPerList) {
		got, err := v.listSel(k, LabelBlock+" in ("+strings.Join(chunk, ",")+")")
		if err != nil {
			return nil, err
		}
		items = merge(items, got)
	}
	return items, nil
}

// merge adds to items those of more it does not have (by name).
func merge(items, more []*Alloc) []*Alloc {
	have := make(map[string]bool, len(items))
	for _, it := range items {
		have[it.Metadata.Name] = true
	}
	for _, it := range more {
		if !have[it.Metadata.Name] {
			items = append(items, it)
		}
	}
	return items
}

// lock serializes the node's ADDs on the view (a no-op without a cache).
func (v *poolView) lock(k *Backend) (func(), error) {
	if k.ttl == 0 {
		return func() {}, nil
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	l, err := fileutil.LockFile(v.path(".lock"))
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
}

// cached is the node's view with the log applied, if it is fresh.
func (v *poolView) cached(k *Backend) *viewSnapshot {
	if k.ttl == 0 {
		return v.mem
	}
	var snap viewSnapshot
	b, err := os.ReadFile(v.path(".json"))
	if err != nil || json.Unmarshal(b, &snap) != nil || k.now().Sub(snap.Fetched) >= k.ttl || k.now().Before(snap.Fetched.Add(-time.Second)) {
		return nil
	}
	if lb, err := os.ReadFile(v.path(".log")); err == nil {
		at := make(map[string]int, len(snap.Items))
		for i, it := range snap.Items {
			at[it.Spec.Address] = i
		}
		for line := range strings.Lines(string(lb)) {
			e, ok := v.logEntry(k, line)
			if !ok {
				continue
			}
			// the log is newer than the snapshot
			i, dup := at[e.it.Spec.Address]
			switch {
			case e.freed:
				if dup {
					snap.Items[i] = nil
					delete(at, e.it.Spec.Address)
				}
				snap.Freed = append(snap.Freed, e.it.Addr())
			case dup:
				snap.Items[i] = e.it
			default:
				at[e.it.Spec.Address] = len(snap.Items)
				snap.Items = append(snap.Items, e.it)
			}
		}
		snap.Items = slices.DeleteFunc(snap.Items, func(it *Alloc) bool { return it == nil })
	}
	return &snap
}

// How long a log line outlives the snapshots read after it. A list (from
// the API server's cache, or even from etcd) may not show yet an address
// the node picked just before, its create still on the way, nor the
// release of one a DEL of the node just freed: the node's own lines
// (picks and releases) are carried for ownCarry, longer than a create may
// take (apiTimeout is at most 1m; under TestKubeIPAMGrowth's 100 nodes a
// create took up to 20 s, and a carry of 2 s lost the node's block to
// each relist: 890 block reads for 1000 allocations). Without the line
// another ADD of the node would pick the address again, and a new
// sandbox of the pod would not find it (404 of TestKubeIPAMStorm's 2000
// re-ADDs before DEL got a new address when a list of the whole pool
// dropped the lines). It hides nothing free: a DEL or an ADD's rollback
// notes its release. A line for an address another node took (a 409) is
// carried for otherCarry over a list from the watch cache (it may lag),
// and not at all over a read from etcd, which shows it if it still is
// taken: the line would only hide an address freed since
// (TestKubeIPAMStorm's pool, 22 addresses spare, ran out with such lines
// carried 30 s).
const (
	ownCarry   = time.Minute
	otherCarry = 2 * time.Second
)

// A log line is "ADDRESS = UNIXMILLI POD-UID IFNAME", an address this node
// picked for a pod's NIC; "ADDRESS - UNIXMILLI", one another node took (a
// 409); or "ADDRESS x UNIXMILLI", one a DEL of this node freed. Lines of
// before the times and pods ("ADDRESS", "ADDRESS -") still read.
func (v *poolView) logLine(k *Backend, a netip.Addr, ifname string) string {
	if ifname == "" {
		return fmt.Sprintf("%s - %d\n", a, k.now().UnixMilli())
	}
	uid := k.pod.UID
	if uid == "" {
		uid = "-"
	}
	return fmt.Sprintf("%s = %d %s %s\n", a, k.now().UnixMilli(), uid, ifname)
}

// logEntry is what a log line says: the allocation as far as the view
// knows it (freed: none any more), and when the line was written (zero
// for the old lines).
type logEntry struct {
	it    *Alloc
	at    time.Time
	freed bool
	other bool // another node's
}

func (v *poolView) logEntry(k *Backend, line string) (e logEntry, ok bool) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return e, false
	}
	a, err := netip.ParseAddr(f[0])
	if err != nil {
		return e, false
	}
	e.it = &Alloc{Metadata: kube.Meta{Name: AllocName(v.pool, a)}, Spec: AllocSpec{Address: a.String(), Node: k.node}}
	if len(f) > 1 {
		e.other, e.freed = f[1] == "-", f[1] == "x"
	}
	if e.other {
		e.it.Spec.Node = "?"
	}
	if len(f) > 2 {
		if ms, err := strconv.ParseInt(f[2], 10, 64); err == nil {
			e.at = time.UnixMilli(ms)
		}
	}
	if len(f) > 4 && f[1] == "=" && f[3] != "-" {
		e.it.Spec.Pod.UID, e.it.Spec.Interface = f[3], f[4]
	}
	return e, true
}

// save makes snap the node's view: the log is in it, but for the lines
// carry keeps (others: also those of addresses other nodes took, as
// over a list from the watch cache).
func (v *poolView) save(k *Backend, snap *viewSnapshot, others bool) error {
	if k.ttl == 0 {
		v.mem = snap
		return nil
	}
	b, err := json.Marshal(snap)
	if err == nil {
		err = fileutil.WriteAtomicUnsynced(v.path(".json"), b) // a hint: not synced
	}
	if err == nil {
		err = v.carry(k, others)
	}
	if err != nil {
		return fmt.Errorf("ipam: view of %s: %w", v.pool, err)
	}
	return nil
}

// carry keeps in the log the last line of each address, while it is
// younger than ownCarry (otherCarry for another node's, and unless others
// not at all).
func (v *poolView) carry(k *Backend, others bool) error {
	lb, err := os.ReadFile(v.path(".log"))
	if errors.Is(err, os.ErrNotExist) || err == nil && len(lb) == 0 {
		return nil
	} else if err != nil {
		return err
	}
	lines := slices.Collect(strings.Lines(string(lb)))
	last := map[string]int{}
	entries := make([]logEntry, len(lines))
	for i, line := range lines {
		if e, ok := v.logEntry(k, line); ok {
			entries[i] = e
			last[e.it.Spec.Address] = i
		}
	}
	var kept strings.Builder
	for i, e := range entries {
		if e.it == nil || last[e.it.Spec.Address] != i {
			continue
		}
		window := ownCarry
		if e.other {
			window = 0
			if others {
				window = otherCarry
			}
		}
		if k.now().Sub(e.at) < window {
			kept.WriteString(lines[i])
		}
	}
	if kept.Len() == len(lb) {
		return nil
	}
	return fileutil.WriteAtomicUnsynced(v.path(".log"), []byte(kept.String()))
}

// note records address a in the view: picked by this node for the pod's
// NIC ifname, or (ifname "") taken by another node.
func (v *poolView) note(k *Backend, a netip.Addr, ifname string) error {
	if k.ttl == 0 {
		if v.mem != nil {
			e, _ := v.logEntry(k, v.logLine(k, a, ifname))
			v.mem.Items = append(v.mem.Items, e.it)
		}
		return nil
	}
	f, err := os.OpenFile(v.path(".log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err == nil {
		_, err = f.WriteString(v.logLine(k, a, ifname)) // a hint: not synced
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("ipam: view of %s: %w", v.pool, err)
	}
	return nil
}

// relist reads the node's blocks of the pool and makes that the view.
func (v *poolView) relist(k *Backend, p *conf.Pool) (*viewSnapshot, error) {
	items, err := v.listNode(k, p)
	if err != nil {
		return nil, err
	}
	return v.saved(k, &viewSnapshot{Fetched: k.now(), Items: items}, true)
}

// saved saves snap and returns it with the log lines carried over it.
func (v *poolView) saved(k *Backend, snap *viewSnapshot, others bool) (*viewSnapshot, error) {
	if err := v.save(k, snap, others); err != nil {
		return nil, err
	}
	if c := v.cached(k); c != nil {
		snap = c
	}
	return snap, nil
}

// relistFull reads the whole pool and makes that the view.
func (v *poolView) relistFull(k *Backend) (*viewSnapshot, error) {
	items, err := v.listSel(k, "")
	if err != nil {
		return nil, err
	}
	v.fresh = true
	return v.saved(k, &viewSnapshot{Fetched: k.now(), Full: true, Items: items}, false)
}

// refreshSince reads the node's blocks again unless its view was read
// after since (by another ADD of the node).
func (v *poolView) refreshSince(k *Backend, p *conf.Pool, since time.Time) error {
	unlock, err := v.lock(k)
	if err != nil {
		return err
	}
	defer unlock()
	if snap := v.cached(k); snap != nil && k.ttl > 0 && snap.Fetched.After(since) {
		return nil
	}
	_, err = v.relist(k, p)
	return err
}

// taken records that another node holds a (its create answered 409).
func (v *poolView) taken(k *Backend, a netip.Addr) error {
	unlock, err := v.lock(k)
	if err != nil {
		return err
	}
	defer unlock()
	return v.note(k, a, "")
}

// pick chooses a free address of p for the pod's NIC ifname and records
// it in the node's view; an invalid address if none is free (fresh: as of
// a list of the whole pool read by this invocation). old is the object of
// a quarantine that ran out on that address.
func (v *poolView) pick(k *Backend, p *conf.Pool, ifname string) (a netip.Addr, old *Alloc, fresh bool, err error) {
	unlock, err := v.lock(k)
	if err != nil {
		return netip.Addr{}, nil, false, err
	}
	defer unlock()
	snap := v.cached(k)
	if snap == nil {
		if snap, err = v.relist(k, p); err != nil {
			return netip.Addr{}, nil, false, err
		}
	}
	a, old, err = v.choose(k, p, snap)
	if err == nil && a.IsValid() {
		err = v.note(k, a, ifname)
	}
	return a, old, v.fresh, err
}

// own lists what the node's view of pool p says the pod holds on NIC
// ifname (the view is read if it is not cached). A hint, each read again
// before it is taken over: the view shows what the node's allocations
// were when it was read (from the API server's cache), and the addresses
// the node's ADDs picked since.
func (v *poolView) own(k *Backend, p *conf.Pool, ifname string) ([]*Alloc, error) {
	if k.pod.UID == "" {
		return nil, nil
	}
	unlock, err := v.lock(k)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap := v.cached(k)
	if snap == nil {
		if snap, err = v.relist(k, p); err != nil {
			return nil, err
		}
	}
	var out []*Alloc
	for _, it := range snap.Items {
		if it.Spec.Node == k.node && it.Spec.Pod.UID == k.pod.UID && it.Spec.Interface == ifname && it.Spec.QuarantinedUntil == nil {
			out = append(out, it)
		}
	}
	return out, nil
}

// choose picks in the view: in the node's blocks; else in an empty block
// found by reading a few; else (having read the whole pool) in an empty
// block from the node's home on, or anywhere.
func (v *poolView) choose(k *Backend, p *conf.Pool, snap *viewSnapshot) (netip.Addr, *Alloc, error) {
	used, expired := k.used(snap.Items)
	if a := k.inOwnBlocks(p, snap.owned(k.node), used); a.IsValid() {
		return a, expired[a], nil
	}
	if !snap.Full {
		b, err := v.probe(k, p, snap)
		if err != nil {
			return netip.Addr{}, nil, err
		}
		if b.IsValid() {
			used, expired = k.used(snap.Items)
			a := k.inBlock(p, b, used)
			return a, expired[a], nil
		}
		if snap, err = v.relistFull(k); err != nil {
			return netip.Addr{}, nil, err
		}
		used, expired = k.used(snap.Items)
		if a := k.inOwnBlocks(p, snap.owned(k.node), used); a.IsValid() {
			return a, expired[a], nil
		}
	}
	free := k.free(p, used)
	if len(free) == 0 {
		return netip.Addr{}, nil, nil
	}
	if blocks := k.blocks(p); blocks != nil {
		held := blocksOf(p, snap.Items)
		home := k.home(len(blocks))
		for i := range blocks {
			if b := blocks[(home+i)%len(blocks)]; !held[b] {
				if a := k.inBlock(p, b, used); a.IsValid() {
					return a, expired[a], nil
				}
			}
		}
	}
	a := free[k.rnd.IntN(len(free))]
	return a, expired[a], nil
}

// probe looks for a block no node holds an address in: the node's home
// block, then blocks at random, of those the view knows nothing of; each
// read is one request for one object (is there any?), and what it finds
// joins the view, so a block is read once per TTL. At most maxProbes
// reads; failing an empty block, one read whole with room in it; an
// invalid block if they found neither.
func (v *poolView) probe(k *Backend, p *conf.Pool, snap *viewSnapshot) (netip.Prefix, error) {
	known := blocksOf(p, snap.owned(k.node))
	blocks := k.blocks(p)
	next := func(i int) netip.Prefix {
		switch {
		case blocks != nil && i == 0:
			return blocks[k.home(len(blocks))]
		case blocks != nil:
			return blocks[k.rnd.IntN(len(blocks))]
		}
		r := p.Ranges[k.rnd.IntN(len(p.Ranges))]
		return BlockOf(p.Subnet, addrAdd(r.Start, k.rnd.Uint64N(rangeSize(r))))
	}
	// borrow: a block read whole (an API server whose watch cache does
	// not page answers with all of a block) with room in it, taken if no
	// empty block is found, rather than reading the whole pool (at 50,000
	// held and 100 nodes, five nodes reading it, 55 MB each, brought the
	// test's API server down)
	var found, borrow netip.Prefix
	read := 0
	for i := 0; i < 4*maxProbes && read < maxProbes && !found.IsValid(); i++ {
		b := next(i)
		if known[b] {
			continue
		}
		known[b] = true
		if !k.inBlock(p, b, nil).IsValid() {
			continue // nothing in it may be handed out
		}
		got, whole, err := v.listN(k, LabelBlock+"="+BlockLabel(b), 1)
		if err != nil {
			return netip.Prefix{}, err
		}
		read++
		snap.Items = merge(snap.Items, got)
		switch {
		case len(got) == 0:
			found = b
		case whole && !borrow.IsValid():
			if used, _ := k.used(got); k.inBlock(p, b, used).IsValid() {
				borrow = b
			}
		}
	}
	if !found.IsValid() {
		found = borrow
	}
	if read > 0 {
		if err := v.save(k, snap, true); err != nil { // the log is in snap
			return netip.Prefix{}, err
		}
	}
	return found, nil
}

// blocksOf is the set of p's blocks that items hold an address in.
func blocksOf(p *conf.Pool, items []*Alloc) map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, it := range items {
		if a := it.Addr(); p.Subnet.Contains(a) {
			out[BlockOf(p.Subnet, a)] = true
		}
	}
	return out
}

// used is what the view's items take; expired are allocation objects of
// this node whose quarantine ran out (free, but their object must go
// first).
func (k *Backend) used(items []*Alloc) (map[netip.Addr]bool, map[netip.Addr]*Alloc) {
	now := k.now()
	used := make(map[netip.Addr]bool, len(items))
	expired := map[netip.Addr]*Alloc{}
	for _, it := range items {
		a := it.Addr()
		if it.Spec.QuarantinedUntil != nil && !it.Quarantined(now) && it.Spec.Node == k.node {
			// another node's expired quarantine stays taken until the
			// controller deletes it: the API server lets a node delete
			// only its own node's objects (deploy/k8s/rbac.yaml)
			expired[a] = it
			continue
		}
		used[a] = true
	}
	return used, expired
}

// inOwnBlocks picks a free address in the node's blocks (where, in the
// view, it holds more addresses than any other node): in the fullest of
// them first, so a node's addresses stay in few blocks.
func (k *Backend) inOwnBlocks(p *conf.Pool, items []*Alloc, used map[netip.Addr]bool) netip.Addr {
	held := map[netip.Prefix]map[string]int{}
	for _, it := range items {
		a := it.Addr()
		if !p.Subnet.Contains(a) {
			continue
		}
		b := BlockOf(p.Subnet, a)
		if held[b] == nil {
			held[b] = map[string]int{}
		}
		held[b][it.Spec.Node]++
	}
	var best []netip.Addr
	for b, h := range held {
		owner, n := "", 0
		for node, c := range h {
			if c > n || c == n && node < owner {
				owner, n = node, c
			}
		}
		if owner != k.node {
			continue
		}
		if free := k.blockFree(p, b, used, 0); len(free) > 0 && (best == nil || len(free) < len(best)) {
			best = free
		}
	}
	if best == nil {
		return netip.Addr{}
	}
	return best[k.rnd.IntN(min(4, len(best)))]
}

// inBlock picks a free address of block b, one of its first few.
func (k *Backend) inBlock(p *conf.Pool, b netip.Prefix, used map[netip.Addr]bool) netip.Addr {
	free := k.blockFree(p, b, used, 4)
	if len(free) == 0 {
		return netip.Addr{}
	}
	return free[k.rnd.IntN(len(free))]
}

// blockFree lists block b's addresses that may be handed out and are not
// used, in order (at most limit of them; 0: all).
func (k *Backend) blockFree(p *conf.Pool, b netip.Prefix, used map[netip.Addr]bool, limit int) []netip.Addr {
	var out []netip.Addr
	n := uint64(1) << (b.Addr().BitLen() - b.Bits())
	for i := range n {
		a := addrAdd(b.Addr(), i)
		if !used[a] && !p.Excluded(a) && !k.isReserved(a) {
			out = append(out, a)
			if len(out) == limit {
				break
			}
		}
	}
	return out
}

// home is the node's place among n blocks.
func (k *Backend) home(n int) int {
	h := fnv.New32a()
	h.Write([]byte(k.node))
	return int(h.Sum32() % uint32(n))
}

// smallPool is the size up to which a pool's free addresses are listed in
// full; larger pools are sampled at random.
const smallPool = 1 << 16

// free returns free addresses of p given what is used: all of them for a
// small pool, a random sample for a large one.
func (k *Backend) free(p *conf.Pool, used map[netip.Addr]bool) []netip.Addr {
	var out []netip.Addr
	if all, small := k.candidates(p); small {
		for _, a := range all {
			if !used[a] {
				out = append(out, a)
			}
		}
		return out
	}
	ok := func(a netip.Addr) bool { return !used[a] && !p.Excluded(a) && !k.isReserved(a) }
	for tries := 0; tries < 4096 && len(out) < 16; tries++ {
		r := p.Ranges[k.rnd.IntN(len(p.Ranges))]
		a := addrAdd(r.Start, k.rnd.Uint64N(rangeSize(r)))
		if ok(a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// candidates lists the addresses of a small pool that may be handed out,
// in order, and the blocks they are in; small is false for a pool too
// large to list (it is sampled). Computed once per invocation and pool.
func (k *Backend) candidates(p *conf.Pool) (all []netip.Addr, small bool) {
	c := k.poolCands(p)
	return c.addrs, c.small
}

// blocks lists the blocks of a small pool that hold an address that may
// be handed out, in order; nil for a pool too large to list.
func (k *Backend) blocks(p *conf.Pool) []netip.Prefix { return k.poolCands(p).blocks }

func (k *Backend) poolCands(p *conf.Pool) poolCandidates {
	if c, ok := k.cands[p.Name]; ok {
		return c
	}
	c := poolCandidates{small: poolSize(p.Ranges) <= smallPool}
	if c.small {
		for _, r := range p.Ranges {
			for a := r.Start; a.IsValid() && !r.End.Less(a); a = ipam.NextCandidate(p, a) {
				if !p.Excluded(a) && !k.isReserved(a) {
					c.addrs = append(c.addrs, a)
					if b := BlockOf(p.Subnet, a); len(c.blocks) == 0 || c.blocks[len(c.blocks)-1] != b {
						c.blocks = append(c.blocks, b)
					}
				}
			}
		}
	}
	if k.cands == nil {
		k.cands = map[string]poolCandidates{}
	}
	k.cands[p.Name] = c
	return c
}

type poolCandidates struct {
	addrs  []netip.Addr
	blocks []netip.Prefix
	small  bool
}

// splitAllocName is the pool and address of an allocation's name (as
// AllocName makes it: an IPv4 address is its last four dot-separated
// parts, an IPv6 one its last, which has no dots).
func splitAllocName(name string) (pool string, a netip.Addr, ok bool) {
	if i := strings.LastIndexByte(name, '.'); i > 0 && strings.Contains(name[i+1:], "-") {
		a, err := netip.ParseAddr(strings.ReplaceAll(name[i+1:], "-", ":"))
		return name[:i], a, err == nil && a.Is6()
	}
	i := len(name)
	for range 4 {
		if i = strings.LastIndexByte(name[:i], '.'); i <= 0 {
			return "", netip.Addr{}, false
		}
	}
	a, err := netip.ParseAddr(name[i+1:])
	return name[:i], a, err == nil && a.Is4()
}

// noteReleased records in the node's views (in dir) the
// allocations a DEL deleted (by name): free to the node's next ADDs
// before a list shows it, and no longer what a new sandbox of the pod
// would try to take over (one request that would find nothing). A hint,
// appended without the view's lock (an ADD holds it across its requests
// to the API server, and a DEL must not wait on them): a line lost to a
// concurrent rewrite of the log leaves the address taken in the view
// until the next list, as before. Nothing is written for a pool the node
// has no view of.
func noteReleased(dir string, names []string, at time.Time) {
	if dir == "" || len(names) == 0 {
		return
	}
	for _, name := range names {
		pool, a, ok := splitAllocName(name)
		if !ok || strings.ContainsRune(pool, '/') || strings.HasPrefix(pool, ".") {
			continue
		}
		v := poolView{pool: pool, dir: dir}
		if _, err := os.Stat(v.path(".json")); err != nil {
			continue
		}
		f, err := os.OpenFile(v.path(".log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			continue
		}
		fmt.Fprintf(f, "%s x %d\n", a, at.UnixMilli()) // a hint: not synced
		f.Close()
	}
}
