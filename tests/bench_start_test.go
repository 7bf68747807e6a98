package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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

// libsOnlyBinary builds a binary that links what spinneret's packages
// import (the design's libraries, the standard library's net/http and TLS,
// ...) and none of spinneret's own code: every package they import from
// outside the project, imported for its init alone, and an empty main,
// with the production build's flags. Its start is what those imports
// cost before spinneret's own code runs: the part of spinneret's start
// that only dropping a library could cut. The list is read from `go list`
// at every run, so it stays exact; the file is given to the build as an
// overlay (nothing is written into the tree). It is pinned to a CPU as
// spinneret is. Imports for which drop is true are left out (nil: none).
// It returns the binary and how many packages it imports.
func libsOnlyBinary(tb testing.TB, drop func(pkg string) bool) (string, int) {
	tb.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		tb.Fatal(err)
	}
	list := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{range .Imports}}{{$.ImportPath}} {{.}}{{"\n"}}{{end}}{{end}}`, ".")
	list.Dir, list.Env = root, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := list.Output()
	if err != nil {
		tb.Fatalf("go list the CNI binary's imports: %v", err)
	}
	const self = "github.com/spinneret-cni/spinneret"
	var pkgs []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[0], self) && !strings.HasPrefix(f[1], self) && !slices.Contains(pkgs, f[1]) && (drop == nil || !drop(f[1])) {
			pkgs = append(pkgs, f[1])
		}
	}
	if len(pkgs) < 10 && drop == nil {
		tb.Fatalf("go list gave %d imports from outside the project: %q", len(pkgs), pkgs)
	}
	// and pinned to a CPU from its first init, as spinneret is: a start
	// technique, not a library's cost (internal/cpupin)
	pkgs = append(pkgs, self+"/internal/cpupin")
	slices.Sort(pkgs)
	var src strings.Builder
	src.WriteString("package main\n\nimport (\n")
	for _, p := range pkgs {
		fmt.Fprintf(&src, "\t_ %q\n", p)
	}
	src.WriteString(")\n\nfunc main() {}\n")
	dir := tb.TempDir()
	file, overlay := filepath.Join(dir, "main.go"), filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(file, []byte(src.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	o, _ := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(root, "libsonly", "main.go"): file}})
	if err := os.WriteFile(overlay, o, 0o644); err != nil {
		tb.Fatal(err)
	}
	bin := filepath.Join(dir, "libsonly")
	build := exec.Command("go", append(append([]string{"build"}, prodBuildFlags...), "-overlay", overlay, "-o", bin, "./libsonly")...)
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("building the libraries-only binary: %v\n%s", err, msg)
	}
	return bin, len(pkgs)
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
// (targets: ≤ 1.3× its wall time, ≤ 250 page faults); beside them the
// libraries-only binary (libsOnlyBinary), whose ratio to the empty one
// is the part of the start that spinneret's own code does not decide.
// Run with `make bench`.
func BenchmarkStartup(b *testing.B) {
	empty := emptyGoBinary(b)
	libs, nlibs := libsOnlyBinary(b, nil)
	spin := filepath.Join(prodBinDir, "spinneret")
	env := []string{"CNI_COMMAND=VERSION", "PATH=/usr/bin:/bin"}
	stdin := []byte(`{"cniVersion":"1.1.0"}`)
	// the same binary with its CPU pin off (internal/cpupin): what the pin buys
	nopin := append([]string{"SPINNERET_NO_CPU_PIN=1"}, env...)
	for range b.N {
		var e, l, s, u []procCost
		for i := range startRuns {
			// which goes first rotates, so none gains from another
			// warming the caches
			runs := []func(){
				func() { e = append(e, runCost(b, []string{empty}, env, nil)) },
				func() { l = append(l, runCost(b, []string{libs}, env, nil)) },
				func() { s = append(s, runCost(b, []string{spin}, env, stdin)) },
				func() { u = append(u, runCost(b, []string{spin}, nopin, stdin)) },
			}
			for k := range runs {
				runs[(i+k)%len(runs)]()
			}
		}
		em, lm, sm, um := medians(e), medians(l), medians(s), medians(u)
		b.ReportMetric(millis(em.wall), "empty-p50-ms")
		b.ReportMetric(millis(lm.wall), "libs-p50-ms")
		b.ReportMetric(millis(sm.wall), "spinneret-p50-ms")
		b.ReportMetric(millis(um.wall), "unpinned-p50-ms")
		b.ReportMetric(float64(sm.wall)/float64(em.wall), "start/empty")
		b.ReportMetric(float64(lm.wall)/float64(em.wall), "libs/empty")
		b.ReportMetric(float64(sm.wall)/float64(lm.wall), "start/libs")
		b.ReportMetric(float64(um.wall)/float64(em.wall), "unpinned/empty")
		b.ReportMetric(millis(em.cpu), "empty-cpu-ms")
		b.ReportMetric(millis(lm.cpu), "libs-cpu-ms")
		b.ReportMetric(millis(sm.cpu), "spinneret-cpu-ms")
		b.ReportMetric(float64(em.faults), "empty-faults")
		b.ReportMetric(float64(lm.faults), "libs-faults")
		b.ReportMetric(float64(sm.faults), "spinneret-faults")
		b.Logf("the libraries-only binary imports the %d packages spinneret's code imports from outside it, for their init alone, and the CPU pin", nlibs-1)
	}
	libraryShares(b, empty, env)
}

// startLibraries are the groups of imports whose shares of the
// libraries-only binary's start libraryShares measures, in the order it
// adds them: each a library (or a part of the standard library) the
// design keeps on the CNI path, by import path prefix. What no group
// names (the rest of the standard library, x/sys, the CPU pin) is the
// base every step starts from.
var startLibraries = []struct {
	name, why string
	prefixes  []string
}{
	{"net/http + crypto/tls", "the API server: network-status, kubernetes IPAM, NADs", []string{"net/http", "crypto/tls", "crypto/x509"}},
	{"vishvananda/netlink", "every kernel step", []string{"github.com/vishvananda/"}},
	{"containernetworking/cni", "skel, types, version; libcni (delegates, links otel)", []string{"github.com/containernetworking/"}},
	{"viper", "the node conf", []string{"github.com/spf13/viper"}},
	{"yaml v3", "NADs and the node conf in YAML", []string{"go.yaml.in/yaml/"}},
	{"google/nftables", "the coordinator's reply path", []string{"github.com/google/nftables"}},
	{"mdlayher arp/ndp + x/net", "conflict and gateway detection", []string{"github.com/mdlayher/", "golang.org/x/net/"}},
	{"Mellanox/sriovnet", "the SR-IOV driver", []string{"github.com/Mellanox/sriovnet"}},
	{"lumberjack", "the rotated log file", []string{"gopkg.in/natefinch/lumberjack"}},
}

// libraryShares builds the libraries-only binary in steps: the base
// (what no group of startLibraries names), then one group more at each
// step, the last being the whole libraries-only binary; it starts the
// empty binary and every step in turn, and prints what each step adds to
// the start (p50 wall time, CPU, page faults, binary size). The steps sum
// to the libraries-only binary's start over the empty one's: each
// library's share of the start that bounds spinneret's, as a whole
// process (init, and the pages a bigger binary touches), which
// GODEBUG=inittrace=1 alone does not show. A library also linked by one
// added earlier shows in that one's step.
func libraryShares(b *testing.B, empty string, env []string) {
	const runs = 100
	in := func(pkg string, groups int) bool {
		for _, g := range startLibraries[:groups] {
			if slices.ContainsFunc(g.prefixes, func(p string) bool { return strings.HasPrefix(pkg, p) }) {
				return true
			}
		}
		return false
	}
	bins := []string{empty}
	for k := 0; k <= len(startLibraries); k++ {
		bin, _ := libsOnlyBinary(b, func(pkg string) bool {
			// left out: the groups after the k-th
			return in(pkg, len(startLibraries)) && !in(pkg, k)
		})
		bins = append(bins, bin)
	}
	costs := make([][]procCost, len(bins))
	for i := range runs {
		for k := range bins {
			j := (i + k) % len(bins)
			costs[j] = append(costs[j], runCost(b, []string{bins[j]}, env, nil))
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "the libraries-only binary's start, built up a library at a time (p50 of %d runs each, rotating; CPU pinned as spinneret is)\n", runs)
	fmt.Fprintf(&sb, "%-26s %-54s %8s %8s %7s %8s\n", "adds", "what spinneret uses it for", "+ms", "+CPU ms", "+faults", "+KiB")
	prev := medians(costs[0])
	prevSize := fileSize(b, bins[0])
	for k := 1; k < len(bins); k++ {
		m, size := medians(costs[k]), fileSize(b, bins[k])
		name, why := "base", "the rest of the standard library, x/sys, the CPU pin"
		if k > 1 {
			name, why = startLibraries[k-2].name, startLibraries[k-2].why
		}
		fmt.Fprintf(&sb, "%-26s %-54s %8.2f %8.2f %7d %8d\n", name, why, millis(m.wall-prev.wall), millis(m.cpu-prev.cpu), m.faults-prev.faults, (size-prevSize)/1024)
		b.ReportMetric(millis(m.wall-prev.wall), "adds-ms-"+strings.NewReplacer(" ", "", "/", "-", "+", "-").Replace(name))
		prev, prevSize = m, size
	}
	// on stdout: a benchmark's own log is cut to ten lines
	fmt.Print(sb.String())
}

// fileSize is the size of the file at path.
func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	st, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}
