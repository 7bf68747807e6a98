package tests

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/request"
	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// calicoBins is the directory of Calico's CNI plugin (calico, calico-ipam)
// and the CRDs its ADD needs, built from the Go module proxy once per
// machine (tests/calico/build.sh).
func calicoBins(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("calico/build.sh")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building Calico's CNI plugin: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// calicoCluster readies the API server for Calico's CNI plugin as
// calico-node would (no Felix, no calico-node: the plugin's ADD needs
// neither): its CRDs, the ClusterInformation that says the datastore is
// ready, an IPPool of podCIDR4 and the Node.
func calicoCluster(t *testing.T, a *k8senv.APIServer, crds, node string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(crds, "*.yaml"))
	if len(files) != 7 {
		t.Fatalf("%s holds %d CRDs, want 7", crds, len(files))
	}
	for _, f := range files {
		y, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd map[string]any
		if err := yaml.Unmarshal(y, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if code := apiRequest(t, a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, nil); code != http.StatusCreated {
			t.Fatalf("create CRD %s: %d", f, code)
		}
	}
	const g = "/apis/crd.projectcalico.org/v1/"
	deadline := time.Now().Add(30 * time.Second)
	for apiRequest(t, a, http.MethodGet, g+"ippools", nil, nil) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("Calico's CRDs not served after 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range []struct {
		path string
		obj  map[string]any
	}{
		{"/api/v1/nodes", map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": node}}},
		{g + "clusterinformations", map[string]any{"apiVersion": "crd.projectcalico.org/v1", "kind": "ClusterInformation",
			"metadata": map[string]any{"name": "default"}, "spec": map[string]any{"datastoreReady": true}}},
		{g + "ippools", map[string]any{"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": map[string]any{"name": "pods-v4"},
			"spec": map[string]any{"cidr": podCIDR4.String(), "blockSize": 26, "allowedUses": []string{"Workload", "Tunnel"},
				"ipipMode": "Never", "vxlanMode": "Never", "nodeSelector": "all()"}}},
	} {
		if code := apiRequest(t, a, http.MethodPost, c.path, c.obj, nil); code != http.StatusCreated {
			t.Fatalf("create %s: %d", c.path, code)
		}
	}
}

// calicoHandles counts Calico IPAM's handles: one per attachment it
// holds addresses for.
func calicoHandles(t *testing.T, a *k8senv.APIServer) int {
	t.Helper()
	var list struct{ Items []any }
	if code := apiRequest(t, a, http.MethodGet, "/apis/crd.projectcalico.org/v1/ipamhandles", nil, &list); code != http.StatusOK {
		t.Fatalf("list ipamhandles: %d", code)
	}
	return len(list.Items)
}

// TestOverlayCalico: Calico's own CNI plugin and calico-ipam (v3.31.0,
// built from the Go module proxy) as the delegate, against the real API
// server, with net1 from spinneret in overlay mode. Calico makes eth0
// (its /32 from the IPPool, default via 169.254.1.1 through its proxy-ARP
// veth) and records the pod's address (an IPAM handle, the pod's
// cni.projectcalico.org/podIP); the node reaches eth0 and net1 through
// Calico's veth, the pod reaches the node over eth0 and net1's gateway
// over net1; CHECK passes; DEL runs Calico's DEL: the handle goes, and the
// node and the pod are as before.
func TestOverlayCalico(t *testing.T) {
	cal := calicoBins(t)
	e := multiEnv(t)
	e.forwarding()
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir, cal}, filepath.Join(e.dir, "cache"), nil)
	// Calico's eth0 reaches its gateway 169.254.1.1 by proxy ARP on the
	// node's cali veth, which the kernel answers only for a destination the
	// node routes out of another link: every real node has a default
	// route; the test's node gets one through uplink0's gateway
	gw := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: e.topo.Nets[0].GW4.AsSlice()}
	if err := e.topo.Node.NL().RouteAdd(gw); err != nil {
		t.Fatalf("node's default route: %v", err)
	}
	a := startAPI(t, e.topo.Node.Do)
	calicoCluster(t, a, filepath.Join(cal, "crds"), "node1")
	file := filepath.Join(e.dir, "10-calico.conflist")
	calico := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico","datastore_type":"kubernetes",
		"nodename":"node1","nodename_file_optional":true,"mtu":1440,"log_level":"info","log_file_path":%q,"ipam_lock_file":%q,
		"ipam":{"type":"calico-ipam","assign_ipv4":"true","assign_ipv6":"false"},"policy":{"type":"k8s"},"kubernetes":{"kubeconfig":%q}}]}`,
		filepath.Join(e.dir, "calico.log"), filepath.Join(e.dir, "ipam.lock"), a.Kubeconfig)
	if err := os.WriteFile(file, []byte(calico), 0o600); err != nil {
		t.Fatal(err)
	}
	coord := fmt.Sprintf(`"coordinator":{"serviceCIDR":["%s"],"podCIDR":["%s"]}`, netlab.ServiceCIDR4, podCIDR4)
	l := e.multiConfWith(v4, fmt.Sprintf(`{"name":"pods","delegate":{"conflist":%q}}`, file), coord)
	ann := map[string]string{request.AnnotNetworks: "red"}
	createPodOn(t, a, "default", "c1", "node1", ann)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := podRT("c1", p, ann)
	r, err := e.add(l, rt)
	if err != nil {
		if log, _ := os.ReadFile(filepath.Join(e.dir, "calico.log")); len(log) > 0 {
			t.Logf("calico.log:\n%s", log)
		}
		t.Fatalf("ADD: %v", err)
	}
	res, err := currentResult(r)
	if err != nil {
		t.Fatal(err)
	}
	eth0, net1 := nicAddr(t, res, "eth0", true), nicAddr(t, res, "net1", true)
	if !podCIDR4.Contains(eth0) {
		t.Errorf("eth0 %s is not from Calico's IPPool %s", eth0, podCIDR4)
	}
	if n := calicoHandles(t, a); n != 1 {
		t.Errorf("Calico IPAM holds %d handles, want 1", n)
	}
	var pod struct {
		Metadata struct{ Annotations map[string]string } `json:"metadata"`
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/default/pods/c1", nil, &pod)
	if got := pod.Metadata.Annotations["cni.projectcalico.org/podIP"]; got != eth0.String()+"/32" {
		t.Errorf("the pod's cni.projectcalico.org/podIP %q, want %s/32", got, eth0)
	}
	if routes, _ := p.NL().RouteList(nil, netlink.FAMILY_V4); !strings.Contains(fmt.Sprint(routes), "169.254.1.1") {
		t.Errorf("eth0's routes are not Calico's (default via 169.254.1.1): %v", routes)
	}
	for _, a := range []netip.Addr{eth0, net1} {
		if err := sentBy(t, p, "eth0", 1, func() error { return e.topo.Node.Ping(a, 5*time.Second) }); err != nil {
			t.Errorf("node -> %s, answered over eth0: %v", a, err)
		}
	}
	if err := sentBy(t, p, "eth0", 1, func() error { return p.Ping(netlab.NodeIP4, 5*time.Second) }); err != nil {
		t.Errorf("pod -> node over eth0: %v", err)
	}
	if err := sentBy(t, p, "net1", 1, func() error { return p.PingFrom(net1, e.topo.Nets[0].GW4, 5*time.Second) }); err != nil {
		t.Errorf("net1 -> its gateway: %v", err)
	}
	if err := e.check(l, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.mustDel(l, rt)
	sameLearnt(t, before, e.snapshot(p))
	if n := calicoHandles(t, a); n != 0 {
		t.Errorf("after DEL Calico IPAM holds %d handles", n)
	}
}
