package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// whereaboutsVersion is the Whereabouts the comparison builds (make
// whereabouts-bin: from the Go module proxy, cached by version).
const whereaboutsVersion = "v0.9.2" // WHEREABOUTS_VERSION in the Makefile

// BenchmarkWhereabouts (make bench-whereabouts; not in make test:
// Whereabouts is slow) runs the workload of TestKubeIPAMScale on one real
// API server twice: spinneret's kubernetes backend (10 simulated nodes,
// each a process running its allocations at once), and Whereabouts (the
// IPAM plugin binary, one process per allocation as the runtime runs it,
// 10 nodes running up to 10 at once each: Whereabouts takes one Lease per
// pool for every allocation, so more at once only wait longer), each into
// its own pool of the same size. It prints the wall time of both, p50
// and p99 per allocation, and the ratio; it holds spinneret to no
// failure and no address given twice, and counts Whereabouts' failures. SPINNERET_WA_PER_NODE sets the allocations
// per node (100: 1000 in all).
func BenchmarkWhereabouts(b *testing.B) {
	bin := "/var/cache/spinneret/whereabouts/" + whereaboutsVersion + "/whereabouts"
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("%v: run make whereabouts-bin", err)
	}
	// its CRDs, from its module
	dl := exec.Command("go", "mod", "download", "-json", "github.com/k8snetworkplumbingwg/whereabouts@"+whereaboutsVersion)
	dl.Env = append(os.Environ(), "GONOSUMDB=github.com/k8snetworkplumbingwg", "GOFLAGS=-mod=mod")
	js, err := dl.Output()
	var mod struct{ Dir string }
	if err != nil || json.Unmarshal(js, &mod) != nil || mod.Dir == "" {
		b.Fatalf("go mod download whereabouts@%s: %v: %s", whereaboutsVersion, err, js)
	}
	crdDir := filepath.Join(mod.Dir, "doc/crds")
	perNode := 100
	if v, err := strconv.Atoi(os.Getenv("SPINNERET_WA_PER_NODE")); err == nil && v > 0 {
		perNode = v
	}
	const nodes = 10
	total := nodes * perNode
	a := startAPI(b, nil)
	applyCRDs(b, a)
	for _, f := range []string{"whereabouts.cni.cncf.io_ippools.yaml", "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml"} {
		y, err := os.ReadFile(filepath.Join(crdDir, f))
		if err != nil {
			b.Fatal(err)
		}
		var crd map[string]any
		if err := yaml.Unmarshal(y, &crd); err != nil {
			b.Fatal(err)
		}
		if code := apiRequest(b, a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, nil); code != http.StatusCreated {
			b.Fatalf("create CRD %s: %d", f, code)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for apiRequest(b, a, http.MethodGet, "/apis/whereabouts.cni.cncf.io/v1alpha1/ippools", nil, nil) != http.StatusOK {
		if time.Now().After(deadline) {
			b.Fatal("whereabouts ippools not served after 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// pools of exactly total addresses (plus room: Whereabouts' range
	// counts network and broadcast of its CIDR)
	start4 := netip.MustParseAddr("10.40.0.1")
	end4 := netip.AddrFrom4(addr4Plus(start4.As4(), total-1))
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "bench"},
		"spec": map[string]any{"subnet": "10.40.0.0/16", "ranges": []map[string]string{{"start": start4.String(), "end": end4.String()}}}}
	if code := apiRequest(b, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", pool, nil); code != http.StatusCreated {
		b.Fatalf("create pool: %d", code)
	}

	// spinneret
	res, spnTook := runNodes(b, "allocate", a.Kubeconfig, "bench", nodes, perNode, b.TempDir())
	var spnLat []float64
	spnSeen := map[string]bool{}
	for _, r := range res {
		for _, f := range r.Failures {
			b.Errorf("spinneret %s: %s", r.Node, f)
		}
		for _, ad := range r.Addrs {
			if ad != "" && spnSeen[ad] {
				b.Errorf("spinneret gave %s twice", ad)
			}
			spnSeen[ad] = true
		}
		spnLat = append(spnLat, r.LatencyMS...)
	}

	// Whereabouts
	dir := b.TempDir()
	// the flat file Whereabouts insists on (its DaemonSet writes one)
	flat, _ := json.Marshal(map[string]any{"datastore": "kubernetes", "kubernetes": map[string]any{"kubeconfig": a.Kubeconfig}})
	if err := os.WriteFile(filepath.Join(dir, "whereabouts.conf"), flat, 0o600); err != nil {
		b.Fatal(err)
	}
	netconf, _ := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": "wa-bench", "type": "macvlan",
		"ipam": map[string]any{"type": "whereabouts", "range": "10.41.0.0/16", "range_start": "10.41.0.1",
			"range_end": netip.AddrFrom4(addr4Plus([4]byte{10, 41, 0, 1}, total-1)).String(),
			"log_level": "error", "log_file": filepath.Join(dir, "whereabouts.log"), "configuration_path": filepath.Join(dir, "whereabouts.conf"),
			"kubernetes": map[string]any{"kubeconfig": a.Kubeconfig}}})
	var mu sync.Mutex
	var waLat []float64
	waSeen := map[string]bool{}
	var waFail []string
	waStart := time.Now()
	var wg sync.WaitGroup
	for n := range nodes {
		work := make(chan int)
		for range 10 {
			wg.Go(func() {
				for i := range work {
					cmd := exec.Command(bin)
					cmd.Stdin = bytes.NewReader(netconf)
					cmd.Env = []string{"CNI_COMMAND=ADD", fmt.Sprintf("CNI_CONTAINERID=wa-%d-%d", n, i), "CNI_NETNS=/var/run/netns/none",
						"CNI_IFNAME=eth0", "CNI_PATH=/nonexistent", fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=bench;K8S_POD_NAME=wa-%d-%d", n, i),
						fmt.Sprintf("NODENAME=node-%d", n)}
					var out, errb bytes.Buffer
					cmd.Stdout, cmd.Stderr = &out, &errb
					t0 := time.Now()
					err := cmd.Run()
					d := float64(time.Since(t0).Microseconds()) / 1000
					var r struct {
						IPs []struct {
							Address string `json:"address"`
						} `json:"ips"`
					}
					mu.Lock()
					waLat = append(waLat, d)
					if err == nil && json.Unmarshal(out.Bytes(), &r) == nil && len(r.IPs) == 1 {
						if waSeen[r.IPs[0].Address] {
							waFail = append(waFail, "gave "+r.IPs[0].Address+" twice")
						}
						waSeen[r.IPs[0].Address] = true
					} else {
						waFail = append(waFail, fmt.Sprintf("node-%d pod %d: %v: %s %s", n, i, err, out.String(), errb.String()))
					}
					mu.Unlock()
				}
			})
		}
		wg.Go(func() {
			for i := range perNode {
				work <- i
			}
			close(work)
		})
	}
	wg.Wait()
	waTook := time.Since(waStart)
	// Whereabouts' own failures (its leader election timing out under
	// contention) are part of what it measures: counted, not failed on
	for i, f := range waFail {
		if i < 3 {
			b.Logf("whereabouts failed: %s", f)
		}
	}
	slices.Sort(waLat)
	b.Logf("\n%d allocations from %d nodes into a pool of %d:\n"+
		"  spinneret   %8.1f s, p50 %7.0f ms, p99 %7.0f ms, %d distinct\n"+
		"  whereabouts %8.1f s, p50 %7.0f ms, p99 %7.0f ms, %d distinct, %d failed (%s)\n"+
		"  whereabouts/spinneret %.1fx (wall time)",
		total, nodes, total, spnTook.Seconds(), pct(spnLat, 0.5), pct(spnLat, 0.99), len(spnSeen),
		waTook.Seconds(), pct(waLat, 0.5), pct(waLat, 0.99), len(waSeen), len(waFail), whereaboutsVersion, waTook.Seconds()/spnTook.Seconds())
}

func addr4Plus(b [4]byte, n int) [4]byte {
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}
