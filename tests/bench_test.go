package tests

import (
	"context"

	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/request"
)

// benchPods is how many pods BenchmarkPodLifecycle attaches and detaches.
const benchPods = 200

// BenchmarkPodLifecycle runs ADD for 200 pods, then DEL for each, through
// libcni and the production binary (a whole process per call, as a runtime
// does), with local IPAM and the underlay coordinator on, for one macvlan
// NIC and for three (eth0, net1, net2 on three networks), IPv4 and dual
// stack, and reports p50/p90/p99 of each. "add-p50-first50" against
// "add-p50-last50" shows whether ADD slows down as the node fills up. Run
// with `make bench`.
func BenchmarkPodLifecycle(b *testing.B) {
	for _, nics := range []int{1, 3} {
		for _, fam := range []family{v4, dual} {
			b.Run(fmt.Sprintf("%dnic-%s", nics, fam), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					benchLifecycle(b, nics, fam)
				}
			})
		}
	}
}

// benchWorld is one node with its networks and benchPods empty pods, and
// the conflist and runtime confs that attach them through the binary in
// bin; or (chain) the Multus-style chain of the reference plugins.
type benchWorld struct {
	e *env
	l *libcni.NetworkConfigList
	// chain: one conflist per NIC (macvlan with host-local, then
	// tuning), run one after another as Multus runs its delegates
	chain []*libcni.NetworkConfigList
	pods  []*netlab.NS
	rt    func(i int) *libcni.RuntimeConf
}

// benchSpec is what a benchWorld attaches, and how.
type benchSpec struct {
	nics int
	fam  family
	bin  string // the plugin directory
	// plugin is more of spinneret's plugin-level config (`"coordinator":
	// {...}`), or "" for none
	plugin string
	// chain: the reference plugins instead of spinneret
	chain bool
	// exec runs the plugins (nil: libcni's own)
	exec invoke.Exec
}

func newBenchWorld(b *testing.B, nics int, fam family, bin string) *benchWorld {
	return newBenchWorldOf(b, benchSpec{nics: nics, fam: fam, bin: bin})
}

func newBenchWorldOf(b *testing.B, s benchSpec) *benchWorld {
	topo, err := netlab.NewTopology(netlab.OwnedPrefix("spnbench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { topo.Close() })
	for len(topo.Nets) < s.nics {
		if _, err := topo.AddNet(); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	e := &env{topo: topo, dir: dir, ctx: context.Background(), cni: libcni.NewCNIConfigWithCacheDir([]string{s.bin}, filepath.Join(dir, "cache"), s.exec)}
	writeNodeConf(b, dir, "info")
	w := &benchWorld{e: e, pods: make([]*netlab.NS, benchPods)}
	parse := func(s string) *libcni.NetworkConfigList {
		l, err := libcni.NetworkConfFromBytes([]byte(s))
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	var networks, selected []string
	for i, n := range topo.Nets {
		if s.chain {
			// the same subnets, ranges and gateways; a default route on
			// eth0 alone, as spinneret without route tuning makes
			ranges := []string{fmt.Sprintf(`[{"subnet":"%s","rangeStart":"%s","rangeEnd":"%s","gateway":"%s"}]`, n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 250), n.GW4)}
			routes := []string{`{"dst":"0.0.0.0/0"}`}
			if s.fam == dual {
				ranges = append(ranges, fmt.Sprintf(`[{"subnet":"%s","rangeStart":"%s","rangeEnd":"%s","gateway":"%s"}]`, n.Subnet6, nth(n.Subnet6, 16), nth(n.Subnet6, 4000), n.GW6))
				routes = append(routes, `{"dst":"::/0"}`)
			}
			if i > 0 {
				routes = nil
			}
			w.chain = append(w.chain, parse(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[
				{"type":"macvlan","master":%q,"mode":"bridge","ipam":{"type":"host-local","dataDir":%q,"ranges":[%s],"routes":[%s]}},
				{"type":"tuning","sysctl":{"net.ipv6.conf.IFNAME.accept_ra":"0","net.ipv6.conf.IFNAME.autoconf":"0"}}]}`,
				colours[i], n.Uplink, filepath.Join(dir, "host-local"), strings.Join(ranges, ","), strings.Join(routes, ","))))
			continue
		}
		pools := []string{fmt.Sprintf(`{"name":"%s-v4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
			colours[i], n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 250), n.GW4)}
		if s.fam == dual {
			pools = append(pools, fmt.Sprintf(`{"name":"%s-v6","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
				colours[i], n.Subnet6, nth(n.Subnet6, 16), nth(n.Subnet6, 4000), n.GW6))
		}
		networks = append(networks, fmt.Sprintf(`{"name":%q,"master":%q,"ipam":{"pools":[%s]}}`, colours[i], n.Uplink, strings.Join(pools, ",")))
		if i > 0 {
			selected = append(selected, colours[i])
		}
	}
	if !s.chain {
		plugin := ""
		if s.plugin != "" {
			plugin = s.plugin + ","
		}
		w.l = parse(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},%s"networks":[%s]}]}`, dir, plugin, strings.Join(networks, ",")))
	}
	w.rt = func(i int) *libcni.RuntimeConf {
		return podRT(fmt.Sprintf("bench-%d", i), w.pods[i], map[string]string{request.AnnotNetworks: strings.Join(selected, ",")})
	}
	for i := range w.pods {
		if w.pods[i], err = topo.NewPod(); err != nil {
			b.Fatal(err)
		}
	}
	return w
}

func (w *benchWorld) add(b *testing.B, i int) time.Duration {
	start := time.Now()
	if w.chain != nil {
		w.runChain(b, i, true)
	} else if _, err := w.e.add(w.l, w.rt(i)); err != nil {
		b.Fatalf("ADD %d: %v", i, err)
	}
	return time.Since(start)
}

func (w *benchWorld) del(b *testing.B, i int) time.Duration {
	start := time.Now()
	if w.chain != nil {
		w.runChain(b, i, false)
	} else if err := w.e.del(w.l, w.rt(i)); err != nil {
		b.Fatalf("DEL %d: %v", i, err)
	}
	return time.Since(start)
}

// runChain runs the chain's conflists for pod i, one per NIC (eth0, net1,
// ...), DEL in reverse, as a runtime with Multus runs its delegates.
func (w *benchWorld) runChain(b *testing.B, i int, add bool) {
	err := w.e.topo.Node.Do(func() error {
		for k := range w.chain {
			if !add {
				k = len(w.chain) - 1 - k
			}
			rt := podRT(fmt.Sprintf("chain-%d", i), w.pods[i], nil)
			rt.IfName = ifName(k)
			var err error
			if add {
				_, err = w.e.cni.AddNetworkList(w.e.ctx, w.chain[k], rt)
			} else {
				err = w.e.cni.DelNetworkList(w.e.ctx, w.chain[k], rt)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", w.chain[k].Name, err)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatalf("chain pod %d (add %v): %v", i, add, err)
	}
}

func benchLifecycle(b *testing.B, nics int, fam family) {
	w := newBenchWorld(b, nics, fam, prodBinDir)
	dir := w.e.dir
	b.ResetTimer()
	adds := make([]time.Duration, benchPods)
	for i := range adds {
		adds[i] = w.add(b, i)
	}
	dels := make([]time.Duration, benchPods)
	for i := range dels {
		dels[i] = w.del(b, i)
	}
	b.StopTimer()
	addP, delP := percentiles(adds), percentiles(dels)
	b.ReportMetric(millis(addP[0]), "add-p50-ms")
	b.ReportMetric(millis(addP[1]), "add-p90-ms")
	b.ReportMetric(millis(addP[2]), "add-p99-ms")
	b.ReportMetric(millis(delP[0]), "del-p50-ms")
	b.ReportMetric(millis(delP[1]), "del-p90-ms")
	b.ReportMetric(millis(delP[2]), "del-p99-ms")
	b.ReportMetric(millis(percentiles(adds[:50])[0]), "add-p50-first50-ms")
	b.ReportMetric(millis(percentiles(adds[benchPods-50:])[0]), "add-p50-last50-ms")

	// the plugin's own account of each ADD (its log line), without process
	// start and libcni: total and per phase, and first vs last 50 pods
	phases := pluginPhases(b, filepath.Join(dir, "spinneret.log"), "ADD")
	for _, name := range []string{"ms", "load-ms", "check-ms", "allocate-ms", "apply-ms", "commit-ms"} {
		v := phases[name]
		if len(v) != benchPods {
			b.Fatalf("%d ADD log lines with %s, want %d", len(v), name, benchPods)
		}
		b.ReportMetric(millis(percentiles(v)[0]), "plugin-add-"+strings.TrimSuffix(name, "-ms")+"-p50-ms")
	}
	b.ReportMetric(millis(percentiles(phases["ms"][:50])[0]), "plugin-add-p50-first50-ms")
	b.ReportMetric(millis(percentiles(phases["ms"][benchPods-50:])[0]), "plugin-add-p50-last50-ms")
}

// BenchmarkPodLifecycleVsBaseline is BenchmarkPodLifecycle's 200 pods,
// each ADD and DEL through this tree's binary interleaved with the same
// call through a baseline binary (SPINNERET_BENCH_BASELINE: its
// directory), each on a node of its own: both see the same machine at the
// same moment, so the ratios (new/old p50) hold though its speed drifts.
// Run with `make bench-baseline` (BASELINE=<git revision>).
func BenchmarkPodLifecycleVsBaseline(b *testing.B) {
	base := os.Getenv("SPINNERET_BENCH_BASELINE")
	if base == "" {
		b.Fatal("SPINNERET_BENCH_BASELINE names no baseline binary's directory; run make bench-baseline")
	}
	for _, nics := range []int{1, 3} {
		for _, fam := range []family{v4, dual} {
			b.Run(fmt.Sprintf("%dnic-%s", nics, fam), func(b *testing.B) {
				for range b.N {
					cur, old := newBenchWorld(b, nics, fam, prodBinDir), newBenchWorld(b, nics, fam, base)
					var adds, dels [2][]time.Duration
					b.ResetTimer()
					// which binary goes first alternates, so neither gains
					// from the other warming the caches
					worlds := [2]*benchWorld{cur, old}
					for i := range benchPods {
						for k := range 2 {
							w := (i + k) % 2
							adds[w] = append(adds[w], worlds[w].add(b, i))
						}
					}
					for i := range benchPods {
						for k := range 2 {
							w := (i + k) % 2
							dels[w] = append(dels[w], worlds[w].del(b, i))
						}
					}
					b.StopTimer()
					for _, m := range []struct {
						name string
						d    [2][]time.Duration
					}{{"add", adds}, {"del", dels}} {
						n, o := percentiles(m.d[0])[0], percentiles(m.d[1])[0]
						b.ReportMetric(millis(n), m.name+"-p50-ms")
						b.ReportMetric(millis(o), m.name+"-p50-baseline-ms")
						b.ReportMetric(float64(n)/float64(o), m.name+"-p50-new/old")
					}
				}
			})
		}
	}
}

// pluginPhases reads the durations the plugin logged for each call of verb,
// in call order: "ms" (the whole call) and each "<phase>-ms".
func pluginPhases(b *testing.B, logFile, verb string) map[string][]time.Duration {
	return pluginPhasesOf(b, logFile, verb, "")
}

// pluginPhasesOf is pluginPhases for the calls whose log line holds mark.
func pluginPhasesOf(b *testing.B, logFile, verb, mark string) map[string][]time.Duration {
	data, err := os.ReadFile(logFile)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][]time.Duration{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, " msg=ok ") || !strings.Contains(line, " verb="+verb+" ") || !strings.Contains(line, mark) {
			continue
		}
		for _, field := range strings.Fields(line) {
			k, v, ok := strings.Cut(field, "=")
			if !ok || (k != "ms" && !strings.HasSuffix(k, "-ms")) {
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("log field %s: %v", field, err)
			}
			out[k] = append(out[k], time.Duration(f*float64(time.Millisecond)))
		}
	}
	return out
}

// millis is d in milliseconds, as the benchmarks report and print it.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentiles returns p50, p90 and p99 (nearest rank).
func percentiles(ds []time.Duration) [3]time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) time.Duration { return s[int(p*float64(len(s)-1)+0.5)] }
	return [3]time.Duration{at(0.50), at(0.90), at(0.99)}
}

// ifName is the name of a pod's NIC k: eth0, net1, net2, ...
func ifName(k int) string {
	if k == 0 {
		return "eth0"
	}
	return fmt.Sprintf("net%d", k)
}
