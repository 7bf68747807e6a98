package tests

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/request"
)

// logLine is one slog text line: its keys and values.
type logLine map[string]string

var logPair = regexp.MustCompile(`([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)`)

// summaryLines are the log's last lines of each call (msg ok or failed)
// of verb, oldest first.
func summaryLines(t *testing.T, path, verb string) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []logLine
	for _, l := range strings.Split(string(b), "\n") {
		m := logLine{}
		for _, kv := range logPair.FindAllStringSubmatch(l, -1) {
			m[kv[1]] = strings.Trim(kv[2], `"`)
		}
		if (m["msg"] == "ok" || m["msg"] == "failed") && m["verb"] == verb {
			out = append(out, m)
		}
	}
	return out
}

// TestLogSummary: each call ends with one line that names the pod, its
// NICs and addresses, the steps it ran and, when it failed, the step that
// failed; the log is 0600 and rotated by size (logMaxSizeMB) by the
// plugin itself, its backup beside it.
func TestLogSummary(t *testing.T) {
	e := multiEnv(t)
	log := filepath.Join(e.dir, "spinneret.log")
	// a log at its size limit, made wider by hand: the first call rotates it
	junk := strings.Repeat("an earlier line of the log\n", (1<<20)/27+1)
	if err := os.WriteFile(log, []byte(junk), 0o644); err != nil {
		t.Fatal(err)
	}
	nc, _ := os.ReadFile(filepath.Join(e.dir, "node.yaml"))
	nc = append(nc, "logMaxSizeMB: 1\nlogMaxBackups: 2\n"...)
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), nc, 0o644)

	l := e.multiConf(dual, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue,green"})
	res := e.mustAdd(l, rt)
	backups, _ := filepath.Glob(filepath.Join(e.dir, "spinneret-*.log"))
	if len(backups) != 1 {
		t.Fatalf("backups %v, want the one rotated log", backups)
	}
	if b, _ := os.ReadFile(backups[0]); string(b) != junk {
		t.Errorf("the rotated log holds %d bytes, not the log's %d", len(b), len(junk))
	}
	for _, f := range []string{log, backups[0]} {
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	var want []string
	for _, ip := range res.IPs {
		want = append(want, res.Interfaces[*ip.Interface].Name+"="+ip.Address.String())
	}
	check := func(verb string, m logLine) {
		t.Helper()
		if m["pod"] != "default/c1" || m["container"] != "c1" || m["nics"] != "eth0,net1,net2,veth0" || m["addresses"] != strings.Join(want, ",") {
			t.Errorf("%s summary %v: want pod default/c1, nics eth0,net1,net2,veth0 (the coordinator's), addresses %s", verb, m, strings.Join(want, ","))
		}
		if m["steps"] == "" || m["steps"] == "0" || m["ms"] == "" {
			t.Errorf("%s summary %v: no steps or duration", verb, m)
		}
	}
	adds := summaryLines(t, log, "ADD")
	if len(adds) != 1 || adds[0]["msg"] != "ok" {
		t.Fatalf("ADD summaries %v", adds)
	}
	check("ADD", adds[0])
	if err := e.check(l, rt); err != nil {
		t.Fatal(err)
	}
	check("CHECK", summaryLines(t, log, "CHECK")[0])
	e.mustDel(l, rt)
	dels := summaryLines(t, log, "DEL")
	check("DEL", dels[0])
	if dels[0]["steps"] != adds[0]["steps"] {
		t.Errorf("DEL undid %s steps, ADD ran %s", dels[0]["steps"], adds[0]["steps"])
	}
	e.sameAs(before, p)

	// a failed ADD names the step that failed, and its error
	t.Setenv("SPINNERET_TEST_FAIL_STEP", "3")
	_, err := e.add(l, podRT("c2", p, map[string]string{request.AnnotNetworks: "blue,green"}))
	os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
	wantErr(t, err, cni.ErrStepFailed, "injected fault")
	adds = summaryLines(t, log, "ADD")
	f := adds[len(adds)-1]
	if n, _ := strconv.Atoi(f["steps"]); f["msg"] != "failed" || f["pod"] != "default/c2" || !strings.HasPrefix(f["failed-step"], "4/") || n < 4 || !strings.Contains(f["err"], "injected fault") {
		t.Errorf("failed ADD's summary %v: want pod default/c2, failed-step 4/..., 4 steps or more, the error", f)
	}
	e.sameAs(before, p)
}
