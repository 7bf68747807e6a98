package tests

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vmTestPattern selects the tests that run inside the VM (files with the
// vmtest build tag): drivers and link kinds this machine's kernel lacks.
const vmTestPattern = "^TestInVM"

// TestVM runs the VM suite: it builds the plugin (with and without test
// hooks) and this package with the vmtest tag as static binaries, boots
// Debian's kernel under QEMU (tests/vm/vm.sh) and runs the TestInVM tests
// there; their output is this test's log, their failure its failure.
// SPINNERET_VM_RUN narrows them (a -run pattern).
func TestVM(t *testing.T) {
	dir := t.TempDir()
	build := func(args ...string) {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	build("build", "-tags", "testhooks", "-o", filepath.Join(dir, "hooks", "spinneret"), "..")
	build("build", "-o", filepath.Join(dir, "prod", "spinneret"), "..")
	build("test", "-c", "-tags", "vmtest", "-o", filepath.Join(dir, "tests.test"), ".")
	// the process-start floor of the VM benchmarks' ratios
	if b, err := os.ReadFile(emptyGoBinary(t)); err != nil || os.WriteFile(filepath.Join(dir, "empty"), b, 0o755) != nil {
		t.Fatalf("the empty Go binary: %v", err)
	}
	pattern := vmTestPattern
	if p := os.Getenv("SPINNERET_VM_RUN"); p != "" {
		pattern = p
	}
	cmd := exec.Command("./vm/vm.sh", dir, "env", "SPINNERET_TEST_PREBUILT=/vmtest", "./tests.test", "-test.run", pattern, "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "SPINNERET_VM_SRIOV=2")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	passed := 0
	for sc.Scan() {
		line := sc.Text()
		t.Log(line)
		if strings.HasPrefix(strings.TrimSpace(line), "--- PASS: Test") {
			passed++
		}
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the VM suite failed: %v", err)
	}
	if passed == 0 {
		t.Fatalf("no VM test passed (pattern %q)", pattern)
	}
}
