package request

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/conf"
)

const catalogue = `{"cniVersion":"1.0.0","name":"multi","type":"spinneret","networks":[
	{"name":"red","master":"uplink0","ipam":{"pools":[{"name":"red-v4","subnet":"192.0.2.0/24"},{"name":"red-v6","subnet":"2001:db8:0:1::/64"}]}},
	{"name":"blue","master":"uplink1","ipam":{"pools":[{"name":"blue-v4","subnet":"198.51.100.0/24"},{"name":"blue-v4b","subnet":"198.51.101.0/24"}]}},
	{"name":"green","master":"logical-green","ipam":{"pools":[{"name":"green-v4","subnet":"203.0.113.0/24"}]}},
	{"name":"kube","master":"uplink0","ipam":{"ippools":["k1"]}},
	{"name":"fast","driver":"sriov","deviceID":"0000:01:10.0","ipam":{"pools":[{"name":"fast-v4","subnet":"10.9.0.0/24"}]}}]}`

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

func setup(t *testing.T, nodeYAML string) (*conf.Config, *conf.Node) {
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

// Every request error the pod (or the runtime) can cause is found here,
// with the annotation entry and field, and without a kernel or root.
func TestResolveErrors(t *testing.T) {
	cfg, node := setup(t, "masters: {logical-green: uplink2}\n")
	_, strict := setup(t, "allowedMasters: [uplink0, uplink2]\nmasters: {logical-green: uplink2}\n")
	cases := []struct {
		name string
		ann  map[string]string
		args string
		node *conf.Node
		msg  string
	}{
		{"other namespace", map[string]string{AnnotNetworks: "kube-system/blue"}, "", nil, "k8s.v1.cni.cncf.io/networks[0]: network kube-system/blue is not in the pod's namespace spin"},
		{"duplicate interface", map[string]string{AnnotNetworks: "blue@net5, green@net5"}, "", nil, "interface net5 is used twice"},
		{"interface eth0 twice", map[string]string{AnnotNetworks: "blue@eth0"}, "", nil, "interface eth0 is used twice"},
		{"bad short form", map[string]string{AnnotNetworks: "blue@"}, "", nil, `entry 0 "blue@" is not name`},
		{"bad interface name", map[string]string{AnnotNetworks: `[{"name":"blue","interface":"a/b"}]`}, "", nil, `networks[0]: interface "a/b" is not a valid interface name`},
		{"unknown JSON field", map[string]string{AnnotNetworks: `[{"name":"blue","colour":"x"}]`}, "", nil, `k8s.v1.cni.cncf.io/networks[0].colour: unknown field (value "x")`},
		{"JSON entry without name", map[string]string{AnnotNetworks: `[{"interface":"net1"}]`}, "", nil, `k8s.v1.cni.cncf.io/networks[0].name: missing`},
		{"too many NICs", map[string]string{AnnotNetworks: "blue, green, blue@n3, blue@n4, blue@n5, blue@n6, blue@n7, blue@n8"}, "", nil, "9 NICs requested, at most 8 (maxNICs)"},
		{"master not allowed", map[string]string{AnnotNetworks: "blue"}, "", strict, `network blue: master: "uplink1" (interface uplink1) is not in the node's allowedMasters [uplink0 uplink2]`},
		{"default-route-nic unknown", map[string]string{AnnotDefaultRouteNIC: "net7"}, "", nil, `spinneret.io/default-route-nic: "net7" is not one of the pod's NICs (eth0)`},
		{"ippools unknown pool", map[string]string{AnnotIPPools: `[{"interface":"eth0","ipv4":["blue-v4"]}]`}, "", nil, `spinneret.io/ippools[0].ipv4[0]: pool "blue-v4" is not a pool of network red`},
		{"ippools wrong family", map[string]string{AnnotIPPools: `[{"interface":"eth0","ipv4":["red-v6"]}]`}, "", nil, `pool "red-v6" is not an ipv4 pool`},
		{"ippools unknown interface", map[string]string{AnnotIPPools: `[{"interface":"net3","ipv4":["red-v4"]}]`}, "", nil, `spinneret.io/ippools[0].interface: "net3" is not one of the pod's NICs`},
		{"ippools names none", map[string]string{AnnotIPPools: `[{"interface":"eth0"}]`}, "", nil, `spinneret.io/ippools[0]: names no pool`},
		{"route bad dst", map[string]string{AnnotRoutes: `[{"dst":"nope","gw":"192.0.2.1"}]`}, "", nil, `spinneret.io/routes[0].dst: "nope" is not a CIDR`},
		{"route gw of the other family", map[string]string{AnnotRoutes: `[{"dst":"10.0.0.0/8","gw":"2001:db8::1"}]`}, "", nil, `spinneret.io/routes[0].gw: "2001:db8::1" is not an address of the destination's family`},
		{"bad static", map[string]string{AnnotNetworks: `[{"name":"blue","ips":["10.1.1.x"]}]`}, "", nil, `k8s.v1.cni.cncf.io/networks[0].ips: "10.1.1.x" is not an address`},
		{"bad mac", map[string]string{AnnotNetworks: `[{"name":"blue","mac":"01:00:5e:00:00:01"}]`}, "", nil, `k8s.v1.cni.cncf.io/networks[0].mac: "01:00:5e:00:00:01" is not a unicast MAC address`},
		{"two default routes", map[string]string{AnnotNetworks: `[{"name":"blue","default-route":["198.51.100.1"]},{"name":"green","default-route":["203.0.113.1"]}]`}, "", nil, "networks[1].default-route: net1 already has the default route"},
		{"unknown network", map[string]string{AnnotNetworks: "purple"}, "", nil, `networks[0]: network "purple" is not defined (networks: red, blue, green, kube, fast), nor is a NetworkAttachmentDefinition spin/purple`},
		{"NAD lookup fails", map[string]string{AnnotNetworks: "broken"}, "", nil, "networks[0]: API server unreachable"},
		{"CNI_ARGS MAC", nil, "MAC=zz", nil, `CNI_ARGS MAC: "zz" is not a unicast MAC address`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := input(cfg, node, c.ann)
			if c.node != nil {
				in.Node = c.node
			}
			if c.args != "" {
				in.Args, _ = ParseArgs(c.args)
			}
			_, err := Resolve(in)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error = %v, want %q", err, c.msg)
			}
			if c.name == "CNI_ARGS MAC" && !errors.Is(err, ErrCapability) {
				t.Fatalf("a bad CNI_ARGS MAC is not marked as the runtime's: %v", err)
			}
			if c.name == "NAD lookup fails" && !errors.Is(err, errAPI) {
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
