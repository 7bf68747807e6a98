package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/testhook"
)

// poolState is a pool's allocation cursor and FIFO head. It is only a hint
// (claims decide what is taken), so it is written in place without fsync,
// and a torn or lost one costs a rescan, never an address.
type poolState struct {
	Fingerprint string     `json:"fingerprint"`
	Next        netip.Addr `json:"next,omitzero"`  // the next never-used address
	Done        bool       `json:"done,omitempty"` // every address was handed out once
	Head        int64      `json:"head"`           // the FIFO's oldest entry
}

// fifoRecord is the fixed size of one released address in freed.log: an
// address padded with spaces (an IPv6 address is at most 39 characters) and
// a newline, so entry i sits at offset i*fifoRecord and the tail is the
// file's size: a lost state cannot make a release overwrite an entry.
const fifoRecord = 48

// fifoCompactAt is how many consumed entries the FIFO may hold at its head
// before the file is rewritten without them (a variable for tests).
var fifoCompactAt int64 = 1024

func fingerprint(p *conf.Pool) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%v|%v|%s", p.Subnet, p.Ranges, p.Exclude, p.Gateway)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *Local) statePath(pool string) string { return filepath.Join(s.poolDir(pool), "state.json") }
func (s *Local) fifoPath(pool string) string  { return filepath.Join(s.poolDir(pool), "freed.log") }

// readState reads a pool's state; a missing or unreadable one starts over.
func (s *Local) readState(pool string) (*poolState, error) {
	st := &poolState{}
	b, err := os.ReadFile(s.statePath(pool))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err == nil && json.Unmarshal(b, st) != nil {
		st = &poolState{}
	}
	return st, nil
}

// loadState reads p's state for allocating: if the pool's ranges changed,
// the cursor starts over (claimed addresses are skipped; the FIFO is kept).
func (s *Local) loadState(p *conf.Pool) (*poolState, error) {
	st, err := s.readState(p.Name)
	if err != nil {
		return nil, err
	}
	if fp := fingerprint(p); st.Fingerprint != fp {
		st.Fingerprint, st.Next, st.Done = fp, netip.Addr{}, false
	}
	if !st.Done && !st.Next.IsValid() {
		st.Next = p.Ranges[0].Start
	}
	return st, nil
}

func (s *Local) saveState(pool string, st *poolState) error {
	if err := os.MkdirAll(s.poolDir(pool), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(st)
	// overwrite in place, then cut to length: truncating to zero first
	// (os.WriteFile) makes ext4 flush the file on close (auto_da_alloc),
	// which costs as much as an fsync
	f, err := os.OpenFile(s.statePath(pool), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
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
// NextCandidate is the address after a in p's ranges, skipping excluded
// blocks (invalid after the last).
func NextCandidate(p *conf.Pool, a netip.Addr) netip.Addr {
	if end, ok := p.ExcludedBlock(a); ok {
		a = end
	}
	return nextInRanges(p, a)
}

// Claims are per node, not per pool: an address is claimed once whatever
// pools (of whatever networks) contain it, so overlapping pools can never
// hand the same address out twice. A claim is a symbolic link whose target
// is its text: created atomically and exclusively like a file, but with no
// data to sync, so one fsync of the directory makes all of an allocation's
// claims durable (a file each cost an fsync each, ~1 ms on the test disk).
func (s *Local) claimPath(a netip.Addr) string {
	return filepath.Join(s.dir, "ips", a.String())
}

// readClaim returns a claim's text; claims written as regular files (by
// an earlier version) read the same.
func readClaim(path string) (string, error) {
	t, err := os.Readlink(path)
	if errors.Is(err, unix.EINVAL) {
		b, err := os.ReadFile(path)
		return string(b), err
	}
	return t, err
}

// syncClaims makes the claim directory's entries durable.
func (s *Local) syncClaims() error {
	d, err := os.Open(filepath.Join(s.dir, "ips"))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// claimed reports whether a is taken. A quarantine whose time is up is
// lifted here, when the address is next considered.
func (s *Local) claimed(a netip.Addr) bool {
	text, err := readClaim(s.claimPath(a))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	if until, ok := quarantinedUntil(text); ok && time.Now().After(until) {
		return os.Remove(s.claimPath(a)) != nil
	}
	return true
}

// quarantinePrefix marks a claim held by the quarantine, not by an owner.
const quarantinePrefix = "quarantine@"

func quarantinedUntil(claim string) (time.Time, bool) {
	owner, _, _ := strings.Cut(claim, " ")
	unix, ok := strings.CutPrefix(owner, quarantinePrefix)
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(unix, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// claimText is a claim file's content: the owner's key and the pool.
func claimText(owner, pool string) string { return owner + " " + pool }

// claim creates the address's claim file; false if another owner has it.
func (s *Local) claim(pool string, a netip.Addr, owner string) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(s.claimPath(a)), 0o700); err != nil {
		return false, err
	}
	err := os.Symlink(claimText(owner, pool), s.claimPath(a))
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	return err == nil, err
}

// fifo is a pool's freed.log, open for one operation.
type fifo struct {
	f    *os.File
	tail int64 // entries in the file
}

func (s *Local) openFIFO(pool string) (*fifo, error) {
	f, err := os.OpenFile(s.fifoPath(pool), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fifo{f: f, tail: fi.Size() / fifoRecord}, nil // a torn last record is overwritten
}

// at reads entry i; a torn or foreign record reads as invalid.
func (q *fifo) at(i int64) netip.Addr {
	buf := make([]byte, fifoRecord)
	if _, err := q.f.ReadAt(buf, i*fifoRecord); err != nil && err != io.EOF {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(strings.TrimSpace(string(buf)))
	return a
}

// push appends a and fsyncs: a release must not be lost.
func (q *fifo) push(a netip.Addr) error {
	rec := fmt.Sprintf("%-*s\n", fifoRecord-1, a)
	if _, err := q.f.WriteAt([]byte(rec), q.tail*fifoRecord); err != nil {
		return err
	}
	q.tail++
	return q.f.Sync()
}

// compact drops the consumed entries before head once there are enough of
// them, rewriting the file atomically; it returns the new head.
func (q *fifo) compact(path string, head int64) (int64, error) {
	if head < fifoCompactAt || head*2 < q.tail {
		return head, nil
	}
	rest := make([]byte, (q.tail-head)*fifoRecord)
	if _, err := q.f.ReadAt(rest, head*fifoRecord); err != nil && err != io.EOF {
		return head, err
	}
	if err := fileutil.WriteAtomic(path, rest); err != nil {
		return head, err
	}
	return 0, nil
}

func (q *fifo) close() { q.f.Close() }

// pick is an address chosen for a NIC in a pool, with the pool state that
// hands it out (nil for a static address, which moves no cursor).
type pick struct {
	ifname string
	pool   *conf.Pool
	addr   netip.Addr
	st     *poolState
}

// picker chooses the addresses of one allocation: pools shared by several
// NICs of it share one state, and an address picked once is not picked again.
type picker struct {
	s      *Local
	states map[string]*poolState
	taken  map[netip.Addr]bool
}

func (s *Local) newPicker() *picker {
	return &picker{s: s, states: map[string]*poolState{}, taken: map[netip.Addr]bool{}}
}

// ErrStaticTaken is returned (wrapped) when a static address is in use;
// ErrStaticOutside when it is in none of the NIC's pools; ErrStaticRefused
// when its pool may not hand it out (conf.Pool.Refusal says why).
var (
	ErrStaticTaken   = errors.New("address in use")
	ErrStaticOutside = errors.New("in none of the pools")
	ErrStaticRefused = errors.New("refused")
)

// RefusedStatic is the error for a static address its pool may not hand
// out, or nil.
func RefusedStatic(ifname string, p *conf.Pool, a netip.Addr) error {
	if why := p.Refusal(a); why != "" {
		return fmt.Errorf("ipam: %s: static address %s %s: %w", ifname, a, why, ErrStaticRefused)
	}
	return nil
}

// request picks one NIC's addresses.
func (pk *picker) request(r Request) ([]*pick, error) {
	var out []*pick
	for _, fam := range Families(r.Pools) {
		var static netip.Addr
		for _, a := range r.Static {
			if a.Is4() == fam[0].Is4() {
				static = a
			}
		}
		if static.IsValid() {
			i := slices.IndexFunc(fam, func(p conf.Pool) bool { return p.Subnet.Contains(static) })
			if i < 0 {
				return nil, fmt.Errorf("ipam: %s: static address %s is %w %q", r.IfName, static, ErrStaticOutside, PoolNames(fam))
			}
			if err := RefusedStatic(r.IfName, &fam[i], static); err != nil {
				return nil, err
			}
			if pk.taken[static] || pk.s.claimed(static) {
				return nil, fmt.Errorf("ipam: %s: static address %s: %w", r.IfName, static, ErrStaticTaken)
			}
			pk.taken[static] = true
			out = append(out, &pick{ifname: r.IfName, pool: &fam[i], addr: static})
			continue
		}
		var got *pick
		for i := range fam {
			p, err := pk.pick(&fam[i])
			if err != nil {
				return nil, err
			}
			if p != nil {
				p.ifname, got = r.IfName, p
				break
			}
		}
		if got == nil {
			return nil, &exhaustedError{pools: PoolNames(fam)}
		}
		out = append(out, got)
	}
	return out, nil
}

// PoolNames are the pools' names, in order.
func PoolNames(pools []conf.Pool) []string {
	var out []string
	for _, p := range pools {
		out = append(out, p.Name)
	}
	return out
}

// pick chooses p's next address without writing anything: a never-used one
// while there are any, then the oldest released one. Before calling the pool
// exhausted it rescans the whole pool once, so an address whose release was
// lost (a power cut before the FIFO entry reached the disk) comes back.
// It returns nil if p has no free address.
func (pk *picker) pick(p *conf.Pool) (*pick, error) {
	s := pk.s
	st, ok := pk.states[p.Name]
	if !ok {
		var err error
		if st, err = s.loadState(p); err != nil {
			return nil, err
		}
		pk.states[p.Name] = st
	}
	free := func(a netip.Addr) bool { return !pk.taken[a] && !p.Excluded(a) && !s.claimed(a) }
	got := func(a netip.Addr) (*pick, error) {
		pk.taken[a] = true
		return &pick{pool: p, addr: a, st: st}, nil
	}
	var q *fifo
	defer func() {
		if q != nil {
			q.close()
		}
	}()
	for rescanned := false; ; rescanned = true {
		for !st.Done {
			a := st.Next
			if st.Next = NextCandidate(p, a); !st.Next.IsValid() {
				st.Done = true
			}
			if free(a) {
				return got(a)
			}
		}
		if q == nil {
			if err := os.MkdirAll(s.poolDir(p.Name), 0o700); err != nil {
				return nil, err
			}
			var err error
			if q, err = s.openFIFO(p.Name); err != nil {
				return nil, err
			}
		}
		for st.Head < q.tail {
			a := q.at(st.Head)
			st.Head++
			if a.IsValid() && p.Subnet.Contains(a) && free(a) {
				return got(a)
			} // else: torn, the pool's ranges changed, or claimed again
		}
		if rescanned {
			return nil, nil
		}
		st.Next, st.Done = p.Ranges[0].Start, false
	}
}

// commit claims a picked address for owner and then saves the pool state:
// a process killed in between leaves the state behind, and the next pick
// finds the address claimed and moves on.
func (s *Local) commit(owner string, pk *pick) error {
	ok, err := s.claim(pk.pool.Name, pk.addr, owner)
	if err != nil {
		return err
	}
	if !ok { // only a store changed behind the lock's back gets here
		return fmt.Errorf("ipam: pool %q: %s is already claimed", pk.pool.Name, pk.addr)
	}
	testhook.Point("ipam-claimed")
	if pk.st == nil { // a static address moves no cursor
		return nil
	}
	if pk.st.Head > 0 {
		q, err := s.openFIFO(pk.pool.Name)
		if err != nil {
			return err
		}
		pk.st.Head, err = q.compact(s.fifoPath(pk.pool.Name), pk.st.Head)
		q.close()
		if err != nil {
			return err
		}
	}
	if err := s.saveState(pk.pool.Name, pk.st); err != nil {
		return err
	}
	testhook.Point("ipam-state-saved")
	return nil
}

// pushFreed queues a released address at the end of its pool's FIFO.
func (s *Local) pushFreed(pool string, a netip.Addr) error {
	if err := os.MkdirAll(s.poolDir(pool), 0o700); err != nil {
		return err
	}
	q, err := s.openFIFO(pool)
	if err != nil {
		return err
	}
	defer q.close()
	return q.push(a)
}
