package controller

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/ipam/apis/v1alpha1"
)

func testWorld(objs ...any) *world {
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	sts := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range objs {
		switch o.(type) {
		case *corev1.Pod:
			pods.Add(o)
		case *corev1.Node:
			nodes.Add(o)
		case *appsv1.StatefulSet:
			sts.Add(o)
		}
	}
	return &world{pods: corelisters.NewPodLister(pods), nodes: corelisters.NewNodeLister(nodes), sts: appslisters.NewStatefulSetLister(sts)}
}

func node(name string, ready bool) *corev1.Node {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
}

// TestStale: the GC rules, one case each.
func TestStale(t *testing.T) {
	now := time.Now()
	past, future := metav1.NewTime(now.Add(-time.Minute)), metav1.NewTime(now.Add(time.Minute))
	replicas := int32(2)
	w := testWorld(node("ready", true), node("down", false),
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db"}, Spec: appsv1.StatefulSetSpec{Replicas: &replicas}})
	c := &ctrl{cfg: Config{TerminatingDelay: 10 * time.Second}, log: slog.Default()}
	alloc := func(name, uid, kind string) *v1alpha1.IPAllocation {
		return &v1alpha1.IPAllocation{Spec: v1alpha1.IPAllocationSpec{Pod: v1alpha1.PodRef{Namespace: "ns", Name: name, UID: uid}, OwnerKind: kind}}
	}
	pod := func(name, uid, node string, phase corev1.PodPhase, deleting *metav1.Time) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid), DeletionTimestamp: deleting},
			Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	}
	quarantined := alloc("x", "u1", "")
	quarantined.Spec.QuarantinedUntil = &future
	expired := alloc("x", "u1", "")
	expired.Spec.QuarantinedUntil = &past
	for _, tc := range []struct {
		name string
		a    *v1alpha1.IPAllocation
		pod  *corev1.Pod
		want string // "" kept, else a substring of the reason
	}{
		{"live", alloc("web", "u1", ""), pod("web", "u1", "ready", corev1.PodRunning, nil), ""},
		{"gone", alloc("web", "u1", ""), nil, "pod gone"},
		{"re-created", alloc("web", "u1", ""), pod("web", "u2", "ready", corev1.PodRunning, nil), "another UID"},
		{"finished", alloc("web", "u1", ""), pod("web", "u1", "ready", corev1.PodSucceeded, nil), "finished"},
		{"terminating on a Ready node", alloc("web", "u1", ""), pod("web", "u1", "ready", corev1.PodRunning, &past), ""},
		{"terminating on a NotReady node, past deadline", alloc("web", "u1", ""), pod("web", "u1", "down", corev1.PodRunning, &past), "NotReady node down"},
		{"terminating on a NotReady node, before deadline", alloc("web", "u1", ""), pod("web", "u1", "down", corev1.PodRunning, &future), ""},
		{"terminating on a node that is gone", alloc("web", "u1", ""), pod("web", "u1", "lost", corev1.PodRunning, &past), "NotReady node lost"},
		{"StatefulSet pod gone, ordinal valid", alloc("db-1", "u1", "StatefulSet"), nil, ""},
		{"StatefulSet pod re-created", alloc("db-1", "u1", "StatefulSet"), pod("db-1", "u2", "ready", corev1.PodRunning, nil), ""},
		{"StatefulSet ordinal scaled away", alloc("db-2", "u1", "StatefulSet"), nil, "pod gone"},
		{"StatefulSet deleted", alloc("cache-0", "u1", "StatefulSet"), nil, "pod gone"},
		{"quarantined", quarantined, nil, ""},
		{"quarantine over", expired, nil, "quarantine over"},
	} {
		why, _ := c.stale(w, tc.a, tc.pod, now)
		if tc.want == "" && why != "" || tc.want != "" && !strings.Contains(why, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, why, tc.want)
		}
	}
}

func TestPoolSize(t *testing.T) {
	p, _ := conf.PoolFromSpec("p", []byte(`{"subnet":"10.0.0.0/24","gateway":"10.0.0.1","exclude":["10.0.0.0/28"]}`))
	if n := poolSize(p, []netip.Prefix{netip.MustParsePrefix("10.0.0.200/30")}).String(); n != "235" {
		t.Errorf("254 usable - 15 excluded (.1-.15; the gateway among them) - 4 reserved: %s", n)
	}
	p6, _ := conf.PoolFromSpec("p6", []byte(`{"subnet":"fd00::/64","exclude":["fd00::/120"]}`))
	if n := poolSize(p6, nil).String(); n != "18446744073709551360" {
		t.Errorf("a /64 (2^64-1 without ::0) without ::1-::ff: %s", n)
	}
}

func TestNormalise(t *testing.T) {
	got := normalise([]string{"fd00::/64", "10.0.0.5/8", " 10.0.0.0/8", "bogus", "192.168.0.0/16"})
	if strings.Join(got, ",") != "10.0.0.0/8,192.168.0.0/16,fd00::/64" {
		t.Errorf("%v", got)
	}
}
