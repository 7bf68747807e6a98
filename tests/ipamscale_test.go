package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/ipam/kubeipam"
)

// The scale case of the kubernetes IPAM backend: simulated nodes, each a
// separate process (this test binary run again with SPINNERET_IPAM_LOADER
// set), each running many allocations at once as a node's concurrent CNI
// ADDs would, against one real API server.

// loaderResult is what one simulated node reports.
type loaderResult struct {
	Node      string    `json:"node"`
	Addrs     []string  `json:"addrs"`
	LatencyMS []float64 `json:"latencyMS"`
	Failures  []string  `json:"failures"`
	Requests  int64     `json:"requests"`
	// Read: bytes of the API server's answers
	Read int64 `json:"read"`
	// PoolListRead: of which the pool's allocation lists
	PoolListRead int64 `json:"poolListRead"`
	Conflicts    int   `json:"conflicts"`
	// Kinds: per kind of request, how many and their total milliseconds
	Kinds map[string][2]float64 `json:"kinds"`
	// Holds (storm): every address a pod held, and when (Unix ns, from
	// the allocation's return to the release's call; To 0: still held)
	Holds []hold `json:"holds,omitempty"`
	// Fresh (storm): new sandboxes that got an address of their own, not
	// the pod's (the API server's cache did not show it yet)
	Fresh int `json:"fresh,omitempty"`
}

// hold is one address held by one sandbox of a pod.
type hold struct {
	Addr, Pod, Sandbox string
	From, To           int64
}

// requestKind names a request for the per-kind numbers.
func requestKind(method, path string, code int) string {
	k := method
	switch {
	case strings.Contains(path, "spinneret.io%2Fblock"):
		k += " block-allocations"
	case strings.Contains(path, "spinneret.io%2Fnode%3D"):
		k += " node-allocations"
	case strings.Contains(path, "labelSelector=spinneret.io%2Fpool%3D"):
		k += " pool-allocations"
	case strings.Contains(path, "labelSelector=spinneret.io%2Fpod%3D"):
		k += " pod-allocations"
	case strings.Contains(path, "/ippools"), strings.Contains(path, "/reservedips"):
		k += " pools"
	default:
		k += " allocation"
	}
	if code != 0 {
		k += fmt.Sprintf(" %d", code)
	}
	return k
}

func scaleUID(node string, i int) string {
	n, _ := strconv.Atoi(node[len("node-"):])
	return fmt.Sprintf("00000000-0000-4000-%04d-%012d", n, i)
}

// runLoader is the simulated node: SPINNERET_IPAM_LOADER is "allocate" or
// "release"; it works for pods 0..count-1 of its node, all at once, and
// prints a loaderResult.
func runLoader(mode string) {
	node, pool := os.Getenv("LOADER_NODE"), os.Getenv("LOADER_POOL")
	count, _ := strconv.Atoi(os.Getenv("LOADER_COUNT"))
	c, err := kube.Load(os.Getenv("LOADER_KUBECONFIG"), 30*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stateDir := os.Getenv("LOADER_STATE")
	res := loaderResult{Node: node, LatencyMS: make([]float64, count), Addrs: make([]string, count), Kinds: map[string][2]float64{}}
	var mu sync.Mutex
	kube.Trace = func(r kube.Request) {
		mu.Lock()
		defer mu.Unlock()
		code := r.Code
		if code == http.StatusOK {
			code = 0 // the kinds name a failure's code only
		}
		k := requestKind(r.Method, r.Path, code)
		res.Read += int64(r.Bytes)
		if strings.HasSuffix(k, " pool-allocations") {
			res.PoolListRead += int64(r.Bytes)
		}
		v := res.Kinds[k]
		res.Kinds[k] = [2]float64{v[0] + 1, v[1] + float64(r.Took.Microseconds())/1000}
	}
	var wg sync.WaitGroup
	ctx := context.Background()
	refsPath := filepath.Join(stateDir, "refs.json")
	refs := make([][]ipam.KubeRef, count)
	if mode == "release" {
		b, _ := os.ReadFile(refsPath)
		json.Unmarshal(b, &refs)
	}
	if mode == "storm" {
		rounds, _ := strconv.Atoi(os.Getenv("LOADER_ROUNDS"))
		for i := range count {
			wg.Go(func() {
				holds, conflicts, fresh, failures := stormPod(ctx, c, stateDir, node, pool, i, rounds)
				mu.Lock()
				defer mu.Unlock()
				res.Holds = append(res.Holds, holds...)
				res.Fresh += fresh
				res.Conflicts += conflicts
				res.Failures = append(res.Failures, failures...)
			})
		}
		wg.Wait()
		res.Requests = kube.Requests.Load()
		json.NewEncoder(os.Stdout).Encode(&res)
		os.Exit(0)
	}
	for i := range count {
		wg.Go(func() {
			uid, cid := scaleUID(node, i), fmt.Sprintf("%s-c%d", node, i)
			start := time.Now()
			var addr string
			var conflicts int
			var err error
			if mode == "release" {
				// as DEL does: from what the ADD recorded in its journal
				var n int
				if n, err = kubeipam.ReleaseRefs(ctx, c, stateDir, refs[i]); err == nil && n != 1 {
					err = fmt.Errorf("released %d allocations, want 1", n)
				}
			} else {
				pod := kubeipam.Pod{PodRef: kubeipam.PodRef{Namespace: "scale", Name: fmt.Sprintf("%s-%d", node, i), UID: uid}}
				k := kubeipam.New(ctx, c, stateDir, node, 5*time.Second, pod)
				var pools []conf.Pool
				if pools, err = k.Select(kubeipam.Selection{IfName: "eth0", Network: []string{pool}}); err == nil {
					var al []ipam.Allocation
					al, err = k.Allocate(ipam.Owner{ContainerID: cid, IfName: "eth0"}, []ipam.Request{{IfName: "eth0", Pools: pools}})
					if err == nil {
						addr = al[0].Address.Addr().String()
						refs[i] = []ipam.KubeRef{*al[0].Object}
					}
				}
				conflicts = k.Conflicts
			}
			d := float64(time.Since(start).Microseconds()) / 1000
			mu.Lock()
			defer mu.Unlock()
			res.LatencyMS[i], res.Addrs[i] = d, addr
			res.Conflicts += conflicts
			if err != nil {
				res.Failures = append(res.Failures, fmt.Sprintf("pod %d: %v", i, err))
			}
		})
	}
	wg.Wait()
	if mode == "allocate" {
		b, _ := json.Marshal(refs)
		os.WriteFile(refsPath, b, 0o600)
	}
	res.Requests = kube.Requests.Load()
	json.NewEncoder(os.Stdout).Encode(&res)
	os.Exit(0)
}

// stormPod is one pod of a storm: ADD, then rounds of a new sandbox. An
// even pod's old sandbox is deleted first, then the new one added (it may
// get any address); an odd pod's new sandbox is added first (it takes the
// pod's address over), then the old one's late DEL comes, which must
// free nothing. It returns every address the pod held, and when.
func stormPod(ctx context.Context, c *kube.Client, stateDir, node, pool string, i, rounds int) ([]hold, int, int, []string) {
	uid := scaleUID(node, i)
	name := fmt.Sprintf("%s-%d", node, i)
	var holds []hold
	var failures []string
	conflicts, fresh := 0, 0
	add := func(cid string) (*ipam.KubeRef, bool) {
		k := kubeipam.New(ctx, c, stateDir, node, 5*time.Second, kubeipam.Pod{PodRef: kubeipam.PodRef{Namespace: "scale", Name: name, UID: uid}})
		defer func() { conflicts += k.Conflicts }()
		pools, err := k.Select(kubeipam.Selection{IfName: "eth0", Network: []string{pool}})
		if err != nil {
			failures = append(failures, fmt.Sprintf("pod %d select: %v", i, err))
			return nil, false
		}
		al, err := k.Allocate(ipam.Owner{ContainerID: cid, IfName: "eth0"}, []ipam.Request{{IfName: "eth0", Pools: pools}})
		if err != nil {
			failures = append(failures, fmt.Sprintf("pod %d ADD %s: %v", i, cid, err))
			return nil, false
		}
		holds = append(holds, hold{Addr: al[0].Address.Addr().String(), Pod: name, Sandbox: cid, From: time.Now().UnixNano()})
		return al[0].Object, true
	}
	// del releases the sandbox's allocations as DEL does (from its journal's
	// record) and ends its hold; want is how many it must free
	del := func(cid string, ref *ipam.KubeRef, want int) {
		at := time.Now().UnixNano()
		n, err := kubeipam.ReleaseRefs(ctx, c, stateDir, []ipam.KubeRef{*ref})
		if err == nil && n != want {
			err = fmt.Errorf("released %d allocations, want %d", n, want)
		}
		if err != nil {
			failures = append(failures, fmt.Sprintf("pod %d DEL %s: %v", i, cid, err))
		}
		for h := range holds {
			if holds[h].Sandbox == cid && holds[h].To == 0 && want > 0 {
				holds[h].To = at
			}
		}
	}
	cid := fmt.Sprintf("%s-c%d-0", node, i)
	ref, ok := add(cid)
	for r := 1; ok && r <= rounds; r++ {
		next := fmt.Sprintf("%s-c%d-%d", node, i, r)
		if i%2 == 0 {
			del(cid, ref, 1)
			ref, ok = add(next)
		} else {
			var nref *ipam.KubeRef
			if nref, ok = add(next); ok {
				// the take-over changed the object: the old sandbox's
				// late DEL (its recorded version) frees nothing; unless
				// the API server's cache did not show the pod's object
				// yet, and the new sandbox got an address of its own
				want := 0
				if nref.Name != ref.Name {
					want = 1
					fresh++
				}
				del(cid, ref, want)
				for h := range holds {
					if holds[h].Sandbox == cid && holds[h].To == 0 {
						holds[h].To = holds[len(holds)-1].From // the new sandbox's, same pod
					}
				}
				ref = nref
			}
		}
		cid = next
	}
	return holds, conflicts, fresh, failures
}

// runNodes runs the simulated nodes as processes at once and gathers their
// reports.
func runNodes(t testing.TB, mode, kubeconfig, pool string, nodes, perNode int, stateRoot string) ([]loaderResult, time.Duration) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]loaderResult, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	start := time.Now()
	for n := range nodes {
		wg.Go(func() {
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), "SPINNERET_IPAM_LOADER="+mode, "LOADER_ROUNDS="+strconv.Itoa(stormRounds), "LOADER_NODE="+fmt.Sprintf("node-%d", n), "LOADER_POOL="+pool,
				"LOADER_COUNT="+strconv.Itoa(perNode), "LOADER_KUBECONFIG="+kubeconfig, "LOADER_STATE="+filepath.Join(stateRoot, fmt.Sprintf("node-%d", n)))
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				errs[n] = fmt.Errorf("node-%d: %v: %s", n, err, stderr.String())
				return
			}
			errs[n] = json.Unmarshal(stdout.Bytes(), &out[n])
		})
	}
	wg.Wait()
	d := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out, d
}

// stormRounds is how many new sandboxes each pod of a storm gets.
const stormRounds = 3

func pct(v []float64, p float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// TestKubeIPAMScale: 1000 allocations from 10 simulated nodes (separate
// processes, 100 at once each) into a pool of exactly 1000 addresses: no
// duplicate, no failure; the 1001st finds the pool exhausted; then all are
// released. It logs the numbers `make bench-ipam` reports: total time,
// p50/p99 per allocation, API requests per allocation, create conflicts.
func TestKubeIPAMScale(t *testing.T) {
	a := startAPI(t, nil)
	applyCRDs(t, a)
	// 10.20.0.1 - 10.20.3.232: exactly 1000 addresses
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "scale"},
		"spec": map[string]any{"subnet": "10.20.0.0/22", "ranges": []map[string]string{{"start": "10.20.0.1", "end": "10.20.3.232"}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	nodes, perNode := 10, 100
	if s := os.Getenv("SPINNERET_SCALE"); s != "" { // "nodes x perNode", for experiments
		fmt.Sscanf(s, "%dx%d", &nodes, &perNode)
	}
	stateRoot := t.TempDir()
	res, total := runNodes(t, "allocate", a.Kubeconfig, "scale", nodes, perNode, stateRoot)
	var lat []float64
	var requests int64
	conflicts := 0
	kinds := map[string][2]float64{}
	seen := map[string]string{}
	for _, r := range res {
		for _, f := range r.Failures {
			t.Errorf("%s: %s", r.Node, f)
		}
		for i, ad := range r.Addrs {
			if ad == "" {
				continue
			}
			if other, dup := seen[ad]; dup {
				t.Errorf("%s given to %s pod %d and to %s", ad, r.Node, i, other)
			}
			seen[ad] = fmt.Sprintf("%s pod %d", r.Node, i)
		}
		lat = append(lat, r.LatencyMS...)
		requests += r.Requests
		conflicts += r.Conflicts
		for k, v := range r.Kinds {
			kinds[k] = [2]float64{kinds[k][0] + v[0], kinds[k][1] + v[1]}
		}
	}
	for k, v := range kinds {
		t.Logf("  %-28s %5.0f requests, mean %.1f ms", k, v[0], v[1]/v[0])
	}
	if len(seen) != nodes*perNode || nodes*perNode > 1000 {
		t.Fatalf("%d distinct addresses allocated, want %d", len(seen), nodes*perNode)
	}
	t.Logf("allocate %d x %d: total %.2fs, per allocation p50 %.1f ms p99 %.1f ms, %.2f API requests per allocation, %d create conflicts",
		nodes, perNode, total.Seconds(), pct(lat, 0.5), pct(lat, 0.99), float64(requests)/float64(nodes*perNode), conflicts)

	var list struct{ Items []kubeipam.Alloc }
	apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &list)
	if len(list.Items) != nodes*perNode {
		t.Fatalf("%d IPAllocations, want %d", len(list.Items), nodes*perNode)
	}
	// the 1001st
	c, err := kube.Load(a.Kubeconfig, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := kubeipam.New(t.Context(), c, t.TempDir(), "node-x", 0, kubeipam.Pod{PodRef: kubeipam.PodRef{Namespace: "scale", Name: "one-more", UID: "00000000-0000-4000-9999-000000000001"}})
	pools, err := k.Select(kubeipam.Selection{IfName: "eth0", Network: []string{"scale"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Allocate(ipam.Owner{ContainerID: "x", IfName: "eth0"}, []ipam.Request{{IfName: "eth0", Pools: pools}}); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("the 1001st allocation: %v, want exhausted", err)
	}

	res, total = runNodes(t, "release", a.Kubeconfig, "scale", nodes, perNode, stateRoot)
	lat = lat[:0]
	for _, r := range res {
		for _, f := range r.Failures {
			t.Errorf("release %s: %s", r.Node, f)
		}
		lat = append(lat, r.LatencyMS...)
	}
	apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &list)
	if len(list.Items) != 0 {
		t.Fatalf("%d IPAllocations left after release", len(list.Items))
	}
	t.Logf("release %d x %d: total %.2fs, per release p50 %.1f ms p99 %.1f ms", nodes, perNode, total.Seconds(), pct(lat, 0.5), pct(lat, 0.99))
}

// TestKubeIPAMStorm: 1000 pods from 10 simulated nodes (separate
// processes, 100 at once each) into a pool of 1022 addresses, then each
// pod's sandbox replaced three times at once everywhere: half the pods'
// DEL before their re-ADD (which competes for the freed addresses: a
// conflict storm), half re-ADD first (the new sandbox takes the pod's
// address over) and then the old sandbox's late DEL, which frees nothing
// (or, when the API server's cache did not show the pod's address to the
// new sandbox yet, which then got another, the old one's).
// No address is ever held by two pods at the same time (every hold, from
// the allocation's return to the release's call, is compared across all
// nodes), nothing fails, and at the end the API server holds exactly one
// IPAllocation per pod, each the last sandbox's.
func TestKubeIPAMStorm(t *testing.T) {
	a := startAPI(t, nil)
	applyCRDs(t, a)
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "storm"},
		"spec": map[string]any{"subnet": "10.30.0.0/22", "ranges": []map[string]string{{"start": "10.30.0.1", "end": "10.30.3.254"}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create pool: %d", code)
	}
	nodes, perNode := 10, 100
	start := time.Now()
	res, total := runNodes(t, "storm", a.Kubeconfig, "storm", nodes, perNode, t.TempDir())
	byAddr := map[string][]hold{}
	last := map[string]hold{}
	conflicts, fresh, requests := 0, 0, int64(0)
	for _, r := range res {
		for _, f := range r.Failures {
			t.Errorf("%s: %s", r.Node, f)
		}
		conflicts += r.Conflicts
		fresh += r.Fresh
		requests += r.Requests
		for _, h := range r.Holds {
			byAddr[h.Addr] = append(byAddr[h.Addr], h)
			if h.To == 0 {
				if prev, dup := last[h.Pod]; dup {
					t.Errorf("pod %s holds %s (%s) and %s (%s) at the end", h.Pod, prev.Addr, prev.Sandbox, h.Addr, h.Sandbox)
				}
				last[h.Pod] = h
			}
		}
	}
	end := time.Now().UnixNano()
	overlaps := 0
	for addr, hs := range byAddr {
		for i := range hs {
			for j := i + 1; j < len(hs); j++ {
				x, y := hs[i], hs[j]
				if x.Pod == y.Pod {
					continue // a take-over by the pod's own new sandbox
				}
				xTo, yTo := x.To, y.To
				if xTo == 0 {
					xTo = end
				}
				if yTo == 0 {
					yTo = end
				}
				if x.From < yTo && y.From < xTo {
					overlaps++
					if overlaps <= 10 {
						t.Errorf("%s held by %s (%s) and %s (%s) at once", addr, x.Pod, x.Sandbox, y.Pod, y.Sandbox)
					}
				}
			}
		}
	}
	if len(last) != nodes*perNode {
		t.Errorf("%d pods hold an address at the end, want %d", len(last), nodes*perNode)
	}
	var list struct{ Items []kubeipam.Alloc }
	apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &list)
	if len(list.Items) != nodes*perNode {
		t.Errorf("%d IPAllocations after the storm, want %d", len(list.Items), nodes*perNode)
	}
	for _, it := range list.Items {
		h, ok := last[it.Spec.Pod.Name]
		if !ok || h.Addr != it.Spec.Address || h.Sandbox != it.Spec.ContainerID {
			t.Errorf("IPAllocation %s: pod %s sandbox %s; the pod's last sandbox holds %+v", it.Metadata.Name, it.Spec.Pod.Name, it.Spec.ContainerID, h)
		}
	}
	holds := 0
	for _, hs := range byAddr {
		holds += len(hs)
	}
	t.Logf("storm: %d pods x %d sandboxes from %d nodes: %d holds of %d addresses in %.1fs (%.1fs with set-up), %d create conflicts, %.1f API requests per sandbox, %d re-ADDs before DEL not shown the pod's address by the cache, %d overlaps",
		nodes*perNode, stormRounds+1, nodes, holds, len(byAddr), total.Seconds(), time.Since(start).Seconds(), conflicts, float64(requests)/float64(holds), fresh, overlaps)
}
