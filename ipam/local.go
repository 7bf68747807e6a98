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
	rec := &ownerRecord{Owner: o}
	for _, fam := range Families(pools) {
		var names []string
		var got *Allocation
		for _, p := range fam {
			a, err := s.allocateFrom(rec, &p)
			if err != nil {
				s.release(rec)
				return nil, err
			}
			if a != nil {
				got = a
				break
			}
			names = append(names, p.Name)
		}
		if got == nil {
			s.release(rec)
			return nil, &exhaustedError{pools: names}
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
	st, err := s.loadState(&p)
	if err != nil {
		return false, err
	}
	for a := st.Next; !st.Done && a.IsValid(); a = nextCandidate(&p, a) {
		if !p.Excluded(a) && !s.claimed(p.Name, a) {
			return false, nil
		}
	}
	for seq := st.Head; seq < st.Tail; seq++ {
		if a, err := s.readFreed(p.Name, seq); err == nil && !p.Excluded(a) && !s.claimed(p.Name, a) {
			return false, nil
		}
	}
	return true, nil
}

func fingerprint(p *conf.Pool) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%v|%v|%s", p.Subnet, p.Ranges, p.Exclude, p.Gateway)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *Local) loadState(p *conf.Pool) (*poolState, error) {
	st := &poolState{}
	b, err := os.ReadFile(filepath.Join(s.poolDir(p.Name), "state.json"))
	if err == nil {
		if err := json.Unmarshal(b, st); err != nil {
			return nil, fmt.Errorf("ipam: pool %q state: %w", p.Name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
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

func (s *Local) saveState(pool string, st *poolState) error {
	b, _ := json.Marshal(st)
	return fileutil.WriteAtomic(filepath.Join(s.poolDir(pool), "state.json"), b)
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
	f, err := os.OpenFile(filepath.Join(dir, a.String()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_, err = f.WriteString(owner)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
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

// allocateFrom claims one address of p for rec's owner, or returns nil if p
// is exhausted. The owner record naming the address is written before the
// claim, so a process killed in between leaves nothing that a release by
// owner cannot find; a FIFO entry is removed only after the claim and the
// state are saved, so a crash cannot drop a released address.
func (s *Local) allocateFrom(rec *ownerRecord, p *conf.Pool) (*Allocation, error) {
	st, err := s.loadState(p)
	if err != nil {
		return nil, err
	}
	var stale []uint64 // FIFO entries passed over
	popped := uint64(0)
	found := netip.Addr{}
	for !st.Done && !found.IsValid() {
		a := st.Next
		if st.Next = nextCandidate(p, a); !st.Next.IsValid() {
			st.Done = true
		}
		if !p.Excluded(a) && !s.claimed(p.Name, a) {
			found = a
		}
	}
	for !found.IsValid() && st.Head < st.Tail {
		seq := st.Head
		st.Head++
		a, err := s.readFreed(p.Name, seq)
		if err != nil || !p.Subnet.Contains(a) || p.Excluded(a) || s.claimed(p.Name, a) {
			stale = append(stale, seq) // the pool's ranges changed, or claimed again
			continue
		}
		found, popped = a, seq+1
	}
	if found.IsValid() {
		al := Allocation{Pool: p.Name, Address: netip.PrefixFrom(found, p.Subnet.Bits()), Gateway: p.Gateway}
		rec.Addrs = append(rec.Addrs, al)
		if err := s.writeOwner(rec); err != nil {
			return nil, err
		}
		testhook.Point("ipam-owner-written")
		ok, err := s.claim(p.Name, found, rec.key())
		if err != nil {
			return nil, err
		}
		testhook.Point("ipam-claimed")
		if !ok { // only a store changed behind the lock's back gets here
			return nil, fmt.Errorf("ipam: pool %q: %s is already claimed", p.Name, found)
		}
	}
	if err := s.saveState(p.Name, st); err != nil {
		return nil, err
	}
	testhook.Point("ipam-state-saved")
	if popped > 0 {
		stale = append(stale, popped-1)
	}
	for _, seq := range stale {
		os.Remove(filepath.Join(s.poolDir(p.Name), "freed", strconv.FormatUint(seq, 10)))
	}
	if !found.IsValid() {
		return nil, nil
	}
	return &rec.Addrs[len(rec.Addrs)-1], nil
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
	st := &poolState{}
	statePath := filepath.Join(s.poolDir(pool), "state.json")
	if b, err := os.ReadFile(statePath); err == nil {
		if err := json.Unmarshal(b, st); err != nil {
			return fmt.Errorf("ipam: pool %q state: %w", pool, err)
		}
	}
	dir := filepath.Join(s.poolDir(pool), "freed")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := fileutil.WriteAtomic(filepath.Join(dir, strconv.FormatUint(st.Tail, 10)), []byte(a.String())); err != nil {
		return err
	}
	st.Tail++
	return s.saveState(pool, st)
}
