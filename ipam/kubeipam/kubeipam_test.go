package kubeipam

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"sort"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spinneret-cni/spinneret/conf"
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
// reserved, quarantined) and samples a large one.
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
		{Spec: AllocSpec{Address: "10.0.0.7", QuarantinedUntil: &past}},
	}
	free, expired := k.free(p, items, time.Now())
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
	free, _ = k.free(big, nil, time.Now())
	if len(free) != 16 {
		t.Fatalf("sample of a /64: %v", free)
	}
	for _, a := range free {
		if !big.Subnet.Contains(a) {
			t.Errorf("%s outside %s", a, big.Subnet)
		}
	}
}
