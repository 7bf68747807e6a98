package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
)

func pool(t testing.TB, name, subnet, start, end string, exclude ...string) conf.Pool {
	t.Helper()
	p := conf.Pool{Name: name, Subnet: netip.MustParsePrefix(subnet)}
	p.Ranges = []conf.Range{{Start: netip.MustParseAddr(start), End: netip.MustParseAddr(end)}}
	for _, x := range exclude {
		p.Exclude = append(p.Exclude, netip.MustParsePrefix(x))
	}
	return p
}

func owner(i int) Owner {
	return Owner{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0", Network: "n"}
}

func addrs(a []Allocation) string {
	var s []string
	for _, x := range a {
		s = append(s, x.Address.String())
	}
	return strings.Join(s, ",")
}

func TestAllocateOrderAndExcludes(t *testing.T) {
	s := NewLocal(t.TempDir())
	p := pool(t, "p", "192.0.2.0/24", "192.0.2.10", "192.0.2.14", "192.0.2.11/32")
	p.Gateway = netip.MustParseAddr("192.0.2.12")
	var got []string
	for i := 0; i < 3; i++ {
		a, err := s.Allocate(owner(i), req([]conf.Pool{p}))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addrs(a))
	}
	if strings.Join(got, " ") != "192.0.2.10/24 192.0.2.13/24 192.0.2.14/24" {
		t.Fatalf("allocated %v: excluded address and gateway must be skipped", got)
	}
	_, err := s.Allocate(owner(9), req([]conf.Pool{p}))
	if !errors.Is(err, ErrExhausted) || err.Error() != `ipam: pool "p" is exhausted` {
		t.Fatalf("exhausted pool: %v", err)
	}
}

func TestIdempotent(t *testing.T) {
	s := NewLocal(t.TempDir())
	ps := []conf.Pool{pool(t, "a", "192.0.2.0/24", "192.0.2.10", "192.0.2.20"), pool(t, "b", "2001:db8::/64", "2001:db8::10", "2001:db8::20")}
	a1, err := s.Allocate(owner(1), req(ps))
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := s.Allocate(owner(1), req(ps))
	if addrs(a1) != addrs(a2) || addrs(a1) != "192.0.2.10/24,2001:db8::10/64" {
		t.Fatalf("second Allocate = %s, first %s", addrs(a2), addrs(a1))
	}
	other, _ := s.Allocate(Owner{ContainerID: "c1", IfName: "net1"}, req(ps))
	if addrs(other) == addrs(a1) {
		t.Fatal("another interface of the same container got the same addresses")
	}
	if err := s.Release("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("c1", "eth0"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	held, _ := s.Allocated("a")
	if len(held) != 1 {
		t.Fatalf("held after release: %v", held)
	}
}

// TestNoImmediateReuse: a released address comes back only after every
// other free address, and released addresses come back oldest first.
func TestNoImmediateReuse(t *testing.T) {
	s := NewLocal(t.TempDir())
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.6")}
	for i := 1; i <= 4; i++ {
		s.Allocate(owner(i), req(p)) // .1 .. .4
	}
	s.Release("c3", "eth0") // .3 released first
	s.Release("c1", "eth0") // then .1
	var got []string
	for i := 5; i <= 8; i++ {
		a, err := s.Allocate(owner(i), req(p))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addrs(a))
	}
	want := "192.0.2.5/24 192.0.2.6/24 192.0.2.3/24 192.0.2.1/24"
	if strings.Join(got, " ") != want {
		t.Fatalf("order = %v, want %s", got, want)
	}
}

// TestAllOrNone: when the IPv6 pool is exhausted the IPv4 address taken for
// the same owner is given back.
func TestAllOrNone(t *testing.T) {
	s := NewLocal(t.TempDir())
	ps := []conf.Pool{pool(t, "v4", "192.0.2.0/24", "192.0.2.1", "192.0.2.9"), pool(t, "v6", "2001:db8::/64", "2001:db8::1", "2001:db8::1")}
	if _, err := s.Allocate(owner(1), req(ps)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Allocate(owner(2), req(ps))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), `"v6"`) {
		t.Fatalf("err = %v", err)
	}
	held, _ := s.Allocated("v4")
	if len(held) != 1 {
		t.Fatalf("v4 holds %v after a failed dual-stack allocation", held)
	}
	owners, _ := s.Owners()
	if len(owners) != 1 {
		t.Fatalf("owners = %v", owners)
	}
}

// TestFallbackPool: a family with two pools uses the second when the first
// is exhausted; the error names both when both are.
func TestFallbackPool(t *testing.T) {
	s := NewLocal(t.TempDir())
	ps := []conf.Pool{pool(t, "first", "192.0.2.0/24", "192.0.2.1", "192.0.2.1"), pool(t, "second", "198.51.100.0/24", "198.51.100.1", "198.51.100.1")}
	a, _ := s.Allocate(owner(1), req(ps))
	b, _ := s.Allocate(owner(2), req(ps))
	if a[0].Pool != "first" || b[0].Pool != "second" {
		t.Fatalf("pools %s %s", a[0].Pool, b[0].Pool)
	}
	_, err := s.Allocate(owner(3), req(ps))
	if err == nil || err.Error() != `ipam: pools "first", "second" are exhausted` {
		t.Fatalf("err = %v", err)
	}
	ex, _ := s.Exhausted(ps[0])
	if !ex {
		t.Fatal("Exhausted(first) = false")
	}
}

// TestPoolChange: growing the pool's range makes new addresses available;
// an owner whose address left the pool gets a new one.
func TestPoolChange(t *testing.T) {
	s := NewLocal(t.TempDir())
	small := pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.2")
	s.Allocate(owner(1), req([]conf.Pool{small}))
	s.Allocate(owner(2), req([]conf.Pool{small}))
	grown := pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.3")
	a, err := s.Allocate(owner(3), req([]conf.Pool{grown}))
	if err != nil || addrs(a) != "192.0.2.3/24" {
		t.Fatalf("after growing: %v %v", addrs(a), err)
	}
	moved := pool(t, "p", "192.0.2.0/24", "192.0.2.2", "192.0.2.5")
	a, err = s.Allocate(owner(1), req([]conf.Pool{moved}))
	if err != nil || addrs(a) == "192.0.2.1/24" {
		t.Fatalf("owner 1 kept an address outside the new range: %v %v", addrs(a), err)
	}
}

// TestConcurrent: parallel allocations never hand out an address twice.
func TestConcurrent(t *testing.T) {
	s := NewLocal(t.TempDir())
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.200")}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a, err := s.Allocate(owner(i), req(p))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[addrs(a)] {
				t.Errorf("%s handed out twice", addrs(a))
			}
			seen[addrs(a)] = true
		}(i)
	}
	wg.Wait()
}

// BenchmarkAllocateRelease measures one allocate+release with N addresses
// already held: the cost must not grow with N (host-local reads its whole
// store on every ADD).
func BenchmarkAllocateRelease(b *testing.B) {
	for _, held := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			s := NewLocal(b.TempDir())
			p := []conf.Pool{pool(b, "p", "10.0.0.0/16", "10.0.0.1", "10.0.255.254")}
			for i := 0; i < held; i++ {
				if _, err := s.Allocate(owner(i), req(p)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				o := Owner{ContainerID: fmt.Sprintf("bench%d", i), IfName: "eth0"}
				if _, err := s.Allocate(o, req(p)); err != nil {
					b.Fatal(err)
				}
				if err := s.Release(o.ContainerID, o.IfName); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestExcludedBlockSkipped: a large excluded block is jumped over, not walked.
func TestExcludedBlockSkipped(t *testing.T) {
	s := NewLocal(t.TempDir())
	p := pool(t, "big", "10.0.0.0/8", "10.0.0.1", "10.255.255.254", "10.0.0.0/9", "10.128.0.0/31")
	a, err := s.Allocate(owner(1), req([]conf.Pool{p}))
	if err != nil || addrs(a) != "10.128.0.2/8" {
		t.Fatalf("allocated %s, %v", addrs(a), err)
	}
	st, _ := s.loadState(&p)
	if st.Next.String() != "10.128.0.3" {
		t.Fatalf("next = %s", st.Next)
	}
}

// TestCrashWindows: the store stays consistent whatever step a killed
// process stopped at. Owner records are written before claims, the pool
// state after them, and a FIFO entry outlives its claim until the state is
// saved.
func TestCrashWindows(t *testing.T) {
	dir := t.TempDir()
	s := NewLocal(dir)
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.4")}
	poolDir := filepath.Join(dir, "ipam", "pools", "p")

	// killed after the owner record, before the claim (and so before the
	// state): release finds the owner and skips the missing claim; the
	// cursor never moved, so the address is handed out next
	s.Allocate(owner(9), req(p)) // creates the pool state
	s.Release("c9", "eth0")
	state, _ := os.ReadFile(filepath.Join(poolDir, "state.json"))
	a, _ := s.Allocate(owner(1), req(p))
	os.Remove(filepath.Join(dir, "ipam", "ips", a[0].Address.Addr().String()))
	os.WriteFile(filepath.Join(poolDir, "state.json"), state, 0o600)
	if err := s.Release("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if owners, _ := s.Owners(); len(owners) != 0 {
		t.Fatalf("owners left: %v", owners)
	}
	b, _ := s.Allocate(owner(2), req(p))
	if addrs(b) != addrs(a) {
		t.Fatalf("after the crash %s was handed out, want %s", addrs(b), addrs(a))
	}

	// killed after claiming a released address, before saving the FIFO
	// head: the entry is found claimed and skipped, not handed out twice
	s.Allocate(owner(3), req(p))
	s.Allocate(owner(4), req(p)) // the fresh addresses are used up
	s.Release("c2", "eth0")      // FIFO: .1 (c9's), .2
	os.WriteFile(filepath.Join(dir, "ipam", "ips", "192.0.2.1"), []byte("crashed:eth0"), 0o600)
	got, err := s.Allocate(owner(5), req(p))
	if err != nil || addrs(got) != "192.0.2.2/24" {
		t.Fatalf("allocated %s, %v; want 192.0.2.2 (192.0.2.1 is claimed by a crashed process)", addrs(got), err)
	}
}

// TestLostStateRecovers: a pool state or FIFO entry lost to a power cut
// (both are written without waiting for the disk, or before the state) costs
// a rescan, never an address: a released address whose FIFO entry is gone is
// found again, and a tail that went back does not overwrite entries.
func TestLostStateRecovers(t *testing.T) {
	dir := t.TempDir()
	s := NewLocal(dir)
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.3")}
	poolDir := filepath.Join(dir, "ipam", "pools", "p")
	for i := 1; i <= 3; i++ {
		s.Allocate(owner(i), req(p))
	}
	s.Release("c2", "eth0")
	os.Truncate(filepath.Join(poolDir, "freed.log"), 0) // the entry for .2 is lost
	a, err := s.Allocate(owner(4), req(p))
	if err != nil || addrs(a) != "192.0.2.2/24" {
		t.Fatalf("lost FIFO entry: allocated %s, %v", addrs(a), err)
	}
	s.Release("c1", "eth0")
	os.WriteFile(filepath.Join(poolDir, "state.json"), []byte("{garbage"), 0o600) // the state is lost
	s.Release("c3", "eth0")
	fi, _ := os.Stat(filepath.Join(poolDir, "freed.log"))
	if fi.Size() != 2*fifoRecord {
		t.Fatalf("FIFO holds %d bytes after a lost state, want 2 entries (none overwritten)", fi.Size())
	}
	got := map[string]bool{}
	for i := 5; i <= 6; i++ {
		a, err := s.Allocate(owner(i), req(p))
		if err != nil {
			t.Fatal(err)
		}
		got[addrs(a)] = true
	}
	if !got["192.0.2.1/24"] || !got["192.0.2.3/24"] {
		t.Fatalf("after a lost state: %v", got)
	}
	if _, err := s.Allocate(owner(7), req(p)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
}

// TestFIFOCompaction: under steady churn the FIFO never drains, yet its
// file stays bounded and the order (oldest released first) holds.
func TestFIFOCompaction(t *testing.T) {
	defer func(v int64) { fifoCompactAt = v }(fifoCompactAt)
	fifoCompactAt = 4
	dir := t.TempDir()
	s := NewLocal(dir)
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.20")}
	var held []int
	for i := 0; i < 20; i++ {
		s.Allocate(owner(i), req(p))
		held = append(held, i)
	}
	// release 10, then churn: release the oldest holder, allocate a new one;
	// each new allocation must get the address released longest ago
	var queue []string
	for _, i := range held[:10] {
		a, _ := s.Allocate(owner(i), req(p)) // idempotent: read its address
		queue = append(queue, addrs(a))
		s.Release(fmt.Sprintf("c%d", i), "eth0")
	}
	held = held[10:]
	next := 100
	for round := 0; round < 60; round++ {
		a, err := s.Allocate(owner(next), req(p))
		if err != nil {
			t.Fatal(err)
		}
		if addrs(a) != queue[0] {
			t.Fatalf("round %d: got %s, want the oldest released %s", round, addrs(a), queue[0])
		}
		queue = queue[1:]
		held = append(held, next)
		next++
		old := held[0]
		held = held[1:]
		b, _ := s.Allocate(owner(old), req(p))
		queue = append(queue, addrs(b))
		s.Release(fmt.Sprintf("c%d", old), "eth0")
		fi, _ := os.Stat(filepath.Join(dir, "ipam", "pools", "p", "freed.log"))
		if fi.Size() > (2*fifoCompactAt+12)*fifoRecord {
			t.Fatalf("round %d: freed.log grew to %d bytes", round, fi.Size())
		}
	}
}

// TestOverlappingPoolsShareClaims: two networks whose pools overlap never
// hand the same address out twice: claims are per node, not per pool.
func TestOverlappingPoolsShareClaims(t *testing.T) {
	s := NewLocal(t.TempDir())
	a := []conf.Pool{pool(t, "net-a", "192.0.2.0/24", "192.0.2.1", "192.0.2.3")}
	b := []conf.Pool{pool(t, "net-b", "192.0.2.0/24", "192.0.2.2", "192.0.2.4")}
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		ps := a
		if i%2 == 1 {
			ps = b
		}
		got, err := s.Allocate(owner(i), req(ps))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[addrs(got)] {
			t.Fatalf("%s handed out twice", addrs(got))
		}
		seen[addrs(got)] = true
	}
	if _, err := s.Allocate(owner(9), req(b)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("net-b after .1-.4 are taken: %v", err)
	}
	if held, _ := s.Allocated("net-b"); len(held) != 2 {
		t.Fatalf("net-b holds %v", held)
	}
}

// req asks for one eth0 with pools.
func req(pools []conf.Pool) []Request { return []Request{{IfName: "eth0", Pools: pools}} }

// TestMultiNIC: one allocation covers every NIC of an attachment, all or
// none; two NICs on the same pool get distinct addresses; static addresses
// are honoured, and a taken one fails the whole allocation.
func TestMultiNIC(t *testing.T) {
	s := NewLocal(t.TempDir())
	a := pool(t, "a", "192.0.2.0/24", "192.0.2.1", "192.0.2.9")
	a6 := pool(t, "a6", "2001:db8::/64", "2001:db8::1", "2001:db8::9")
	b := pool(t, "b", "198.51.100.0/24", "198.51.100.1", "198.51.100.1")
	reqs := []Request{
		{IfName: "eth0", Pools: []conf.Pool{a, a6}},
		{IfName: "net1", Pools: []conf.Pool{a}},
		{IfName: "net2", Pools: []conf.Pool{b}},
	}
	got, err := s.Allocate(owner(1), reqs)
	if err != nil {
		t.Fatal(err)
	}
	var desc []string
	for _, x := range got {
		desc = append(desc, x.IfName+"="+x.Address.String())
	}
	if strings.Join(desc, " ") != "eth0=192.0.2.1/24 eth0=2001:db8::1/64 net1=192.0.2.2/24 net2=198.51.100.1/24" {
		t.Fatalf("allocated %v", desc)
	}
	again, _ := s.Allocate(owner(1), reqs)
	if addrs(again) != addrs(got) {
		t.Fatalf("not idempotent: %s then %s", addrs(got), addrs(again))
	}
	// pool b is exhausted: nothing at all is allocated for owner 2
	_, err = s.Allocate(owner(2), reqs)
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("err = %v", err)
	}
	if held, _ := s.Allocated("a"); len(held) != 2 {
		t.Fatalf("pool a holds %v after a failed allocation", held)
	}
	// static addresses
	st := []Request{{IfName: "eth0", Pools: []conf.Pool{a, a6}, Static: []netip.Addr{netip.MustParseAddr("192.0.2.7")}}}
	got, err = s.Allocate(owner(3), st)
	if err != nil || addrs(got) != "192.0.2.7/24,2001:db8::2/64" {
		t.Fatalf("static: %s, %v", addrs(got), err)
	}
	if _, err := s.Allocate(owner(4), st); !errors.Is(err, ErrStaticTaken) {
		t.Fatalf("taken static: %v", err)
	}
	out := []Request{{IfName: "eth0", Pools: []conf.Pool{a}, Static: []netip.Addr{netip.MustParseAddr("10.9.9.9")}}}
	if _, err := s.Allocate(owner(5), out); err == nil || !strings.Contains(err.Error(), "in none of the pools") {
		t.Fatalf("static outside the pools: %v", err)
	}
	if owners, _ := s.Owners(); len(owners) != 2 {
		t.Fatalf("owners = %v", owners)
	}
}

// TestQuarantine: a quarantined address leaves its owner (a release does
// not free it), is not handed out while the quarantine lasts, and comes
// back once it is over.
func TestQuarantine(t *testing.T) {
	s := NewLocal(t.TempDir())
	p := []conf.Pool{pool(t, "p", "192.0.2.0/24", "192.0.2.1", "192.0.2.2")}
	a, _ := s.Allocate(owner(1), req(p))
	bad := a[0].Address.Addr()
	if err := s.Quarantine(owner(2), bad, time.Now().Add(time.Hour)); err == nil {
		t.Fatal("another owner quarantined the address")
	}
	if err := s.Quarantine(owner(1), bad, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Release("c1", "eth0")
	got, _ := s.Allocate(owner(3), req(p))
	if got[0].Address.Addr() == bad {
		t.Fatal("a quarantined address was handed out")
	}
	if _, err := s.Allocate(owner(4), req(p)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("the pool's last address is quarantined: %v", err)
	}
	// the quarantine ends
	claim := filepath.Join(s.dir, "ips", bad.String())
	os.Remove(claim)
	if err := os.Symlink(fmt.Sprintf("%s%d p", quarantinePrefix, time.Now().Add(-time.Second).Unix()), claim); err != nil {
		t.Fatal(err)
	}
	got, err := s.Allocate(owner(4), req(p))
	if err != nil || got[0].Address.Addr() != bad {
		t.Fatalf("after the quarantine: %v, %v", got, err)
	}
}
