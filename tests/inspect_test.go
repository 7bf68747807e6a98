package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/inspect"
	"github.com/spinneret-cni/spinneret/request"
)

// TestInspect: spinneret inspect of a 3-NIC pod (Kubernetes IPAM) by
// namespace/name and by a sandbox ID prefix: its NICs and addresses, the
// pod's routes of every table and rules, the node's routes to it, the
// addresses its journal holds, its IPAllocations and network-status from
// the API server, and the journal's steps; --output json the same. Once
// the sandbox's namespace is gone, the page says so; an unknown pod is an
// error that says where to look.
func TestInspect(t *testing.T) {
	k := newKubeEnv(t)
	e := k.env
	e.forwarding()
	k.pools()
	l := k.kubeConf()
	conflist := filepath.Join(e.dir, "00-spinneret.conflist")
	os.WriteFile(conflist, l.Bytes, 0o644)
	p, _ := e.topo.NewPod()
	uid := k.podWith("spin", "web", nil, map[string]string{request.AnnotNetworks: "blue,any"}, "", "node-a")
	rt := kubeRT("0123456789abcdef", p, "spin", "web", uid)
	res := e.mustAdd(l, rt)
	run := func(args ...string) (string, error) {
		out, err := outputIn(e.topo.Node, exec.Command(filepath.Join(binDir, "spinneret"), append([]string{"inspect", "--conflist", conflist, "--kubeconfig", k.a.Kubeconfig}, args...)...))
		return string(out), err
	}
	text, err := run("spin/web")
	if err != nil {
		t.Fatalf("inspect spin/web: %v\n%s", err, text)
	}
	t.Logf("spinneret inspect spin/web:\n%s", text)
	for _, want := range []string{"pod spin/web  uid " + uid, "sandbox 0123456789abcdef", "journal: committed",
		"net1 ", "net2 ", "veth0", "lookup 102", "table 500", "IPAllocations:", "pool blue-v4", "network-status", `"interface": "net2"`} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect's page lacks %q", want)
		}
	}
	for _, ip := range res.IPs {
		if !strings.Contains(text, ip.Address.String()) {
			t.Errorf("inspect's page lacks the address %s", ip.Address)
		}
	}
	js, err := run("--output", "json", "01234567")
	if err != nil {
		t.Fatalf("inspect by ID prefix: %v\n%s", err, js)
	}
	var pages []inspect.Page
	if err := json.Unmarshal([]byte(js), &pages); err != nil || len(pages) != 1 {
		t.Fatalf("inspect --output json: %v\n%s", err, js)
	}
	pg := pages[0]
	if pg.Pod != "spin/web" || len(pg.NICs) != 4 || len(pg.Allocations) != len(res.IPs) || len(pg.NodeRoutes) == 0 || len(pg.Steps) == 0 || len(pg.NetworkStatus) == 0 {
		t.Errorf("inspect json: pod %s, %d NICs (want eth0, net1, net2, veth0), %d allocations (want %d), %d node routes, %d steps, network-status %s",
			pg.Pod, len(pg.NICs), len(pg.Allocations), len(res.IPs), len(pg.NodeRoutes), len(pg.Steps), pg.NetworkStatus)
	}
	// the sandbox's namespace gone (the runtime lost it), the journal kept
	p.Close()
	if text, err = run("--no-cluster", "spin/web"); err != nil || !strings.Contains(text, "the sandbox's namespace is gone") {
		t.Errorf("inspect after the namespace went: %v\n%s", err, text)
	}
	if text, err = run("spin/nope"); err == nil || !strings.Contains(text, "no attachment of this node matches") {
		t.Errorf("inspect of an unknown pod: %v\n%s", err, text)
	}
	e.mustDel(l, rt)
}
