package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/testhook"
)

// Local is the file-backed IPAM store of one node. Layout under <stateDir>/ipam:
//
//	lock                      flock held for every operation
//	owners/<cid>:<if>.json    what one interface holds (idempotency, release)
//	ips/<addr>                one file per allocated address (the claim)
//	pools/<pool>/freed.log    released addresses, oldest first (a FIFO)
//	pools/<pool>/state.json   the next never-used address and the FIFO's head
//
// An ADD touches a constant number of files whatever the number of pods: fresh
// addresses come from a cursor, and once every address has been used,
// released ones come back oldest first, so an address just released is the
// last to be handed out again. An allocation creates two files (the owner
// record and the claim) and a release none: creating a file is what costs
// on a node's disk (~1.2 ms on the test machine, an fsync'd append ~0.14 ms).
type Local struct {
	dir string
}

// NewLocal returns the store under stateDir.
func NewLocal(stateDir string) *Local { return &Local{dir: statedir.IPAM(stateDir)} }

type ownerRecord struct {
	// Format is the record's format (ownerFormat; 0 before formats were
	// versioned, the same fields).
	Format int `json:"format,omitempty"`
	Owner
	Addrs []Allocation `json:"addrs"`
}

// ownerFormat is the owner records' format; later changes add fields.
const ownerFormat = 1

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

// Allocate gives each NIC of an attachment one address per address family
// present in its pools (from the first pool of that family with a free
// address), or the static addresses it asks for. It is idempotent: an owner
// that already holds addresses for the same request gets the same ones
// back. All or none: if any NIC's family is exhausted, or a static address
// is taken, nothing stays allocated.
func (s *Local) Allocate(o Owner, reqs []Request) ([]Allocation, error) {
	l, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	if rec, err := s.readOwner(o.key()); err == nil {
		if covers(rec.Addrs, reqs) {
			return rec.Addrs, nil
		}
		if err := s.release(rec); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// pick every address first (reads only), then write the owner record
	// naming them all, then claim them: a process killed at any point
	// leaves either nothing or an owner record a release can follow
	pk := s.newPicker()
	var picks []*pick
	for _, r := range reqs {
		got, err := pk.request(r)
		if err != nil {
			return nil, err
		}
		picks = append(picks, got...)
	}
	rec := &ownerRecord{Format: ownerFormat, Owner: o}
	for _, p := range picks {
		rec.Addrs = append(rec.Addrs, Allocation{IfName: p.ifname, Pool: p.pool.Name, Address: netip.PrefixFrom(p.addr, p.pool.Subnet.Bits()), Gateway: p.pool.Gateway})
	}
	if err := s.writeOwner(rec); err != nil {
		return nil, err
	}
	testhook.Point("ipam-owner-written")
	for _, p := range picks {
		if err := s.commit(rec.key(), p); err != nil {
			s.release(rec)
			return nil, err
		}
	}
	if len(picks) > 0 {
		if err := s.syncClaims(); err != nil {
			s.release(rec)
			return nil, err
		}
	}
	return rec.Addrs, nil
}

// covers reports whether existing allocations still answer reqs: per NIC,
// one address per family of its pools, each from one of them, and the
// static addresses asked for.
func covers(addrs []Allocation, reqs []Request) bool {
	n := 0
	for _, r := range reqs {
		n += len(Families(r.Pools))
		for _, st := range r.Static {
			if !slices.ContainsFunc(addrs, func(a Allocation) bool { return a.IfName == r.IfName && a.Address.Addr() == st }) {
				return false
			}
		}
	}
	if len(addrs) != n {
		return false
	}
	for _, a := range addrs {
		i := slices.IndexFunc(reqs, func(r Request) bool { return r.IfName == a.IfName })
		if i < 0 || !slices.ContainsFunc(reqs[i].Pools, func(p conf.Pool) bool {
			return p.Name == a.Pool && p.Subnet.Contains(a.Address.Addr()) && (!p.Excluded(a.Address.Addr()) || slices.Contains(reqs[i].Static, a.Address.Addr()))
		}) {
			return false
		}
	}
	return true
}

// Release frees what an attachment holds. Releasing nothing is not an error.
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

// OwnerChanged is when o's record last changed (its addresses taken or
// released).
func (s *Local) OwnerChanged(o Owner) (time.Time, error) {
	fi, err := os.Stat(s.ownerPath(o.key()))
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

// Quarantine takes an address of o's out of circulation until until: the
// claim passes from o to the quarantine (so o's release leaves it), and the
// address is handed out again only once the time is up. For an address
// found in use by another host.
func (s *Local) Quarantine(o Owner, a netip.Addr, until time.Time) error {
	l, err := s.lock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	text, err := readClaim(s.claimPath(a))
	if err != nil {
		return fmt.Errorf("ipam: quarantine %s: %w", a, err)
	}
	owner, pool, _ := strings.Cut(text, " ")
	if owner != o.key() {
		return fmt.Errorf("ipam: quarantine %s: claimed by %s, not %s", a, owner, o.key())
	}
	// replace the claim atomically: a new link renamed over the old one
	tmp := s.claimPath(a) + ".quarantine"
	os.Remove(tmp)
	if err := os.Symlink(claimText(fmt.Sprintf("%s%d", quarantinePrefix, until.Unix()), pool), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.claimPath(a)); err != nil {
		os.Remove(tmp)
		return err
	}
	return s.syncClaims()
}

// Claims lists every claimed address of the node with its claim ("<owner>
// <pool>").
func (s *Local) Claims() (map[netip.Addr]string, error) {
	dir := filepath.Join(s.dir, "ips")
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
		out[a], _ = readClaim(filepath.Join(dir, e.Name()))
	}
	return out, nil
}

// Allocated lists a pool's allocated addresses with their owner keys.
func (s *Local) Allocated(pool string) (map[netip.Addr]string, error) {
	all, err := s.Claims()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for a, c := range all {
		if owner, p, _ := strings.Cut(c, " "); p == pool {
			out[a] = owner
		}
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
	got, err := s.newPicker().pick(&p)
	return got == nil, err
}

// readOwner reads an owner record. One a crash left torn names no claim
// (claims are made only after the record is on disk): it reads as empty.
func (s *Local) readOwner(key string) (*ownerRecord, error) {
	b, err := os.ReadFile(s.ownerPath(key))
	if err != nil {
		return nil, err
	}
	rec := &ownerRecord{}
	if json.Unmarshal(b, rec) != nil {
		rec = &ownerRecord{}
		rec.ContainerID, rec.IfName, _ = strings.Cut(key, ":")
	}
	return rec, nil
}

// writeOwner writes the record in place (a new owner's record is a new
// file; a temp file and a rename would cost a second creation) and fsyncs it.
func (s *Local) writeOwner(rec *ownerRecord) error {
	if err := os.MkdirAll(filepath.Join(s.dir, "owners"), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(rec)
	return fileutil.WriteDurable(s.ownerPath(rec.key()), b)
}

// release frees rec's addresses (only claims that are still rec's), queues
// them at the end of their pool's FIFO and removes the owner record.
func (s *Local) release(rec *ownerRecord) error {
	for _, a := range rec.Addrs {
		addr := a.Address.Addr()
		claim := s.claimPath(addr)
		if text, err := readClaim(claim); err != nil || text != claimText(rec.key(), a.Pool) {
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
