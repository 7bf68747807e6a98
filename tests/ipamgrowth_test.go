package tests

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/ipam/kubeipam"
)

// TestKubeIPAMGrowth: what an allocation costs the API server as the pool
// fills, against a real API server. The pool (a /16) is filled with
// prefill allocations of other nodes' pods (created directly, as those
// nodes would have), then simulated nodes (processes, cold node caches:
// as every node is once per poolCacheTTL) allocate 10 addresses each and
// release them. Per level it prints the API requests and the bytes read
// per allocation, and p50. It holds, at every level: no failure, no
// address given twice or taken from a prefill allocation, every release
// done; and at 10,000 allocations the pool's list is over the 4 MiB one
// answer may be, which only a paged list reads (before pages it failed
// there). SPINNERET_IPAM_GROWTH=full (make bench-ipam) adds 50,000
// allocations and 100 nodes.
func TestKubeIPAMGrowth(t *testing.T) {
	a := startAPI(t, nil)
	applyCRDs(t, a)
	const poolName = "growth"
	subnet := netip.MustParsePrefix("10.30.0.0/16")
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": poolName},
		"spec": map[string]any{"subnet": subnet.String(), "ranges": []map[string]string{{"start": "10.30.0.1", "end": "10.30.255.254"}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	c, err := kube.Load(a.Kubeconfig, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	prefills, nodeCounts := []int{1000, 10000}, []int{10}
	if os.Getenv("SPINNERET_IPAM_GROWTH") == "full" {
		prefills, nodeCounts = []int{1000, 10000, 50000}, []int{10, 100}
	}
	const perNode = 10
	prefilled := map[string]bool{}
	var out strings.Builder
	fmt.Fprintf(&out, "%-9s %-6s %-7s %-14s %-16s %-10s %s\n", "held", "nodes", "allocs", "requests/alloc", "KiB read/alloc", "p50 ms", "pool list read (KiB, requests)")
	for _, held := range prefills {
		growthPrefill(t, c, poolName, subnet, len(prefilled), held, prefilled)
		for _, nodes := range nodeCounts {
			stateRoot := t.TempDir()
			res, _ := runNodes(t, "allocate", a.Kubeconfig, poolName, nodes, perNode, stateRoot)
			var lat []float64
			var requests, read int64
			var listKiB, lists float64
			seen := map[string]bool{}
			for _, r := range res {
				for _, f := range r.Failures {
					t.Errorf("%d held, %d nodes: %s: %s", held, nodes, r.Node, f)
				}
				for _, ad := range r.Addrs {
					if ad == "" {
						continue
					}
					if seen[ad] || prefilled[ad] {
						t.Errorf("%d held, %d nodes: %s given twice", held, nodes, ad)
					}
					seen[ad] = true
				}
				lat = append(lat, r.LatencyMS...)
				requests += r.Requests
				read += r.Read
				if v, ok := r.Kinds["GET pool-allocations"]; ok {
					lists += v[0]
				}
				listKiB += float64(r.PoolListRead) / 1024
			}
			n := float64(len(seen))
			fmt.Fprintf(&out, "%-9d %-6d %-7d %-14.2f %-16.1f %-10.1f %.0f, %.0f\n", held, nodes, len(seen), float64(requests)/n, float64(read)/1024/n, pct(lat, 0.5), listKiB, lists)
			for _, r := range res {
				if held >= 10000 && r.PoolListRead < 4<<20 {
					t.Errorf("%d held: %s read %d KiB of the pool's list, want over 4 MiB (the test no longer crosses one answer's cap)", held, r.Node, r.PoolListRead>>10)
				}
			}
			rel, _ := runNodes(t, "release", a.Kubeconfig, poolName, nodes, perNode, stateRoot)
			for _, r := range rel {
				for _, f := range r.Failures {
					t.Errorf("%d held, %d nodes: release: %s: %s", held, nodes, r.Node, f)
				}
			}
		}
	}
	t.Log("\n" + out.String())
}

// growthPrefill creates the pool's allocations from..to-1 (its first
// addresses), as other nodes' pods would hold them, 32 at once.
func growthPrefill(t *testing.T, c *kube.Client, pool string, subnet netip.Prefix, from, to int, prefilled map[string]bool) {
	t.Helper()
	ctx := context.Background()
	work := make(chan int)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				b := subnet.Addr().As4()
				v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(i) + 1
				addr := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
				node := fmt.Sprintf("held-%d", i%100)
				uid := fmt.Sprintf("00000000-0000-4000-ffff-%012d", i)
				obj := &kubeipam.Alloc{APIVersion: "spinneret.io/v1alpha1", Kind: "IPAllocation",
					Metadata: kube.Meta{Name: kubeipam.AllocName(pool, addr), Labels: map[string]string{kubeipam.LabelPool: pool, kubeipam.LabelPodUID: uid,
						kubeipam.LabelPod: fmt.Sprintf("held-%d", i), kubeipam.LabelNode: node}},
					Spec: kubeipam.AllocSpec{Pool: pool, Address: addr.String(), Pod: kubeipam.PodRef{Namespace: "held", Name: fmt.Sprintf("held-%d", i), UID: uid},
						ContainerID: fmt.Sprintf("held-c%d", i), Interface: "eth0", Node: node}}
				err := c.Create(ctx, "/apis/spinneret.io/v1alpha1/ipallocations", obj, nil)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("prefill %s: %w", addr, err))
				}
				prefilled[addr.String()] = true
				mu.Unlock()
			}
		})
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d prefill errors, the first: %v", len(errs), errs[0])
	}
}
