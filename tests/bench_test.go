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

func benchLifecycle(b *testing.B, nics int, fam family) {
	topo, err := netlab.NewTopology("spnbench")
	if err != nil {
		b.Fatal(err)
	}
	defer topo.Close()
	for len(topo.Nets) < nics {
		if _, err := topo.AddNet(); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	e := &env{topo: topo, dir: dir, ctx: context.Background(), cni: libcni.NewCNIConfigWithCacheDir([]string{prodBinDir}, filepath.Join(dir, "cache"), nil)}
	writeNodeConf(b, dir, "info")
	var networks, selected []string
	for i, n := range topo.Nets {
		pools := []string{fmt.Sprintf(`{"name":"%s-v4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
			colours[i], n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 250), n.GW4)}
		if fam == dual {
			pools = append(pools, fmt.Sprintf(`{"name":"%s-v6","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
				colours[i], n.Subnet6, nth(n.Subnet6, 16), nth(n.Subnet6, 4000), n.GW6))
		}
		networks = append(networks, fmt.Sprintf(`{"name":%q,"master":%q,"ipam":{"pools":[%s]}}`, colours[i], n.Uplink, strings.Join(pools, ",")))
		if i > 0 {
			selected = append(selected, colours[i])
		}
	}
	l, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"networks":[%s]}]}`, dir, strings.Join(networks, ","))))
	if err != nil {
		b.Fatal(err)
	}
	rt := func(i int, p *netlab.NS) *libcni.RuntimeConf {
		return podRT(fmt.Sprintf("bench-%d", i), p, map[string]string{request.AnnotNetworks: strings.Join(selected, ",")})
	}
	pods := make([]*netlab.NS, benchPods)
	for i := range pods {
		if pods[i], err = topo.NewPod(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	adds := make([]time.Duration, benchPods)
	for i, p := range pods {
		start := time.Now()
		if _, err := e.add(l, rt(i, p)); err != nil {
			b.Fatalf("ADD %d: %v", i, err)
		}
		adds[i] = time.Since(start)
	}
	dels := make([]time.Duration, benchPods)
	for i, p := range pods {
		start := time.Now()
		if err := e.del(l, rt(i, p)); err != nil {
			b.Fatalf("DEL %d: %v", i, err)
		}
		dels[i] = time.Since(start)
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	addP, delP := percentiles(adds), percentiles(dels)
	b.ReportMetric(ms(addP[0]), "add-p50-ms")
	b.ReportMetric(ms(addP[1]), "add-p90-ms")
	b.ReportMetric(ms(addP[2]), "add-p99-ms")
	b.ReportMetric(ms(delP[0]), "del-p50-ms")
	b.ReportMetric(ms(delP[1]), "del-p90-ms")
	b.ReportMetric(ms(delP[2]), "del-p99-ms")
	b.ReportMetric(ms(percentiles(adds[:50])[0]), "add-p50-first50-ms")
	b.ReportMetric(ms(percentiles(adds[benchPods-50:])[0]), "add-p50-last50-ms")

	// the plugin's own account of each ADD (its log line), without process
	// start and libcni: total and per phase, and first vs last 50 pods
	phases := pluginPhases(b, filepath.Join(dir, "spinneret.log"), "ADD")
	for _, name := range []string{"ms", "load-ms", "check-ms", "allocate-ms", "apply-ms", "commit-ms"} {
		v := phases[name]
		if len(v) != benchPods {
			b.Fatalf("%d ADD log lines with %s, want %d", len(v), name, benchPods)
		}
		b.ReportMetric(ms(percentiles(v)[0]), "plugin-add-"+strings.TrimSuffix(name, "-ms")+"-p50-ms")
	}
	b.ReportMetric(ms(percentiles(phases["ms"][:50])[0]), "plugin-add-p50-first50-ms")
	b.ReportMetric(ms(percentiles(phases["ms"][benchPods-50:])[0]), "plugin-add-p50-last50-ms")
}

// pluginPhases reads the durations the plugin logged for each call of verb,
// in call order: "ms" (the whole call) and each "<phase>-ms".
func pluginPhases(b *testing.B, logFile, verb string) map[string][]time.Duration {
	data, err := os.ReadFile(logFile)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][]time.Duration{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, " msg=ok ") || !strings.Contains(line, " verb="+verb+" ") {
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

// percentiles returns p50, p90 and p99 (nearest rank).
func percentiles(ds []time.Duration) [3]time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) time.Duration { return s[int(p*float64(len(s)-1)+0.5)] }
	return [3]time.Duration{at(0.50), at(0.90), at(0.99)}
}
