package install

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/spinneret-cni/spinneret/conf"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The node's name is set once, comments and other keys stay as the
// operator wrote them, and what comes out parses as the plugin parses it.
func TestNodeConf(t *testing.T) {
	for name, in := range map[string]string{
		"no nodeName":    "# the cluster's node conf\nstateDir: /var/lib/spinneret # state\nmasters: {uplink: eth0}\n",
		"empty nodeName": "stateDir: /var/lib/spinneret\n# set per node\nnodeName: \"\"\nmasters: {uplink: eth0}\n",
		"same nodeName":  "nodeName: node-a\n",
		"empty file":     "",
	} {
		t.Run(name, func(t *testing.T) {
			out, err := NodeConf(writeFile(t, in), "node-a")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(string(out), "nodeName:") != 1 {
				t.Fatalf("nodeName not set once:\n%s", out)
			}
			for _, line := range strings.Split(in, "\n") {
				if strings.HasPrefix(line, "#") && !strings.Contains(string(out), line) {
					t.Errorf("comment %q lost:\n%s", line, out)
				}
			}
			n, err := conf.LoadNode(writeFile(t, string(out)), true)
			if err != nil || n.NodeName != "node-a" {
				t.Fatalf("installed node conf: %+v, %v\n%s", n, err, out)
			}
		})
	}
}

func TestNodeConfRefuses(t *testing.T) {
	for name, c := range map[string]struct{ in, node, msg string }{
		"another node's name": {"nodeName: node-b\n", "node-a", `nodeName "node-b": the shared node conf must not name a node`},
		"duplicate key":       {"stateDir: /a\nstateDir: /b\n", "node-a", `mapping key "stateDir" already defined`},
		"no node name":        {"stateDir: /a\n", "", `node name "" is not a valid Kubernetes node name`},
		"bad node name":       {"stateDir: /a\n", "Node_A", `node name "Node_A" is not a valid Kubernetes node name`},
		"not a mapping":       {"- a\n- b\n", "node-a", "not a mapping of keys to values"},
		"invalid node conf":   {"logLevel: loud\n", "node-a", `logLevel: "loud"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NodeConf(writeFile(t, c.in), c.node)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want %q", err, c.msg)
			}
		})
	}
}

// TestRuntimeSeesConflist: a runtime that reloads its conf dir as
// containerd 1.6 and 1.7 do (on Write, Rename and Remove events, never on
// Create or Chmod: pkg/cri/server/cni_conf_syncer.go) gets an event it
// acts on for the conflist's own name after the conflist is complete
// there, both when it is first installed and when it is replaced. The
// rename alone is a Create, and the temporary file's Write comes before it.
func TestRuntimeSeesConflist(t *testing.T) {
	root := t.TempDir()
	o := Options{ConfigDir: filepath.Join(root, "config"), CNIBinDir: filepath.Join(root, "bin"), CNIConfDir: filepath.Join(root, "net.d"),
		EtcDir: filepath.Join(root, "etc"), HostEtcDir: "/etc/spinneret", NodeName: "node-a", Binary: "/bin/true"}
	os.MkdirAll(o.ConfigDir, 0o755)
	os.MkdirAll(o.CNIConfDir, 0o755)
	conflist := func(mtu int) {
		b := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"spinneret","plugins":[{"type":"spinneret","master":"eth0","mtu":%d,"ipam":{"pools":[{"name":"p","subnet":"192.0.2.0/24"}]}}]}`, mtu)
		os.WriteFile(filepath.Join(o.ConfigDir, ConflistName), []byte(b), 0o644)
	}
	os.WriteFile(filepath.Join(o.ConfigDir, "node.yaml"), []byte("masters: {uplink: eth0}\n"), 0o644)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(o.CNIConfDir); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(o.CNIConfDir, ConflistName)
	for _, mtu := range []int{1500, 9000} {
		conflist(mtu)
		if err := Run(o); err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(o.ConfigDir, ConflistName))
		// the events of this install, in order: the last one a runtime
		// acts on must be on the conflist itself, after its Create (the
		// rename)
		created, reloaded := false, false
		timeout := time.After(2 * time.Second)
	events:
		for {
			select {
			case ev := <-w.Events:
				acts := !ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Create)
				switch {
				case ev.Name == target && ev.Has(fsnotify.Create):
					created, reloaded = true, false
				case acts && ev.Name == target && created:
					reloaded = true
					if got, _ := os.ReadFile(target); !bytes.Equal(got, want) {
						t.Fatalf("mtu %d: the runtime reloads a conflist that is not the installed one:\n%s", mtu, got)
					}
					break events
				}
			case err := <-w.Errors:
				t.Fatal(err)
			case <-timeout:
				break events
			}
		}
		if !created || !reloaded {
			t.Fatalf("mtu %d: conflist created by a rename %v, then an event containerd reloads on %v", mtu, created, reloaded)
		}
	}
}
