package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

var (
	containerd16Once sync.Once
	containerd16Dir  string
	containerd16Err  error
)

// containerd16 builds the CNI caller of containerd 1.6 (tests/containerd16:
// go-cni v1.1.6, libcni v1.1.1, as containerd v1.6.20 vendors them) and the
// loopback plugin it runs first; it returns their directory.
func containerd16(t *testing.T) string {
	t.Helper()
	containerd16Once.Do(func() {
		dir, err := os.MkdirTemp("", "spinneret-containerd16-")
		if err != nil {
			containerd16Err = err
			return
		}
		build := exec.Command("go", "build", "-o", filepath.Join(dir, "containerd16"), ".")
		build.Dir = "containerd16"
		if out, err := build.CombinedOutput(); err != nil {
			containerd16Err = err
			t.Logf("%s", out)
			return
		}
		lo := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/main/loopback@v1.9.1")
		lo.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := lo.CombinedOutput(); err != nil {
			containerd16Err = err
			t.Logf("%s", out)
			return
		}
		containerd16Dir = dir
	})
	if containerd16Err != nil {
		t.Fatalf("building containerd 1.6's CNI caller: %v", containerd16Err)
	}
	return containerd16Dir
}

// shippedConflists are the conflists spinneret ships: deploy's examples and
// the one the DaemonSet's ConfigMap installs.
func shippedConflists(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{"daemonset.yaml ConfigMap": readDaemonSet(t).config["00-spinneret.conflist"]}
	for _, f := range []string{"../deploy/00-spinneret.conflist", "../deploy/10-drivers-example.conflist"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(f, "../")] = string(b)
	}
	return out
}

// TestShippedConflistsContainerd16: every shipped conflist works with a
// runtime that speaks CNI 1.0.0 at most (containerd before 2.0): libcni
// v1.1.1 reads it and the plugin accepts its version; and a pod attached
// through containerd 1.6's own code path (loopback, then
// 00-spinneret.conflist as shipped but for the node conf's path) gets
// results libcni v1.1.1 can read, then DEL leaves the node as it was.
func TestShippedConflistsContainerd16(t *testing.T) {
	tools := containerd16(t)
	bins := strings.Join([]string{binDir, tools}, string(filepath.ListSeparator))
	for name, body := range shippedConflists(t) {
		f := filepath.Join(t.TempDir(), "00-spinneret.conflist")
		os.WriteFile(f, []byte(body), 0o644)
		out, err := exec.Command(filepath.Join(tools, "containerd16"), "-bindir", bins, "validate", f).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1.0.0" {
			t.Errorf("%s through libcni v1.1.1: %v: %s", name, err, out)
		}
	}

	e := newEnv(t)
	body := shippedConflists(t)["deploy/00-spinneret.conflist"]
	if !strings.Contains(body, `"nodeConf": "/etc/spinneret/node.yaml"`) {
		t.Fatal("00-spinneret.conflist no longer names /etc/spinneret/node.yaml")
	}
	body = strings.Replace(body, `"nodeConf": "/etc/spinneret/node.yaml"`, `"nodeConf": "`+e.dir+`/node.yaml"`, 1)
	confDir := t.TempDir()
	os.WriteFile(filepath.Join(confDir, "00-spinneret.conflist"), []byte(body), 0o644)
	p, err := e.topo.NewPod()
	if err != nil {
		t.Fatal(err)
	}
	before := e.snapshot(p)
	call := func(verb string) ([]byte, error) {
		var out []byte
		err := e.topo.Node.Do(func() error {
			var err error
			cmd := exec.Command(filepath.Join(tools, "containerd16"), "-confdir", confDir, "-bindir", bins,
				"-netns", p.Path(), "-id", "c16", "-arg", "K8S_POD_NAMESPACE=default", "-arg", "K8S_POD_NAME=web", verb)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err = cmd.Output()
			if err != nil {
				out = []byte(stderr.String())
			}
			return err
		})
		return out, err
	}
	out, err := call("add")
	if err != nil {
		t.Fatalf("ADD through containerd 1.6's go-cni: %v: %s", err, out)
	}
	var res struct {
		CNIVersions []string `json:"cniVersions"`
		IPs         []string `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(res.CNIVersions) != 2 || slices.ContainsFunc(res.CNIVersions, func(v string) bool { return v != "1.0.0" }) ||
		!slices.Contains(res.IPs, "10.6.212.100") || !slices.Contains(res.IPs, "fd00:10:6::100") {
		t.Fatalf("results: %+v", res)
	}
	if out, err := call("del"); err != nil {
		t.Fatalf("DEL through containerd 1.6's go-cni: %v: %s", err, out)
	}
	// loopback's DEL sets lo down, which netlab's pods start with up
	if lo, err := p.NL().LinkByName("lo"); err == nil {
		p.NL().LinkSetUp(lo)
	}
	e.sameAs(before, p)
}
