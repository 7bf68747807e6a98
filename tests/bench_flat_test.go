package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// flatHeld are the numbers of pods BenchmarkFlat holds on the node while it
// measures, in turn; the last, one pod again after the others went, makes
// the baseline with the first (their mean), so that a drift of the
// machine's speed over the run does not read as growth. flatProbes is how
// many ADD and DEL it times at each.
var flatHeld = []int{1, 100, 1000, 1}

const flatProbes = 60

// flatSettle is how long BenchmarkFlat lets the node settle after adding
// held pods, before it times: each new pod sets the kernel's workers going
// for a few seconds (DAD, MLD reports, link-up route walks), work that
// grows with the pods on the node; after 900 pods added at once it went on
// through the probes that followed (kernel workers on CPU 388, 188, 111,
// 67, 39, then 6 samples a second in a perf profile). A node's pods are
// held, not all made in the last second: the steady state is what is
// measured.
const flatSettle = 6 * time.Second

// BenchmarkFlat holds 1, then 100, then 1000, then 1 again pods on the
// node (one macvlan NIC, IPv6 as the test network's IPv4 subnet is a /24,
// the underlay coordinator: a veth, a host route and the shared host rule
// per pod) and at each level times the ADD and then the DEL of 60 more,
// whole processes through libcni, and after each the same kernel work in
// this process (the probe's journaled plan done and undone: the floor).
// No step of either may read what grows with the node's pods: the p50s at
// 1000 against those at 1 (add-1000/1, del-1000/1; to the mean of the two
// one-pod levels) should stay within 10 %; where the kernel's own work
// grows with the pods (floor-add-1000/1), what spinneret adds to it
// (own-add: whole process minus floor, per probe) is what must stay flat.
// With the state dir on disk and on tmpfs (/dev/shm). Run with `make
// bench`.
func BenchmarkFlat(b *testing.B) {
	for _, store := range []string{"disk", "tmpfs"} {
		b.Run(store, func(b *testing.B) {
			for range b.N {
				benchFlat(b, store)
			}
		})
	}
}

func benchFlat(b *testing.B, store string) {
	topo, err := netlab.NewTopology(netlab.OwnedPrefix("spnbench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { topo.Close() })
	dir := b.TempDir()
	if store == "tmpfs" {
		if dir, err = os.MkdirTemp("/dev/shm", "spinneret-flat-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	e := &env{topo: topo, dir: dir, ctx: context.Background(), cni: libcni.NewCNIConfigWithCacheDir([]string{prodBinDir}, filepath.Join(dir, "cache"), nil)}
	writeNodeConf(b, dir, "info")
	n := topo.Nets[0]
	l, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"flat","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"networks":[{"name":"red","master":%q,"ipam":{"pools":[
		{"name":"red-v6","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}]}}]}]}`,
		dir, n.Uplink, n.Subnet6, nth(n.Subnet6, 16), nth(n.Subnet6, 8000), n.GW6)))
	if err != nil {
		b.Fatal(err)
	}
	rt := func(id string, p *netlab.NS) *libcni.RuntimeConf { return podRT(id, p, nil) }
	var held []*netlab.NS
	probes := make([]*netlab.NS, 4)
	for i := range probes {
		if probes[i], err = topo.NewPod(); err != nil {
			b.Fatal(err)
		}
	}
	stateDir := filepath.Join(dir, "state") // writeNodeConf's
	var p50s [][6]time.Duration
	delHeld := func(i int) {
		if err := e.del(l, rt(fmt.Sprintf("held-%d", i), held[i])); err != nil {
			b.Fatalf("DEL held pod %d: %v", i, err)
		}
	}
	b.ResetTimer()
	for li, level := range flatHeld {
		b.StopTimer()
		for len(held) < level {
			p, err := topo.NewPod()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := e.add(l, rt(fmt.Sprintf("held-%d", len(held)), p)); err != nil {
				b.Fatalf("ADD held pod %d: %v", len(held), err)
			}
			// held by its path alone, as a runtime holds it: 3,000 open
			// descriptors in this process cost each exec of the plugin
			// 0.1-0.2 ms more to close at exec
			p.Release()
			held = append(held, p)
		}
		for len(held) > level {
			// the pod goes, and its namespace with it, as a runtime
			// removes both
			delHeld(len(held) - 1)
			if err := held[len(held)-1].Close(); err != nil {
				b.Fatal(err)
			}
			held = held[:len(held)-1]
		}
		time.Sleep(flatSettle)
		b.StartTimer()
		var adds, dels, floorAdds, floorDels, ownAdds, ownDels []time.Duration
		for i := range flatProbes {
			id, p := fmt.Sprintf("probe-%d-%d", li, i), probes[i%len(probes)]
			start := time.Now()
			if _, err := e.add(l, rt(id, p)); err != nil {
				b.Fatalf("ADD %s with %d pods held: %v", id, level, err)
			}
			add := time.Since(start)
			plan := planOf(b, stateDir, "flat", id, "eth0")
			start = time.Now()
			if err := e.del(l, rt(id, p)); err != nil {
				b.Fatalf("DEL %s with %d pods held: %v", id, level, err)
			}
			del := time.Since(start)
			// the same kernel work in this process, with as many pods
			// held: what of a growth is the kernel's
			fadd, fdel, _ := floorOf(b, topo.Node, p, stateDir, plan)
			adds, dels, floorAdds, floorDels = append(adds, add), append(dels, del), append(floorAdds, fadd), append(floorDels, fdel)
			ownAdds, ownDels = append(ownAdds, add-fadd), append(ownDels, del-fdel)
		}
		// the plugin's own account of the probes' ADDs, by phase: where
		// a growth is, if there is one
		phases := pluginPhasesOf(b, filepath.Join(dir, "spinneret.log"), "ADD", fmt.Sprintf("probe-%d-", li))
		for _, name := range []string{"ms", "allocate-ms", "apply-ms", "commit-ms"} {
			if len(phases[name]) != flatProbes {
				b.Fatalf("%d ADD log lines with %s for %d pods held, want %d", len(phases[name]), name, level, flatProbes)
			}
			b.ReportMetric(millis(percentiles(phases[name])[0]), fmt.Sprintf("plugin-%s-%s", name, flatLabel(li)))
		}
		now := [6]time.Duration{percentiles(adds)[0], percentiles(dels)[0], percentiles(floorAdds)[0], percentiles(floorDels)[0], percentiles(ownAdds)[0], percentiles(ownDels)[0]}
		b.ReportMetric(millis(now[0]), fmt.Sprintf("add-p50-%s-ms", flatLabel(li)))
		b.ReportMetric(millis(now[1]), fmt.Sprintf("del-p50-%s-ms", flatLabel(li)))
		p50s = append(p50s, now)
	}
	// the ratios are to the one-pod level measured before and after the
	// others (their mean): the machine's drift over the run cancels
	var base [6]float64
	for k := range base {
		base[k] = (float64(p50s[0][k]) + float64(p50s[len(p50s)-1][k])) / 2
	}
	var rows []string
	for li, now := range p50s {
		line := fmt.Sprintf("%-6s %7s", store, flatLabel(li))
		for k := range now {
			line += fmt.Sprintf(" %7.2f", millis(now[k]))
		}
		if li > 0 && li < len(p50s)-1 {
			for k, name := range []string{"add", "del", "floor-add", "floor-del", "own-add", "own-del"} {
				r := float64(now[k]) / base[k]
				b.ReportMetric(r, fmt.Sprintf("%s-%d/1", name, flatHeld[li]))
				line += fmt.Sprintf(" %s %.2f×", name, r)
			}
		}
		rows = append(rows, line)
	}
	// on stdout: a benchmark's own log is cut to ten lines
	fmt.Printf("flat (%d probes per level; p50 ms; floor: the probe's plan done and undone in this process; own: whole process minus floor, per probe; ratios to the mean of the one-pod levels before and after)\n%-6s %7s %7s %7s %7s %7s %7s %7s\n%s\n",
		flatProbes, "state", "held", "ADD", "DEL", "floorA", "floorD", "ownA", "ownD", strings.Join(rows, "\n"))
	b.StopTimer()
	for i := range held {
		delHeld(i)
	}
}

// flatLabel names BenchmarkFlat's level li: its pods held, and "1-after"
// for the one-pod level measured again at the end.
func flatLabel(li int) string {
	if li == len(flatHeld)-1 {
		return fmt.Sprint(flatHeld[li]) + "-after"
	}
	return fmt.Sprint(flatHeld[li])
}
