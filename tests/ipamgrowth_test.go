package tests

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
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
// nodes would have: a node's in its blocks), then simulated nodes
// (processes, cold node caches: as every node is once per poolCacheTTL)
// allocate 10 addresses each and release them. Per level it prints the
// API requests and the bytes read per allocation, and p50. It holds, at
// every level: no failure, no address given twice or taken from a
// prefill allocation, every release done; the requests per allocation at
// most 1.5x (plus one) what they were with the fewest held, and the bytes
// too, plus what the fill predicts: the held blocks a node reads looking
// for an empty one (they do not grow with the pool); and the pool's whole
// list, over the 4 MiB one answer may be at 10,000, read whole (before
// pages that failed).
// SPINNERET_IPAM_GROWTH=full (make bench-ipam) adds 50,000 allocations
// and 100 nodes.
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
	type cost struct{ requests, kib float64 }
	base := map[int]cost{} // by node count, with the fewest held
	var out strings.Builder
	fmt.Fprintf(&out, "%-9s %-6s %-7s %-14s %-16s %-8s %-11s %-13s %s\n", "held", "nodes", "allocs", "requests/alloc", "KiB read/alloc", "p50 ms", "conflicts", "block reads", "whole-pool lists (KiB, requests)")
	for _, held := range prefills {
		growthPrefill(t, c, poolName, subnet, len(prefilled), held, prefilled)
		// the whole pool, as a node reads it when its blocks are full and
		// no empty block is found: over one answer's cap at 10,000
		var read int
		kube.Trace = func(r kube.Request) { read += r.Bytes }
		all, err := kube.List[*kubeipam.Alloc](context.Background(), c, "/apis/spinneret.io/v1alpha1/ipallocations", kubeipam.LabelPool+"="+poolName)
		kube.Trace = nil
		if err != nil || len(all) != held || held >= 10000 && read < 4<<20 {
			t.Errorf("%d held: the pool's list read %d of them, %d KiB (want over 4 MiB from 10,000), %v", held, len(all), read>>10, err)
		}
		objKiB := float64(read) / 1024 / float64(held)
		// a node looking for an empty block reads blocks it knows nothing
		// of; each one held (a fraction f of them) is read whole (64
		// objects: the watch cache does not page): f/(1-f) of those per
		// empty block found, expected. That is what may grow with the
		// fill, and only that.
		f := float64(held) / float64(1<<16)
		misses := f/(1-f) + 2
		for _, nodes := range nodeCounts {
			stateRoot := t.TempDir()
			res, _ := runNodes(t, "allocate", a.Kubeconfig, poolName, nodes, perNode, stateRoot)
			var lat []float64
			var requests, read int64
			var listKiB, lists, blockReads float64
			conflicts := 0
			kinds := map[string][2]float64{}
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
				conflicts += r.Conflicts
				for k, v := range r.Kinds {
					kinds[k] = [2]float64{kinds[k][0] + v[0], kinds[k][1] + v[1]}
				}
				if v, ok := r.Kinds["GET pool-allocations"]; ok {
					lists += v[0]
				}
				if v, ok := r.Kinds["GET block-allocations"]; ok {
					blockReads += v[0]
				}
				listKiB += float64(r.PoolListRead) / 1024
			}
			n := float64(len(seen))
			got := cost{float64(requests) / n, float64(read) / 1024 / n}
			fmt.Fprintf(&out, "%-9d %-6d %-7d %-14.2f %-16.1f %-8.1f %-11d %-13.0f %.0f, %.0f\n", held, nodes, len(seen), got.requests, got.kib, pct(lat, 0.5), conflicts, blockReads, listKiB, lists)
			var names []string
			for k := range kinds {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				fmt.Fprintf(&out, "    %-28s %5.0f requests, %7.1f ms each\n", k, kinds[k][0], kinds[k][1]/kinds[k][0])
			}
			if b, ok := base[nodes]; !ok {
				base[nodes] = got
			} else if extra := misses * 64 * objKiB / perNode; got.requests > 1.5*b.requests+1 || got.kib > 1.5*b.kib+extra {
				t.Errorf("%d held, %d nodes: %.2f requests and %.1f KiB per allocation, against %.2f and %.1f with %d held (plus %.1f KiB of held blocks read): the cost grows with the pool",
					held, nodes, got.requests, got.kib, b.requests, b.kib, prefills[0], extra)
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
				node := fmt.Sprintf("held-%d", i/64%100) // a block each
				uid := fmt.Sprintf("00000000-0000-4000-ffff-%012d", i)
				obj := &kubeipam.Alloc{APIVersion: "spinneret.io/v1alpha1", Kind: "IPAllocation",
					Metadata: kube.Meta{Name: kubeipam.AllocName(pool, addr), Labels: map[string]string{kubeipam.LabelPool: pool, kubeipam.LabelPodUID: uid,
						kubeipam.LabelPod: fmt.Sprintf("held-%d", i), kubeipam.LabelNode: node,
						kubeipam.LabelBlock: kubeipam.BlockLabel(kubeipam.BlockOf(subnet, addr))}},
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
