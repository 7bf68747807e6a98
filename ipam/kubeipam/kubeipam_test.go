package kubeipam

import (
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/ipam/apis/v1alpha1"
)

// jsonKeys lists the JSON field paths of a value (objects only).
func jsonKeys(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	var out []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			out = append(out, prefix+k)
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
			}
		}
	}
	walk("", m)
	sort.Strings(out)
	return out
}

// The plugin's lean mirror of IPAllocationSpec has exactly the fields of
// the CRD's Go type, with the same JSON names.
func TestKubeAllocMirrorsCRD(t *testing.T) {
	now := time.Unix(1700000000, 0).UTC()
	crd := v1alpha1.IPAllocationSpec{Pool: "p", Address: "10.0.0.1", Pod: v1alpha1.PodRef{Namespace: "n", Name: "x", UID: "u"},
		ContainerID: "c", Interface: "eth0", Node: "n1", OwnerKind: "StatefulSet", QuarantinedUntil: &metav1.Time{Time: now}}
	lean := AllocSpec{Pool: "p", Address: "10.0.0.1", Pod: PodRef{Namespace: "n", Name: "x", UID: "u"},
		ContainerID: "c", Interface: "eth0", Node: "n1", OwnerKind: "StatefulSet", QuarantinedUntil: &now}
	if a, b := jsonKeys(t, crd), jsonKeys(t, lean); !reflect.DeepEqual(a, b) {
		t.Fatalf("CRD fields %v, plugin's %v", a, b)
	}
	b, _ := json.Marshal(crd)
	var back AllocSpec
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, lean) {
		t.Fatalf("CRD JSON read by the plugin as %+v (%v)", back, err)
	}
}

func TestLabelSelector(t *testing.T) {
	var s *labelSelector
	if !s.Matches(nil) {
		t.Error("a nil selector matches everything")
	}
	json.Unmarshal([]byte(`{"matchLabels":{"a":"1"},"matchExpressions":[{"key":"b","operator":"In","values":["x","y"]},{"key":"c","operator":"DoesNotExist"}]}`), &s)
	for _, c := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"a": "1", "b": "x"}, true},
		{map[string]string{"a": "1", "b": "z"}, false},
		{map[string]string{"a": "1", "b": "y", "c": ""}, false},
		{map[string]string{"b": "x"}, false},
	} {
		if got := s.Matches(c.labels); got != c.want {
			t.Errorf("%v: %v, want %v", c.labels, got, c.want)
		}
	}
}

func TestAllocName(t *testing.T) {
	for a, want := range map[string]string{
		"10.0.0.5": "pool-a.10.0.0.5",
		"::5":      "pool-a.0000-0000-0000-0000-0000-0000-0000-0005",
		"fd00::1":  "pool-a.fd00-0000-0000-0000-0000-0000-0000-0001",
	} {
		got := AllocName("pool-a", netip.MustParseAddr(a))
		if got != want || !conf.ValidObjectName(got) {
			t.Errorf("%s: %q (valid %v), want %q", a, got, conf.ValidObjectName(got), want)
		}
	}
}

func TestAddrArithmetic(t *testing.T) {
	for _, c := range []struct {
		a    string
		off  uint64
		want string
	}{{"10.0.0.255", 1, "10.0.1.0"}, {"10.0.0.1", 65536, "10.1.0.1"}, {"fd00::ffff", 1, "fd00::1:0"}, {"fd00::", 1 << 40, "fd00::100:0:0"}} {
		if got := addrAdd(netip.MustParseAddr(c.a), c.off); got.String() != c.want {
			t.Errorf("%s + %d = %s, want %s", c.a, c.off, got, c.want)
		}
	}
	r := conf.Range{Start: netip.MustParseAddr("10.0.0.10"), End: netip.MustParseAddr("10.0.0.19")}
	if n := rangeSize(r); n != 10 {
		t.Errorf("size %d", n)
	}
	r = conf.Range{Start: netip.MustParseAddr("fd00::"), End: netip.MustParseAddr("fd00::ffff:ffff:ffff:ffff")}
	if n := rangeSize(r); n != 1<<62 {
		t.Errorf("a /64's size is capped at 1<<62, got %d", n)
	}
}

// free lists a small pool's free addresses (minus used, excluded, gateway,
// reserved, quarantined, another node's quarantine that ran out) and
// samples a large one.
func TestFree(t *testing.T) {
	p, err := conf.PoolFromSpec("p", []byte(`{"subnet":"10.0.0.0/24","gateway":"10.0.0.1","ranges":[{"start":"10.0.0.1","end":"10.0.0.8"}],"exclude":["10.0.0.2/31"]}`))
	if err != nil {
		t.Fatal(err)
	}
	k := New(t.Context(), nil, t.TempDir(), "n", 0, Pod{})
	k.reserved = []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")}
	future := time.Now().Add(time.Hour)
	past := time.Now().Add(-time.Hour)
	items := []*Alloc{
		{Spec: AllocSpec{Address: "10.0.0.4"}},
		{Spec: AllocSpec{Address: "10.0.0.6", QuarantinedUntil: &future}},
		{Spec: AllocSpec{Address: "10.0.0.7", QuarantinedUntil: &past, Node: "n"}},
		// another node's: the API server would refuse this node its delete
		{Spec: AllocSpec{Address: "10.0.0.3", QuarantinedUntil: &past, Node: "m"}},
	}
	used, expired := k.used(items)
	free := k.free(p, used)
	var got []string
	for _, a := range free {
		got = append(got, a.String())
	}
	if want := []string{"10.0.0.7", "10.0.0.8"}; !reflect.DeepEqual(got, want) {
		t.Errorf("free %v, want %v", got, want)
	}
	if _, ok := expired[netip.MustParseAddr("10.0.0.7")]; !ok || len(expired) != 1 {
		t.Errorf("expired %v", expired)
	}
	big, _ := conf.PoolFromSpec("b", []byte(`{"subnet":"fd00::/64"}`))
	free = k.free(big, nil)
	if len(free) != 16 {
		t.Fatalf("sample of a /64: %v", free)
	}
	for _, a := range free {
		if !big.Subnet.Contains(a) {
			t.Errorf("%s outside %s", a, big.Subnet)
		}
	}
}

// TestPoolArithmetic is a property test of the pool arithmetic over random
// IPv4 and IPv6 ranges, many of them huge or crossing a 64-bit boundary:
// rangeSize is end - start + 1 (exact, by math/big) capped at 2^62,
// poolSize never wraps, a pool is listed only when it really is small,
// and every address free() gives is inside one of the pool's ranges.
func TestPoolArithmetic(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	k := New(t.Context(), nil, t.TempDir(), "n", 0, Pod{})
	exact := func(r conf.Range) *big.Int {
		s, e := r.Start.As16(), r.End.As16()
		n := new(big.Int).Sub(new(big.Int).SetBytes(e[:]), new(big.Int).SetBytes(s[:]))
		return n.Add(n, big.NewInt(1))
	}
	capped := func(n *big.Int) uint64 {
		if n.Cmp(big.NewInt(maxRangeSize)) >= 0 {
			return maxRangeSize
		}
		return n.Uint64()
	}
	randAddr6 := func(base [16]byte) [16]byte {
		// vary the low 72 bits: ranges of every size, across bit 64
		for i := 7; i < 16; i++ {
			base[i] = byte(rnd.UintN(256))
		}
		return base
	}
	for iter := 0; iter < 2000; iter++ {
		v4 := iter%4 == 0
		var rs []conf.Range
		var subnet netip.Prefix
		for n, tries := 1+rnd.IntN(4), 0; len(rs) < n && tries < 100; tries++ {
			var s, e netip.Addr
			if v4 {
				subnet = netip.MustParsePrefix("10.0.0.0/8")
				a, b := rnd.Uint32N(1<<24), rnd.Uint32N(1<<24)
				if iter%8 == 0 {
					b = a + rnd.Uint32N(64) // small ones too
					b = min(b, 1<<24-1)
				}
				s, e = netip.AddrFrom4([4]byte{10, byte(a >> 16), byte(a >> 8), byte(a)}), netip.AddrFrom4([4]byte{10, byte(b >> 16), byte(b >> 8), byte(b)})
			} else {
				subnet = netip.MustParsePrefix("fd00::/56")
				base := netip.MustParseAddr("fd00::").As16()
				s, e = netip.AddrFrom16(randAddr6(base)), netip.AddrFrom16(randAddr6(base))
				if iter%3 == 0 {
					e = addrAdd(s, rnd.Uint64N(1<<10)) // small, maybe across bit 64
				}
			}
			if e.Less(s) {
				s, e = e, s
			}
			r := conf.Range{Start: s, End: e}
			if slices.ContainsFunc(rs, func(o conf.Range) bool { return !(e.Less(o.Start) || o.End.Less(s)) }) {
				continue
			}
			if got, want := rangeSize(r), capped(exact(r)); got != want {
				t.Fatalf("rangeSize(%s-%s) = %d, want %d", s, e, got, want)
			}
			rs = append(rs, r)
		}
		sum := new(big.Int)
		for _, r := range rs {
			sum.Add(sum, exact(r))
		}
		if got, want := poolSize(rs), capped(sum); got != want {
			t.Fatalf("poolSize(%v) = %d, want %d (exact %s)", rs, got, want, sum)
		}
		slices.SortFunc(rs, func(a, b conf.Range) int { return a.Start.Compare(b.Start) }) // as conf orders them
		p := &conf.Pool{Name: fmt.Sprintf("p%d", iter), Subnet: subnet, Ranges: rs}
		if _, small := k.candidates(p); small != (sum.Cmp(big.NewInt(smallPool)) <= 0) {
			t.Fatalf("pool of %s addresses listed: %v", sum, small)
		}
		if sum.Cmp(big.NewInt(smallPool)) > 0 {
			free := k.free(p, nil)
			for _, a := range free {
				if !slices.ContainsFunc(rs, func(r conf.Range) bool { return !a.Less(r.Start) && !r.End.Less(a) }) {
					t.Fatalf("free gave %s, in none of %v", a, rs)
				}
			}
		}
	}
	// the case that wrapped: four ranges of 2^62 and more
	var huge []conf.Range
	for i := 0; i < 4; i++ {
		s := netip.AddrFrom16([16]byte{0xfd, 0, 0, byte(i), 15: 0})
		huge = append(huge, conf.Range{Start: s, End: addrAdd(s, 1<<63)})
	}
	if n := poolSize(huge); n != maxRangeSize {
		t.Fatalf("four ranges of 2^63: poolSize %d", n)
	}
	if _, small := k.candidates(&conf.Pool{Name: "huge", Subnet: netip.MustParsePrefix("fd00::/16"), Ranges: huge}); small {
		t.Fatal("four ranges of 2^63 would be listed address by address")
	}
}

// TestBlocks: a block is the 64 addresses around an address (the subnet,
// if smaller), its label a valid label value, and a node fills the
// fullest of the blocks where it holds the most, never one another node
// holds more of.
func TestBlocks(t *testing.T) {
	labelValue := regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	for _, c := range []struct{ subnet, addr, block, label string }{
		{"10.30.0.0/16", "10.30.1.77", "10.30.1.64/26", "10.30.1.64"},
		{"10.30.0.0/16", "10.30.0.1", "10.30.0.0/26", "10.30.0.0"},
		{"10.0.0.16/28", "10.0.0.20", "10.0.0.16/28", "10.0.0.16"},
		{"fd00::/64", "fd00::1:ff", "fd00::1:c0/122", "fd00-0000-0000-0000-0000-0000-0001-00c0"},
		{"fd00::/120", "fd00::ff", "fd00::c0/122", "fd00-0000-0000-0000-0000-0000-0000-00c0"},
	} {
		b := BlockOf(netip.MustParsePrefix(c.subnet), netip.MustParseAddr(c.addr))
		if b.String() != c.block || BlockLabel(b) != c.label || !labelValue.MatchString(BlockLabel(b)) {
			t.Errorf("%s in %s: block %s label %q, want %s %q", c.addr, c.subnet, b, BlockLabel(b), c.block, c.label)
		}
	}
	if l := nodeLabel(strings.Repeat("n", 200)); len(l) > 63 || !labelValue.MatchString(l) {
		t.Errorf("a long node name's label %q", l)
	}
	p, err := conf.PoolFromSpec("p", []byte(`{"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}`))
	if err != nil {
		t.Fatal(err)
	}
	k := New(t.Context(), nil, t.TempDir(), "n", 0, Pod{})
	var items []*Alloc
	add := func(node string, from, to int) {
		for i := from; i <= to; i++ {
			items = append(items, &Alloc{Spec: AllocSpec{Address: fmt.Sprintf("10.0.0.%d", i), Node: node}})
		}
	}
	add("n", 2, 10)    // block .0: n's, 9 of 62 held
	add("n", 64, 120)  // block .64: n's, 57 of 64 held: the fullest
	add("m", 128, 140) // block .128: m's ...
	add("n", 141, 145) // ... though n holds 5 there
	for range 50 {
		used, _ := k.used(items)
		a := k.inOwnBlocks(p, items, used)
		if b := BlockOf(p.Subnet, a); b.String() != "10.0.0.64/26" || used[a] {
			t.Fatalf("picked %s (block %s), want a free address of 10.0.0.64/26", a, b)
		}
	}
	add("n", 121, 127) // .64 full: .0 next
	used, _ := k.used(items)
	if a := k.inOwnBlocks(p, items, used); BlockOf(p.Subnet, a).String() != "10.0.0.0/26" || used[a] || a == p.Gateway {
		t.Fatalf("picked %s, want a free address of 10.0.0.0/26", a)
	}
}

// TestViewLog: the node view's log says which pod's NIC an address was
// picked for (so a pod's new sandbox finds it without a list), a later
// line wins over the snapshot and over earlier lines, a DEL's release
// takes the address out, the lines of before times and pods still read,
// and saving a snapshot keeps each address's last line while it is young
// (a list may not show it yet: the node's own for ownCarry, another
// node's for otherCarry over the watch cache and not at all over etcd).
func TestViewLog(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	stateDir := t.TempDir()
	k := New(t.Context(), nil, stateDir, "n", time.Hour, Pod{PodRef: PodRef{Namespace: "ns", Name: "web", UID: "u-1"}})
	k.now = func() time.Time { return now }
	p, err := conf.PoolFromSpec("p", []byte(`{"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}`))
	if err != nil {
		t.Fatal(err)
	}
	v := k.view("p")
	unlock, err := v.lock(k) // makes the directory
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	snap := &viewSnapshot{Fetched: now, Items: []*Alloc{
		{Metadata: metaName("p.10.0.0.5"), Spec: AllocSpec{Address: "10.0.0.5", Node: "m"}},
		{Metadata: metaName("p.10.0.0.6"), Spec: AllocSpec{Address: "10.0.0.6", Node: "n", Pod: PodRef{UID: "u-old"}, Interface: "eth0"}},
	}}
	if err := v.save(k, snap, true); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(v.note(k, netip.MustParseAddr("10.0.0.7"), "eth0"))
	must(v.note(k, netip.MustParseAddr("10.0.0.8"), "net1"))
	must(v.note(k, netip.MustParseAddr("10.0.0.8"), "")) // its create was a 409
	now = now.Add(otherCarry)
	noteReleased(viewsDir(stateDir), []string{"p.10.0.0.6", "p.10.0.0.7", "p.10.0.0.99", "q.10.0.0.6", "../p.10.0.0.6", "p.bad"}, now)
	must(v.note(k, netip.MustParseAddr("10.0.0.6"), "net1")) // freed and picked again
	// a log line of before times and pods
	must(appendFile(v.path(".log"), "10.0.0.9\n10.0.0.10 -\n"))
	if _, err := os.Stat(filepath.Join(v.dir, "q.log")); err == nil {
		t.Error("a release in a pool the node has no view of wrote a log")
	}

	got := map[string]string{}
	for _, it := range v.cached(k).Items {
		got[it.Spec.Address] = it.Spec.Node + " " + it.Spec.Pod.UID + " " + it.Spec.Interface + " " + it.Metadata.Name
	}
	want := map[string]string{
		"10.0.0.5":  "m   p.10.0.0.5",
		"10.0.0.6":  "n u-1 net1 p.10.0.0.6",
		"10.0.0.8":  "?   p.10.0.0.8",
		"10.0.0.9":  "n   p.10.0.0.9",
		"10.0.0.10": "?   p.10.0.0.10",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("view: %q, want %q", got, want)
	}
	own, err := v.own(k, p, "net1")
	must(err)
	if len(own) != 1 || own[0].Spec.Address != "10.0.0.6" {
		t.Errorf("the pod's net1 in the view: %+v", own)
	}

	// a relist from the cache: another node's line written otherCarry
	// ago goes, and the lines of before times; the node's own stay (the
	// release's too: the list still shows 10.0.0.7)
	must(v.note(k, netip.MustParseAddr("10.0.0.12"), ""))
	stale := []*Alloc{{Metadata: metaName("p.10.0.0.7"), Spec: AllocSpec{Address: "10.0.0.7", Node: "n"}}}
	must(v.save(k, &viewSnapshot{Fetched: now, Items: stale}, true))
	got = map[string]string{}
	for _, it := range v.cached(k).Items {
		got[it.Spec.Address] = it.Spec.Node + " " + it.Spec.Pod.UID + " " + it.Spec.Interface
	}
	if want := map[string]string{"10.0.0.6": "n u-1 net1", "10.0.0.12": "?  "}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a relist: %q, want %q", got, want)
	}
	// one of the whole pool (from etcd) drops what other nodes took (it
	// shows it if it still is), keeps the node's own picks
	must(v.save(k, &viewSnapshot{Fetched: now, Full: true}, false))
	got = map[string]string{}
	for _, it := range v.cached(k).Items {
		got[it.Spec.Address] = it.Spec.Node
	}
	if want := map[string]string{"10.0.0.6": "n"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a whole-pool relist: %q, want %q", got, want)
	}
	now = now.Add(ownCarry)
	must(v.save(k, &viewSnapshot{Fetched: now, Full: true}, false))
	if items := v.cached(k).Items; len(items) != 0 {
		t.Errorf("after a whole-pool relist ownCarry later: %+v", items[0])
	}
	if b, _ := os.ReadFile(v.path(".log")); len(b) != 0 {
		t.Errorf("the log ownCarry later: %q", b)
	}
	// a pod without a UID finds nothing, and its lines read
	k.pod.UID = ""
	must(v.note(k, netip.MustParseAddr("10.0.0.11"), "eth0"))
	if own, err := v.own(k, p, "eth0"); err != nil || own != nil {
		t.Errorf("a pod without a UID: %+v, %v", own, err)
	}
	if e, ok := v.logEntry(k, v.logLine(k, netip.MustParseAddr("10.0.0.11"), "eth0")); !ok || e.it.Spec.Pod.UID != "" || e.it.Spec.Interface != "" || e.it.Spec.Node != "n" {
		t.Errorf("a line without a pod UID: %+v", e.it)
	}

	// a node whose DELs freed all it held in a block keeps the block: its
	// next ADD picks there, without reading a block
	r := k.view("r")
	must(r.save(k, &viewSnapshot{Fetched: now, Items: []*Alloc{{Metadata: metaName("r.10.0.0.70"), Spec: AllocSpec{Address: "10.0.0.70", Node: "n"}}}}, true))
	noteReleased(viewsDir(stateDir), []string{"r.10.0.0.70"}, now)
	snap = r.cached(k)
	if len(snap.Items) != 0 || len(snap.Freed) != 1 {
		t.Fatalf("after the release: items %+v, freed %v", snap.Items, snap.Freed)
	}
	used, _ := k.used(snap.Items)
	if a := k.inOwnBlocks(p, snap.owned(k.node), used); BlockOf(p.Subnet, a).String() != "10.0.0.64/26" {
		t.Errorf("after its block's last release the node picked %s, want one of 10.0.0.64/26", a)
	}
	must(r.save(k, snap, true))
	if again := r.cached(k); len(again.Freed) == 0 {
		t.Error("a saved view forgot the addresses the node freed")
	}
}

// TestSplitAllocName: an allocation's name gives back its pool and
// address, whatever dots the pool's name has.
func TestSplitAllocName(t *testing.T) {
	for _, c := range []struct{ pool, addr string }{
		{"p", "10.0.0.1"}, {"a.b.c", "192.168.1.254"}, {"p", "fd00::1"}, {"v6.pool", "2001:db8::ff:1"}, {"x-1", "::"},
	} {
		a := netip.MustParseAddr(c.addr)
		pool, got, ok := splitAllocName(AllocName(c.pool, a))
		if !ok || pool != c.pool || got != a {
			t.Errorf("%s in %s: %q %s %v", c.addr, c.pool, pool, got, ok)
		}
	}
	for _, name := range []string{"", "p", "10.0.0.1", "p.10.0.1", ".10.0.0.1", "p.fd00-1", "p.1-2"} {
		if pool, a, ok := splitAllocName(name); ok {
			t.Errorf("%q: %q %s", name, pool, a)
		}
	}
}

func metaName(name string) kube.Meta { return kube.Meta{Name: name} }

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
