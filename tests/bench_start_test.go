package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// startRuns is how many times BenchmarkStartup starts each binary.
const startRuns = 200

// emptyGoBinary builds `func main() {}` with the production build's flags
// (the process-start floor every ratio of start-up is measured against)
// and returns its path.
func emptyGoBinary(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module empty\n\ngo 1.22\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	out := filepath.Join(dir, "empty")
	build := exec.Command("go", append(append([]string{"build"}, prodBuildFlags...), "-o", out, ".")...)
	build.Dir, build.Env = dir, append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if msg, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("building the empty Go binary: %v\n%s", err, msg)
	}
	return out
}

// procCost is one finished process: wall time, CPU (user + system) and
// minor page faults, from the kernel's accounting of the child.
type procCost struct {
	wall, cpu time.Duration
	faults    int64
}

// runCost runs argv with env and stdin and returns what it cost.
func runCost(tb testing.TB, argv []string, env []string, stdin []byte) procCost {
	tb.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdin = env, bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%v: %v\n%s", argv, err, out.Bytes())
	}
	wall := time.Since(start)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return procCost{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), faults: ru.Minflt}
}

// medians gives the p50 of each figure of cs.
func medians(cs []procCost) procCost {
	var wall, cpu []time.Duration
	var faults []time.Duration
	for _, c := range cs {
		wall, cpu, faults = append(wall, c.wall), append(cpu, c.cpu), append(faults, time.Duration(c.faults))
	}
	return procCost{wall: percentiles(wall)[0], cpu: percentiles(cpu)[0], faults: int64(percentiles(faults)[0])}
}

// BenchmarkStartup starts the production binary as a runtime would for
// CNI_COMMAND=VERSION (process start, package init, skel reading stdin and
// printing the versions: the whole of a call up to its first netlink
// request) and an empty Go binary built with the same flags, alternating,
// and reports the medians and spinneret's ratio to the empty binary
// (targets: ≤ 1.3× its wall time, ≤ 250 page faults). Run with `make bench`.
func BenchmarkStartup(b *testing.B) {
	empty := emptyGoBinary(b)
	spin := filepath.Join(prodBinDir, "spinneret")
	env := []string{"CNI_COMMAND=VERSION", "PATH=/usr/bin:/bin"}
	stdin := []byte(`{"cniVersion":"1.1.0"}`)
	// the same binary with its CPU pin off (internal/cpupin): what the pin buys
	nopin := append([]string{"SPINNERET_NO_CPU_PIN=1"}, env...)
	for range b.N {
		var e, s, u []procCost
		for i := range startRuns {
			// which goes first rotates, so none gains from another
			// warming the caches
			runs := []func(){
				func() { e = append(e, runCost(b, []string{empty}, env, nil)) },
				func() { s = append(s, runCost(b, []string{spin}, env, stdin)) },
				func() { u = append(u, runCost(b, []string{spin}, nopin, stdin)) },
			}
			for k := range runs {
				runs[(i+k)%len(runs)]()
			}
		}
		em, sm, um := medians(e), medians(s), medians(u)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.ReportMetric(ms(em.wall), "empty-p50-ms")
		b.ReportMetric(ms(sm.wall), "spinneret-p50-ms")
		b.ReportMetric(ms(um.wall), "unpinned-p50-ms")
		b.ReportMetric(float64(sm.wall)/float64(em.wall), "start/empty")
		b.ReportMetric(float64(um.wall)/float64(em.wall), "unpinned/empty")
		b.ReportMetric(ms(em.cpu), "empty-cpu-ms")
		b.ReportMetric(ms(sm.cpu), "spinneret-cpu-ms")
		b.ReportMetric(float64(em.faults), "empty-faults")
		b.ReportMetric(float64(sm.faults), "spinneret-faults")
	}
}
