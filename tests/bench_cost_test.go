package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// costPods is how many ADDs BenchmarkADDCost accounts for, each way.
const costPods = 30

// BenchmarkADDCost accounts for what one 3-NIC ADD (local IPAM, underlay
// coordinator) costs the node beyond its time: page faults and peak RSS
// (/usr/bin/time around the plugin) and system calls (strace -f -c
// around it, on other pods: strace slows what it counts, and the Go
// runtime's timed calls, nanosleep and futex, grow with the slowdown).
// IPv4 and dual stack. Targets: ≤ 1,000 system calls, peak RSS ≤ 30 MB. Run with `make
// bench`. Not CPU: /usr/bin/time prints it in steps of 10 ms, so the mean
// of an ADD of ~10 ms read ~1 ms; BenchmarkCompare has each ADD's CPU
// from wait4, in microseconds.
func BenchmarkADDCost(b *testing.B) {
	for _, fam := range []family{v4, dual} {
		b.Run("3nic-"+string(fam), func(b *testing.B) {
			for range b.N {
				benchADDCost(b, fam)
			}
		})
	}
}

// wrapDir makes a plugin directory whose spinneret runs the production
// binary under prefix (argv words; OUT in them is replaced by a file of
// the call's own under out).
func wrapDir(b *testing.B, out string, prefix ...string) string {
	dir := b.TempDir()
	words := strings.ReplaceAll(strings.Join(prefix, " "), "OUT", out+"/$$")
	script := fmt.Sprintf("#!/bin/sh\nexec %s %s \"$@\"\n", words, filepath.Join(prodBinDir, "spinneret"))
	if err := os.WriteFile(filepath.Join(dir, "spinneret"), []byte(script), 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

func benchADDCost(b *testing.B, fam family) {
	timed, traced := b.TempDir(), b.TempDir()
	wt := newBenchWorld(b, 3, fam, wrapDir(b, timed, "/usr/bin/time", "-f", "'%R %M'", "-o", "OUT"))
	ws := newBenchWorld(b, 3, fam, wrapDir(b, traced, "strace", "-f", "-c", "-o", "OUT"))
	b.ResetTimer()
	for i := range costPods {
		wt.add(b, i)
		ws.add(b, i)
	}
	b.StopTimer()
	var faults, syscalls []time.Duration
	var rss int64
	for _, f := range files(b, timed) {
		var minflt, maxrss int64
		if _, err := fmt.Sscanf(f, "%d %d", &minflt, &maxrss); err != nil {
			b.Fatalf("/usr/bin/time wrote %q: %v", f, err)
		}
		faults = append(faults, time.Duration(minflt))
		rss = max(rss, maxrss)
	}
	for _, f := range files(b, traced) {
		n := -1
		for _, l := range strings.Split(f, "\n") {
			if fs := strings.Fields(l); len(fs) >= 4 && fs[len(fs)-1] == "total" {
				// "100.00 seconds usecs/call calls [errors] total"
				n, _ = strconv.Atoi(fs[3])
			}
		}
		if n < 0 {
			b.Fatalf("strace -c wrote no total:\n%s", f)
		}
		syscalls = append(syscalls, time.Duration(n))
	}
	if len(faults) != costPods || len(syscalls) != costPods {
		b.Fatalf("%d timed and %d traced ADDs accounted for, want %d each", len(faults), len(syscalls), costPods)
	}
	b.ReportMetric(float64(percentiles(faults)[0]), "faults-p50")
	b.ReportMetric(float64(percentiles(syscalls)[0]), "syscalls-p50")
	b.ReportMetric(float64(percentiles(syscalls)[2]), "syscalls-p99")
	b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
	for i := range costPods {
		wt.del(b, i)
		ws.del(b, i)
	}
}

// files reads every file of dir.
func files(b *testing.B, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, string(data))
	}
	return out
}
