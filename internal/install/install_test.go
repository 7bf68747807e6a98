package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
