package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/testhook"
)

// Local is the file-backed IPAM store of one node. Layout under <stateDir>/ipam:
//
//	lock                      flock held for every operation
//	owners/<cid>:<if>.json    what one interface holds (idempotency, release)
//	pools/<pool>/ips/<addr>   one file per allocated address (the claim)
//	pools/<pool>/freed/<seq>  released addresses, oldest first (FIFO)
//	pools/<pool>/state.json   the next never-used address and the FIFO's ends
//
// An ADD touches a constant number of files whatever the number of pods: fresh
// addresses come from a cursor, and once every address has been used,
// released ones come back oldest first, so an address just released is the
// last to be handed out again.
type Local struct {
	dir string
}

// NewLocal returns the store under stateDir.
func NewLocal(stateDir string) *Local { return &Local{dir: filepath.Join(stateDir, "ipam")} }

type poolState struct {
	Fingerprint string     `json:"fingerprint"`
	Next        netip.Addr `json:"next,omitzero"`  // zero: start of the first range
	Done        bool       `json:"done,omitempty"` // every address was handed out once
	Head        uint64     `json:"head"`
	Tail        uint64     `json:"tail"`
}

type ownerRecord struct {
	Owner
	Addrs []Allocation `json:"addrs"`
}

func (s *Local) lock() (*fileutil.Lock, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	return fileutil.LockFile(filepath.Join(s.dir, "lock"))
}

func (s *Local) ownerPath(key string) string {
	return filepath.Join(s.dir, "owners", key+".json")
}

func (s *Local) poolDir(pool string) string { return filepath.Join(s.dir, "pools", pool) }

// Allocate gives the owner one address per address family present in pools,
// from the first pool of that family with a free address. It is idempotent:
// an owner that already holds addresses gets the same ones back. All or none:
// if one family is exhausted nothing stays allocated.
func (s *Local) Allocate(o Owner, pools []conf.Pool) ([]Allocation, error) {
	l, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	if rec, err := s.readOwner(o.key()); err == nil {
		if coversPools(rec.Addrs, pools) {
			return rec.Addrs, nil
		}
		if err := s.release(rec); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// pick an address per family first (reads only), then write the owner
	// record naming them all, then claim them: a process killed at any
	// point leaves either nothing or an owner record a release can follow
	var picks []*pick
	for _, fam := range Families(pools) {
		var names []string
		var got *pick
		for i := range fam {
			pk, err := s.pick(&fam[i])
			if err != nil {
				return nil, err
			}
			if pk != nil {
				got = pk
				break
			}
			names = append(names, fam[i].Name)
		}
		if got == nil {
			return nil, &exhaustedError{pools: names}
		}
		picks = append(picks, got)
	}
	rec := &ownerRecord{Owner: o}
	for _, pk := range picks {
		rec.Addrs = append(rec.Addrs, Allocation{Pool: pk.pool.Name, Address: netip.PrefixFrom(pk.addr, pk.pool.Subnet.Bits()), Gateway: pk.pool.Gateway})
	}
	if err := s.writeOwner(rec); err != nil {
		return nil, err
	}
	testhook.Point("ipam-owner-written")
	for _, pk := range picks {
		if err := s.commit(rec.key(), pk); err != nil {
			s.release(rec)
			return nil, err
		}
	}
	return rec.Addrs, nil
}

// coversPools reports whether existing allocations are still valid for pools:
// one address per family, each from a pool that is still configured.
func coversPools(addrs []Allocation, pools []conf.Pool) bool {
	if len(addrs) != len(Families(pools)) {
		return false
	}
	for _, a := range addrs {
		ok := false
		for _, p := range pools {
			if p.Name == a.Pool && p.Subnet.Contains(a.Address.Addr()) && !p.Excluded(a.Address.Addr()) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Release frees what an interface holds. Releasing nothing is not an error.
func (s *Local) Release(containerID, ifname string) error {
	l, err := s.lock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	rec, err := s.readOwner(Owner{ContainerID: containerID, IfName: ifname}.key())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.release(rec)
}

// Owners lists every owner holding addresses.
func (s *Local) Owners() ([]Owner, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "owners"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Owner
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		rec, err := s.readOwner(name)
		if err != nil {
			continue // released meanwhile
		}
		out = append(out, rec.Owner)
	}
	return out, nil
}

// Allocated lists a pool's allocated addresses with their owner keys.
func (s *Local) Allocated(pool string) (map[netip.Addr]string, error) {
	dir := filepath.Join(s.poolDir(pool), "ips")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[netip.Addr]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for _, e := range ents {
		a, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[a] = string(b)
	}
	return out, nil
}

// Exhausted reports whether a pool has no address left to hand out.
func (s *Local) Exhausted(p conf.Pool) (bool, error) {
	l, err := s.lock()
	if err != nil {
		return false, err
	}
	defer l.Unlock()
	pk, err := s.pick(&p)
	return pk == nil, err
}

func fingerprint(p *conf.Pool) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%v|%v|%s", p.Subnet, p.Ranges, p.Exclude, p.Gateway)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *Local) loadState(p *conf.Pool) (*poolState, error) {
	st, err := s.readState(p.Name)
	if err != nil {
		return nil, err
	}
	if fp := fingerprint(p); st.Fingerprint != fp {
		// the pool's ranges changed: scan for fresh addresses from the start;
		// claimed ones are skipped, the FIFO of released ones is kept
		st.Fingerprint, st.Next, st.Done = fp, netip.Addr{}, false
	}
	if !st.Done && !st.Next.IsValid() {
		st.Next = p.Ranges[0].Start
	}
	return st, nil
}

// readState reads a pool's state. The state is only a hint (claims decide
// what is taken, FIFO entries are created exclusively), so it is saved
// without fsync, and an unreadable one, as a power cut may leave, starts over.
func (s *Local) readState(pool string) (*poolState, error) {
	st := &poolState{}
	b, err := os.ReadFile(filepath.Join(s.poolDir(pool), "state.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err == nil && json.Unmarshal(b, st) != nil {
		st = &poolState{}
	}
	return st, nil
}

func (s *Local) saveState(pool string, st *poolState) error {
	b, _ := json.Marshal(st)
	return fileutil.Replace(filepath.Join(s.poolDir(pool), "state.json"), b)
}

// nextInRanges returns the address after a in the pool's ranges, or an
// invalid address after the last one.
func nextInRanges(p *conf.Pool, a netip.Addr) netip.Addr {
	for i, r := range p.Ranges {
		if a.Less(r.Start) {
			return r.Start
		}
		if a.Less(r.End) {
			return a.Next()
		}
		if a == r.End && i+1 < len(p.Ranges) {
			return p.Ranges[i+1].Start
		}
	}
	return netip.Addr{}
}

// nextCandidate is the address to try after a: the next one in the ranges,
// past the whole excluded block if a is in one.
func nextCandidate(p *conf.Pool, a netip.Addr) netip.Addr {
	if end, ok := p.ExcludedBlock(a); ok {
		a = end
	}
	return nextInRanges(p, a)
}

func (s *Local) claimed(pool string, a netip.Addr) bool {
	_, err := os.Stat(filepath.Join(s.poolDir(pool), "ips", a.String()))
	return err == nil
}

// claim creates the address's claim file; false if another owner has it.
func (s *Local) claim(pool string, a netip.Addr, owner string) (bool, error) {
	dir := filepath.Join(s.poolDir(pool), "ips")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	err := fileutil.CreateDurable(filepath.Join(dir, a.String()), []byte(owner))
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	return err == nil, err
}

func (s *Local) readFreed(pool string, seq uint64) (netip.Addr, error) {
	b, err := os.ReadFile(filepath.Join(s.poolDir(pool), "freed", strconv.FormatUint(seq, 10)))
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(string(b)))
}

// pick is an address chosen in a pool, with the pool state that hands it
// out and the FIFO entries it consumed.
type pick struct {
	pool  *conf.Pool
	addr  netip.Addr
	st    *poolState
	freed []uint64 // FIFO entries to remove once the state is saved
}

// pick chooses p's next address without writing anything: a never-used one
// while there are any, then the oldest released one. Before calling the pool
// exhausted it rescans the whole pool once, so an address whose release was
// lost (a power cut before the FIFO entry reached the disk) comes back.
// It returns nil if p has no free address.
func (s *Local) pick(p *conf.Pool) (*pick, error) {
	st, err := s.loadState(p)
	if err != nil {
		return nil, err
	}
	pk := &pick{pool: p, st: st}
	for rescanned := false; ; rescanned = true {
		for !st.Done {
			a := st.Next
			if st.Next = nextCandidate(p, a); !st.Next.IsValid() {
				st.Done = true
			}
			if !p.Excluded(a) && !s.claimed(p.Name, a) {
				pk.addr = a
				return pk, nil
			}
		}
		for st.Head < st.Tail {
			seq := st.Head
			st.Head++
			pk.freed = append(pk.freed, seq)
			a, err := s.readFreed(p.Name, seq)
			if err == nil && p.Subnet.Contains(a) && !p.Excluded(a) && !s.claimed(p.Name, a) {
				pk.addr = a
				return pk, nil
			} // else: stale, the pool's ranges changed, or claimed again
		}
		if rescanned {
			return nil, nil
		}
		st.Next, st.Done = p.Ranges[0].Start, false
	}
}

// commit claims a picked address for owner, saves the pool state, and only
// then drops the FIFO entries the pick consumed, so a crash cannot lose a
// released address.
func (s *Local) commit(owner string, pk *pick) error {
	ok, err := s.claim(pk.pool.Name, pk.addr, owner)
	if err != nil {
		return err
	}
	if !ok { // only a store changed behind the lock's back gets here
		return fmt.Errorf("ipam: pool %q: %s is already claimed", pk.pool.Name, pk.addr)
	}
	testhook.Point("ipam-claimed")
	if err := s.saveState(pk.pool.Name, pk.st); err != nil {
		return err
	}
	testhook.Point("ipam-state-saved")
	for _, seq := range pk.freed {
		os.Remove(filepath.Join(s.poolDir(pk.pool.Name), "freed", strconv.FormatUint(seq, 10)))
	}
	return nil
}

func (s *Local) readOwner(key string) (*ownerRecord, error) {
	b, err := os.ReadFile(s.ownerPath(key))
	if err != nil {
		return nil, err
	}
	rec := &ownerRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("ipam: owner %s: %w", key, err)
	}
	return rec, nil
}

func (s *Local) writeOwner(rec *ownerRecord) error {
	if err := os.MkdirAll(filepath.Join(s.dir, "owners"), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(rec)
	return fileutil.WriteAtomic(s.ownerPath(rec.key()), b)
}

// release frees rec's addresses (only claims that are still rec's), queues
// them at the end of their pool's FIFO and removes the owner record.
func (s *Local) release(rec *ownerRecord) error {
	for _, a := range rec.Addrs {
		addr := a.Address.Addr()
		claim := filepath.Join(s.poolDir(a.Pool), "ips", addr.String())
		if b, err := os.ReadFile(claim); err != nil || string(b) != rec.key() {
			continue // not ours (any more)
		}
		if err := s.pushFreed(a.Pool, addr); err != nil {
			return err
		}
		testhook.Point("ipam-release-queued")
		if err := os.Remove(claim); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		testhook.Point("ipam-release-unclaimed")
	}
	if err := os.Remove(s.ownerPath(rec.key())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (s *Local) pushFreed(pool string, a netip.Addr) error {
	st, err := s.readState(pool)
	if err != nil {
		return err
	}
	dir := filepath.Join(s.poolDir(pool), "freed")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// an entry is created exclusively: a tail that is behind (its state was
	// lost) skips entries that exist instead of overwriting them
	for {
		err := fileutil.CreateDurable(filepath.Join(dir, strconv.FormatUint(st.Tail, 10)), []byte(a.String()))
		st.Tail++
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return s.saveState(pool, st)
}
