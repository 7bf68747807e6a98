package request

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/conf"
)

// catalogue is the config the request tests resolve against (also the
// ADD's in cni/add_test.go).
var catalogue = func() string {
	b, err := os.ReadFile("testdata/catalogue.json")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

// BadRequest is one case of testdata/bad-requests.json.
type badRequest struct {
	Name        string            `json:"name"`
	Annotations map[string]string `json:"annotations"`
	Args        string            `json:"args"`
	Node        string            `json:"node"`
	Msg         string            `json:"msg"`
}

// fakeNADs serves one NAD, spin/nad1, and fails for spin/broken.
type fakeNADs struct {
	cfg   *conf.Config
	calls []string
}

var errAPI = errors.New("API server unreachable")

func (f *fakeNADs) Network(ns, name string) (*conf.Network, error) {
	f.calls = append(f.calls, ns+"/"+name)
	switch ns + "/" + name {
	case "spin/nad1":
		return f.cfg.NADNetwork(ns, name, []byte(`{"cniVersion":"0.3.1","type":"macvlan","master":"uplink1","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`), "")
	case "spin/broken":
		return nil, errAPI
	}
	return nil, ErrNoNAD
}

func setup(t testing.TB, nodeYAML string) (*conf.Config, *conf.Node) {
	t.Helper()
	cfg, err := conf.Parse([]byte(catalogue))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, []byte(nodeYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	node, err := conf.LoadNode(p, true)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, node
}

func input(cfg *conf.Config, node *conf.Node, ann map[string]string) Input {
	args, _ := ParseArgs("K8S_POD_NAMESPACE=spin;K8S_POD_NAME=web;K8S_POD_UID=u1")
	return Input{Config: cfg, Node: node, IfName: "eth0", Args: args, Annotations: ann, NADs: &fakeNADs{cfg: cfg}}
}

// badRequests reads testdata/bad-requests.json.
func badRequests(tb testing.TB) []badRequest {
	tb.Helper()
	var table struct{ Cases []badRequest }
	b, err := os.ReadFile("testdata/bad-requests.json")
	if err == nil {
		err = json.Unmarshal(b, &table)
	}
	if err != nil || len(table.Cases) == 0 {
		tb.Fatalf("testdata/bad-requests.json: %v", err)
	}
	return table.Cases
}

// Every request error the pod (or the runtime) can cause is found here,
// with the annotation entry and field, and without a kernel or root.
func TestResolveErrors(t *testing.T) {
	cfg, node := setup(t, "masters: {logical-green: uplink2}\n")
	for _, c := range badRequests(t) {
		t.Run(c.Name, func(t *testing.T) {
			in := input(cfg, node, c.Annotations)
			if c.Node != "" {
				_, in.Node = setup(t, c.Node)
			}
			if c.Args != "" {
				in.Args, _ = ParseArgs(c.Args)
			}
			_, err := Resolve(in)
			if err == nil || !strings.Contains(err.Error(), c.Msg) {
				t.Fatalf("error = %v, want %q", err, c.Msg)
			}
			if c.Name == "CNI_ARGS MAC" && !errors.Is(err, ErrCapability) {
				t.Fatalf("a bad CNI_ARGS MAC is not marked as the runtime's: %v", err)
			}
			if c.Name == "NAD lookup fails" && !errors.Is(err, errAPI) {
				t.Fatalf("the NAD source's error is not kept: %v", err)
			}
		})
	}
}

// The request holds every NIC in order with what the pod asked of it.
func TestResolve(t *testing.T) {
	cfg, node := setup(t, "masters: {logical-green: uplink2}\n")
	cfg.RuntimeMAC = "0a:00:00:00:00:01"
	cfg.RuntimeDeviceID = "0000:02:00.1"
	ann := map[string]string{
		AnnotNetworks:        `[{"name":"blue","ips":["198.51.101.7/24"],"mac":"0a:1b:2c:3d:4e:5f"},{"name":"green","namespace":"spin","interface":"storage"},{"name":"nad1"},{"name":"kube"},{"name":"fast"}]`,
		AnnotIPPools:         `[{"interface":"net1","ipv4":["blue-v4b"]},{"interface":"net4","ipv4":["k2"],"ipv6":["k6"]}]`,
		AnnotRoutes:          `[{"dst":"10.10.0.1/16","gw":"198.51.101.1"}]`,
		AnnotDefaultRouteNIC: "storage",
	}
	in := input(cfg, node, ann)
	req, err := Resolve(in)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range req.NICs {
		names = append(names, n.IfName)
	}
	if strings.Join(names, ",") != "eth0,net1,storage,net3,net4,net5" {
		t.Fatalf("NICs %v", names)
	}
	eth0, net1, storage, net3, net4, net5 := req.NICs[0], req.NICs[1], req.NICs[2], req.NICs[3], req.NICs[4], req.NICs[5]
	if eth0.MAC != "0a:00:00:00:00:01" || !eth0.PodMAC || eth0.Network.Name != "red" || eth0.DefaultRoute {
		t.Errorf("eth0 %+v", eth0)
	}
	if len(net1.Network.Pools) != 1 || net1.Network.Pools[0].Name != "blue-v4b" || net1.Static[0] != netip.MustParseAddr("198.51.101.7") || net1.MAC != "0a:1b:2c:3d:4e:5f" || !net1.PodMAC {
		t.Errorf("net1 %+v", net1)
	}
	if storage.Network.Master != "uplink2" || storage.StatusName != "spin/green" || !storage.DefaultRoute {
		t.Errorf("storage %+v", storage)
	}
	if net3.Network.Name != "spin/nad1" || net3.Network.DelegateIPAM == nil {
		t.Errorf("net3 (the NAD) %+v", net3.Network)
	}
	if !net4.Pools.Annotated || strings.Join(net4.Pools.IPv4, ",") != "k2" || strings.Join(net4.Pools.IPv6, ",") != "k6" {
		t.Errorf("net4 pool choice %+v", net4.Pools)
	}
	if net5.DeviceID != "0000:01:10.0" {
		t.Errorf("net5 VF %q", net5.DeviceID)
	}
	if len(req.Routes) != 1 || req.Routes[0].Dst != netip.MustParsePrefix("10.10.0.0/16") || req.Routes[0].Field != "spinneret.io/routes[0]" {
		t.Errorf("routes %+v", req.Routes)
	}
	if req.Pod == nil || req.Pod.Namespace != "spin" || req.Pod.UID != "u1" {
		t.Errorf("pod %+v", req.Pod)
	}
	// the catalogue's own networks are left as configured
	if blue, _ := cfg.Lookup("blue"); len(blue.Pools) != 2 {
		t.Errorf("the catalogue's blue now has pools %v", blue.Pools)
	}

	// JSON default-route, and the primary's podDefaultRouteNic
	req, err = Resolve(input(cfg, node, map[string]string{AnnotNetworks: `[{"name":"blue","default-route":["198.51.100.1"]}]`}))
	if err != nil || !req.NICs[1].DefaultRoute || req.NICs[0].DefaultRoute {
		t.Fatalf("JSON default-route: %+v, %v", req, err)
	}
	cfg.Network.Coordinator.PodDefaultRouteNIC = "net1"
	req, err = Resolve(input(cfg, node, map[string]string{AnnotNetworks: "blue"}))
	if err != nil || !req.NICs[1].DefaultRoute {
		t.Fatalf("podDefaultRouteNic: %+v, %v", req, err)
	}
}

// Without a NAD source (no kubeconfig), an unknown network says only that
// the catalogue does not define it; CNI_ARGS without a pod name no pod.
func TestResolveWithoutCluster(t *testing.T) {
	cfg, node := setup(t, "")
	in := input(cfg, node, map[string]string{AnnotNetworks: "purple"})
	in.NADs = nil
	_, err := Resolve(in)
	if err == nil || strings.Contains(err.Error(), "NetworkAttachmentDefinition") || !strings.Contains(err.Error(), `network "purple" is not defined`) {
		t.Fatalf("error %v", err)
	}
	in = input(cfg, node, nil)
	in.Args, _ = ParseArgs("")
	req, err := Resolve(in)
	if err != nil || req.Pod != nil || len(req.NICs) != 1 || !req.NICs[0].DefaultRoute {
		t.Fatalf("%+v, %v", req, err)
	}
}

func TestParseArgs(t *testing.T) {
	a, err := ParseArgs("K8S_POD_NAMESPACE=default;MAC=0a:1b:2c:3d:4e:5f;K8S_POD_NAME=x;K8S_POD_INFRA_CONTAINER_ID=abc")
	if err != nil || a.MAC != "0a:1b:2c:3d:4e:5f" || a.Pod().Namespace != "default" || a.Pod().Name != "x" {
		t.Fatalf("%+v, %v", a, err)
	}
	if _, err := ParseArgs("K8S_POD_NAME"); err == nil {
		t.Fatal("a pair without = parsed")
	}
}

// TestAnnotationBound: an annotation spinneret reads is refused above
// MaxAnnotationBytes, naming it and its size, before it is parsed.
func TestAnnotationBound(t *testing.T) {
	cfg, node := setup(t, "masters: {logical-green: uplink2}\n")
	for _, k := range []string{AnnotNetworks, AnnotDefaultRouteNIC, AnnotIPPools, AnnotRoutes} {
		big := strings.Repeat(" ", MaxAnnotationBytes) + "x"
		_, err := Resolve(input(cfg, node, map[string]string{k: big}))
		if want := fmt.Sprintf("%s: %d bytes, at most %d", k, len(big), MaxAnnotationBytes); err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %q", k, err, want)
		}
	}
	// at the bound, parsed as usual (blank: no networks)
	if _, err := Resolve(input(cfg, node, map[string]string{AnnotNetworks: strings.Repeat(" ", MaxAnnotationBytes)})); err != nil {
		t.Errorf("an annotation of exactly %d bytes: %v", MaxAnnotationBytes, err)
	}
}

// TestDefaultNetwork: Multus' v1.multus-cni.io/default-network replaces
// the primary network for the pod's eth0, with a catalogue network or a
// NAD of the pod's namespace, in the short or the JSON form (with its ips,
// mac and default-route); the networks annotation's NICs follow.
func TestDefaultNetwork(t *testing.T) {
	cfg, node := setup(t, "masters: {logical-green: uplink2}\n")
	for _, c := range []struct {
		ann, network, status, static, mac string
	}{
		{"blue", "blue", "", "", ""},
		{"spin/nad1", "spin/nad1", "spin/nad1", "", ""},
		{`[{"name":"blue","interface":"eth0","ips":["198.51.100.9"],"mac":"0a:00:00:00:00:09","default-route":["198.51.100.1"]}]`, "blue", "", "198.51.100.9", "0a:00:00:00:00:09"},
	} {
		t.Run(c.ann, func(t *testing.T) {
			req, err := Resolve(input(cfg, node, map[string]string{AnnotDefaultNetwork: c.ann, AnnotNetworks: "red"}))
			if err != nil {
				t.Fatal(err)
			}
			eth0 := req.NICs[0]
			if eth0.IfName != "eth0" || eth0.Network.Name != c.network || eth0.StatusName != c.status || !eth0.DefaultRoute {
				t.Errorf("eth0 %+v", eth0)
			}
			if got := fmt.Sprint(eth0.Static); c.static != "" && got != "["+c.static+"]" || eth0.MAC != c.mac {
				t.Errorf("eth0 statics %v, MAC %q", eth0.Static, eth0.MAC)
			}
			if len(req.NICs) != 2 || req.NICs[1].IfName != "net1" || req.NICs[1].Network.Name != "red" || req.NICs[1].DefaultRoute {
				t.Errorf("net1 %+v", req.NICs[1:])
			}
		})
	}
}
