package cni

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/request"
)

// countingAllocator is an IPAM front that records every call.
type countingAllocator struct{ calls []string }

func (a *countingAllocator) Allocate([]ipam.Need) (*ipam.Allocated, error) {
	a.calls = append(a.calls, "Allocate")
	return nil, errors.New("the fake allocates nothing")
}
func (a *countingAllocator) Quarantine(netip.Addr, time.Duration) error {
	a.calls = append(a.calls, "Quarantine")
	return nil
}
func (a *countingAllocator) Failed() { a.calls = append(a.calls, "Failed") }

// tableNADs serves request's test NADs: spin/nad1, and spin/broken whose
// lookup fails as an API server that does not answer.
type tableNADs struct{ cfg *conf.Config }

func (n tableNADs) Network(ns, name string) (*conf.Network, error) {
	switch ns + "/" + name {
	case "spin/nad1":
		return n.cfg.NADNetwork(ns, name, []byte(`{"cniVersion":"0.3.1","type":"macvlan","master":"uplink1","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`), "")
	case "spin/broken":
		return nil, types.NewError(types.ErrTryAgainLater, "API server unreachable", "")
	}
	return nil, request.ErrNoNAD
}

// TestBadRequestsAllocateNothing runs the ADD with every bad request of
// request/testdata/bad-requests.json, as the runtime passes it (the
// annotations through containerd's pod-annotations capability): each
// fails with its code and message, and the IPAM front is never called,
// nor is a journal written. No kernel, no root.
func TestBadRequestsAllocateNothing(t *testing.T) {
	var table struct {
		Cases []struct {
			Name        string            `json:"name"`
			Annotations map[string]string `json:"annotations"`
			Args        string            `json:"args"`
			Node        string            `json:"node"`
			Msg         string            `json:"msg"`
			Code        uint              `json:"code"`
		}
	}
	b, err := os.ReadFile("../request/testdata/bad-requests.json")
	if err == nil {
		err = json.Unmarshal(b, &table)
	}
	if err != nil || len(table.Cases) == 0 {
		t.Fatalf("bad-requests.json: %v", err)
	}
	catalogue, err := os.ReadFile("../request/testdata/catalogue.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range table.Cases {
		t.Run(c.Name, func(t *testing.T) {
			dir := t.TempDir()
			node := c.Node
			if node == "" {
				node = "masters: {logical-green: uplink2}\n"
			}
			nodeConf := filepath.Join(dir, "node.yaml")
			if err := os.WriteFile(nodeConf, []byte(node+"stateDir: "+filepath.Join(dir, "state")+"\nlogFile: "+filepath.Join(dir, "spinneret.log")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdin map[string]any
			if err := json.Unmarshal(catalogue, &stdin); err != nil {
				t.Fatal(err)
			}
			stdin["nodeConf"] = nodeConf
			ann := c.Annotations
			if ann == nil {
				ann = map[string]string{}
			}
			stdin["capabilities"] = map[string]bool{conf.PodAnnotationsCapability: true}
			stdin["runtimeConfig"] = map[string]any{conf.PodAnnotationsCapability: ann}
			raw, _ := json.Marshal(stdin)
			p, err := load(raw)
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			cniArgs := "K8S_POD_NAMESPACE=spin;K8S_POD_NAME=web;K8S_POD_UID=u1"
			if c.Args != "" {
				cniArgs = c.Args
			}
			if p.args, err = request.ParseArgs(cniArgs); err != nil {
				t.Fatal(err)
			}
			fake := &countingAllocator{}
			p.nads = tableNADs{p.cfg}
			p.newAllocator = func(*txn.Journal, *skel.CmdArgs) ipam.Allocator { return fake }
			err = p.add(&skel.CmdArgs{ContainerID: "c1", Netns: "/proc/self/ns/net", IfName: "eth0", Args: cniArgs, StdinData: raw})
			var te *types.Error
			if !errors.As(err, &te) || te.Code != c.Code || !strings.Contains(te.Msg, c.Msg) {
				t.Fatalf("ADD: %v, want code %d with %q", err, c.Code, c.Msg)
			}
			if len(fake.calls) != 0 {
				t.Fatalf("the IPAM front was called: %v", fake.calls)
			}
			if js, _ := txn.ListJournals(p.node.StateDir, p.cfg.Name); len(js) != 0 {
				t.Fatalf("%d journal(s) written", len(js))
			}
		})
	}
}

// TestIgnoredCapabilities: the runtime's delegate-only arguments with a
// value are named (for the log) when eth0 is not a delegate's; empty ones
// (containerd passes portMappings [] for every pod) and spinneret's own
// are not.
func TestIgnoredCapabilities(t *testing.T) {
	args := map[string]json.RawMessage{"portMappings": json.RawMessage(`[{"hostPort":80,"containerPort":80}]`),
		"bandwidth": json.RawMessage(`{}`), "dns": json.RawMessage(`null`), "mac": json.RawMessage(`"0a:00:00:00:00:01"`), "ips": json.RawMessage(`[]`)}
	if got := ignoredCapabilities(args); !slices.Equal(got, []string{"portMappings"}) {
		t.Errorf("ignored %v, want [portMappings]", got)
	}
	if got := ignoredCapabilities(nil); got != nil {
		t.Errorf("ignored %v of none", got)
	}
}
