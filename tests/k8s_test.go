package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/cni"

	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// apiRequest sends a JSON request to the API server and decodes the reply.
func apiRequest(t testing.TB, a *k8senv.APIServer, method, path string, body, out any) int {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.URL+path, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotFound {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// TestAPIServerEnv proves the Kubernetes test environment the Kubernetes
// issue builds on: a real etcd and kube-apiserver (built from the Go module
// proxy, cached by version) start on 127.0.0.1, take a namespace, a service
// account and a pod with annotations, give them back, and stop.
func TestAPIServerEnv(t *testing.T) {
	a := startAPI(t, nil)
	ns := "spinneret-test"
	createPod(t, a, ns, "pod1", map[string]string{"k8s.v1.cni.cncf.io/networks": "storage@net1", "spinneret.io/default-route-nic": "net1"})
	var pod struct {
		Metadata struct {
			UID         string            `json:"uid"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if code := apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/pod1", nil, &pod); code != http.StatusOK {
		t.Fatalf("GET pod: %d", code)
	}
	if pod.Metadata.UID == "" || pod.Metadata.Annotations["k8s.v1.cni.cncf.io/networks"] != "storage@net1" {
		t.Fatalf("pod read back as %+v", pod.Metadata)
	}
}

// createPod creates a pod with annotations in namespace ns, creating the
// namespace and its default service account (no controller manager runs
// here to make it) first if needed.
func createPod(t *testing.T, a *k8senv.APIServer, ns, name string, annotations map[string]string) {
	t.Helper()
	createPodOn(t, a, ns, name, "", annotations)
}

// createPodOn creates the pod as createPod does, bound to node (none when
// empty), as the scheduler would have bound it.
func createPodOn(t *testing.T, a *k8senv.APIServer, ns, name, node string, annotations map[string]string) {
	t.Helper()
	apiRequest(t, a, http.MethodPost, "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}, nil)
	apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}}, nil)
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "annotations": annotations},
		"spec":     map[string]any{"containers": []map[string]any{{"name": "c", "image": "pause"}}}}
	if node != "" {
		pod["spec"].(map[string]any)["nodeName"] = node
	}
	if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/"+ns+"/pods", pod, nil); code != http.StatusCreated {
		t.Fatalf("create pod %s/%s: %d", ns, name, code)
	}
}

// startAPI starts etcd and kube-apiserver for one test, inside the netns
// of in (nil: the test's own).
func startAPI(t testing.TB, in k8senv.InNS) *k8senv.APIServer {
	t.Helper()
	bin, err := k8senv.Binary("..")
	if err != nil {
		t.Fatal(err)
	}
	a, err := k8senv.StartAPIServer(t.TempDir(), bin, in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// applyCRDs creates the CRDs of deploy/crds and waits until they serve.
func applyCRDs(t testing.TB, a *k8senv.APIServer) {
	t.Helper()
	files, _ := filepath.Glob("../deploy/crds/*.yaml")
	if len(files) != 3 {
		t.Fatalf("deploy/crds holds %d CRDs, want 3", len(files))
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
	deadline := time.Now().Add(30 * time.Second)
	for _, res := range []string{"ippools", "ipallocations", "reservedips"} {
		for apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/"+res, nil, nil) != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("%s not served after 30s", res)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestCRDs: the CRDs generated from the Go types install in a real API
// server; an IPAllocation's name is the allocation (a second claim on the
// same address conflicts); validation rejects bad objects; kubectl-style
// table output shows the useful columns.
func TestCRDs(t *testing.T) {
	a := startAPI(t, nil)
	applyCRDs(t, a)
	base := "/apis/spinneret.io/v1alpha1/"
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "underlay-v4"},
		"spec": map[string]any{"subnet": "10.6.0.0/16", "gateway": "10.6.0.1", "ranges": []map[string]string{{"start": "10.6.212.100", "end": "10.6.212.200"}}, "default": true}}
	if code := apiRequest(t, a, http.MethodPost, base+"ippools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create IPPool: %d", code)
	}
	alloc := func(uid string) map[string]any {
		return map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPAllocation", "metadata": map[string]any{"name": "underlay-v4.10.6.212.100"},
			"spec": map[string]any{"pool": "underlay-v4", "address": "10.6.212.100", "containerID": "c-" + uid, "interface": "eth0", "node": "node1",
				"pod": map[string]any{"namespace": "default", "name": "pod-" + uid, "uid": uid}}}
	}
	if code := apiRequest(t, a, http.MethodPost, base+"ipallocations", alloc("a"), nil); code != http.StatusCreated {
		t.Fatalf("first allocation: %d", code)
	}
	if code := apiRequest(t, a, http.MethodPost, base+"ipallocations", alloc("b"), nil); code != http.StatusConflict {
		t.Fatalf("second allocation of the same address: %d, want 409 Conflict", code)
	}
	bad := []struct {
		res  string
		body map[string]any
	}{
		{"ippools", map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "bad-vlan"}, "spec": map[string]any{"subnet": "10.7.0.0/16", "vlan": 5000}}},
		{"ippools", map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "no-subnet"}, "spec": map[string]any{}}},
		{"reservedips", map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "ReservedIP", "metadata": map[string]any{"name": "empty"}, "spec": map[string]any{"addresses": []string{}}}},
	}
	for _, b := range bad {
		if code := apiRequest(t, a, http.MethodPost, base+b.res, b.body, nil); code != http.StatusUnprocessableEntity {
			t.Errorf("invalid %s %v: %d, want 422", b.res, b.body["metadata"], code)
		}
	}
	// what `kubectl get ipallocations` shows
	req, _ := http.NewRequest(http.MethodGet, a.URL+base+"ipallocations", nil)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := a.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table struct {
		ColumnDefinitions []struct {
			Name     string
			Priority int
		} `json:"columnDefinitions"`
		Rows []struct{ Cells []any } `json:"rows"`
	}
	json.NewDecoder(resp.Body).Decode(&table)
	var cols []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 { // higher priorities show with -o wide
			cols = append(cols, c.Name)
		}
	}
	if strings.Join(cols, ",") != "Name,Pool,Address,Namespace,Pod,Interface,Node,Age" || len(table.Rows) != 1 {
		t.Fatalf("kubectl columns %v, %d rows", cols, len(table.Rows))
	}
	if got := fmt.Sprint(table.Rows[0].Cells[:7]); got != "[underlay-v4.10.6.212.100 underlay-v4 10.6.212.100 default pod-a eth0 node1]" {
		t.Fatalf("row %s", got)
	}
}

// TestAnnotationsFromAPIServer: with a kubeconfig in the node conf and no
// annotations from the runtime, ADD reads the pod from the API server and
// attaches the networks its annotation asks for; a pod re-created under
// the same name (another UID) is refused; with the API server down, ADD
// fails within the timeout, leaves nothing, and DEL still works.
func TestAnnotationsFromAPIServer(t *testing.T) {
	e := multiEnv(t)
	// the API server listens on the node's loopback, where the plugin runs
	a := startAPI(t, e.topo.Node.Do)
	ns := "spin"
	createPod(t, a, ns, "web", map[string]string{"k8s.v1.cni.cncf.io/networks": "blue@storage"})
	var pod struct {
		Metadata struct{ UID string } `json:"metadata"`
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/web", nil, &pod)

	appendFile(t, filepath.Join(e.dir, "node.yaml"), fmt.Sprintf("kubeconfig: %s\napiTimeout: 2s\n", a.Kubeconfig))
	l := e.multiConf(v4, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := func(uid string) *libcni.RuntimeConf {
		r := rtConf("c1", p)
		r.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "web"}, {"K8S_POD_UID", uid}}
		return r
	}
	r := e.mustAdd(l, rt(pod.Metadata.UID))
	if len(r.Interfaces) < 2 || r.Interfaces[1].Name != "storage" {
		t.Fatalf("interfaces %v: the pod's annotation asked for blue as 'storage'", r.Interfaces)
	}
	// network-status, written back with one patch
	var withStatus struct {
		Metadata struct{ Annotations map[string]string } `json:"metadata"`
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/web", nil, &withStatus)
	var status []struct {
		Name      string   `json:"name"`
		Interface string   `json:"interface"`
		IPs       []string `json:"ips"`
		MAC       string   `json:"mac"`
		Default   bool     `json:"default"`
		Gateway   []string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(withStatus.Metadata.Annotations["k8s.v1.cni.cncf.io/network-status"]), &status); err != nil || len(status) != 2 {
		t.Fatalf("network-status %q: %v", withStatus.Metadata.Annotations["k8s.v1.cni.cncf.io/network-status"], err)
	}
	if s := status[0]; s.Name != "red" || s.Interface != "eth0" || !s.Default || len(s.IPs) != 1 || s.MAC != r.Interfaces[0].Mac || fmt.Sprint(s.Gateway) != "[192.0.2.1]" {
		t.Errorf("network-status eth0: %+v", s)
	}
	if s := status[1]; s.Name != "blue" || s.Interface != "storage" || s.Default || len(s.IPs) != 1 || s.MAC != r.Interfaces[1].Mac {
		t.Errorf("network-status storage: %+v", s)
	}
	e.mustDel(l, rt(pod.Metadata.UID))
	e.sameAs(before, p)

	_, err := e.add(l, rt("7b0e0000-0000-0000-0000-000000000000"))
	wantErr(t, err, cni.ErrBadRequest, "the pod was re-created")
	e.sameAs(before, p)

	// a failed ADD leaves an event on the pod that says what failed
	createPod(t, a, ns, "bad", map[string]string{"k8s.v1.cni.cncf.io/networks": "purple"})
	badRT := rtConf("c2", p)
	badRT.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "bad"}}
	_, err = e.add(l, badRT)
	wantErr(t, err, cni.ErrBadRequest, `network "purple" is not defined`)
	if !podEvent(t, a, ns, "bad", "BadNetworkRequest", "purple") {
		t.Errorf("no BadNetworkRequest event for pod bad")
	}
	e.sameAs(before, p)

	a.Stop()
	start := time.Now()
	_, err = e.add(l, rt(pod.Metadata.UID))
	wantErr(t, err, 11, "API server unreachable")
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("ADD with the API server down took %s, want about the 2s timeout at most", d)
	}
	e.sameAs(before, p)
	e.mustDel(l, rt(pod.Metadata.UID))
}

// nadCRD is the Network Plumbing WG's NetworkAttachmentDefinition CRD, as
// Multus installs it (spec.config is a CNI config as a string).
var nadCRD = map[string]any{
	"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
	"metadata": map[string]any{"name": "network-attachment-definitions.k8s.cni.cncf.io"},
	"spec": map[string]any{
		"group": "k8s.cni.cncf.io", "scope": "Namespaced",
		"names": map[string]any{"plural": "network-attachment-definitions", "singular": "network-attachment-definition",
			"kind": "NetworkAttachmentDefinition", "shortNames": []string{"net-attach-def"}},
		"versions": []map[string]any{{"name": "v1", "served": true, "storage": true,
			"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "properties": map[string]any{
				"spec": map[string]any{"type": "object", "properties": map[string]any{"config": map[string]any{"type": "string"}}}}}}}},
	},
}

func createNAD(t *testing.T, a *k8senv.APIServer, ns, name, config string) {
	t.Helper()
	nad := map[string]any{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": name}, "spec": map[string]any{"config": config}}
	path := "/apis/k8s.cni.cncf.io/v1/namespaces/" + ns + "/network-attachment-definitions"
	deadline := time.Now().Add(30 * time.Second)
	for {
		code := apiRequest(t, a, http.MethodPost, path, nad, nil)
		if code == http.StatusCreated {
			return
		}
		if code != http.StatusNotFound || time.Now().After(deadline) { // 404 until the CRD serves
			t.Fatalf("create NAD %s/%s: %d", ns, name, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNADs: a network the catalogue does not define is looked up as a
// NetworkAttachmentDefinition of the pod's namespace and interpreted
// natively (the macvlan entry of a conflist, Spiderpool-style coordinator
// entry included, nothing executed); a NAD of a kind spinneret does not
// drive is a clear error; another namespace's NAD is refused.
func TestNADs(t *testing.T) {
	e, a := nadEnv(t)
	ns := "spin"
	createPod(t, a, ns, "web", map[string]string{"k8s.v1.cni.cncf.io/networks": "storage-nad"})
	createNAD(t, a, ns, "storage-nad", `{"cniVersion":"0.3.1","name":"storage-nad","plugins":[
		{"type":"macvlan","master":"uplink1","mode":"bridge","ipam":{"type":"spinneret","pools":[{"name":"v4","subnet":"198.51.100.0/24","ranges":[{"start":"198.51.100.70","end":"198.51.100.79"}],"gateway":"198.51.100.1"}]}},
		{"type":"coordinator","detectGateway":true,"ipam":{},"dns":{}}]}`)
	createNAD(t, a, ns, "bridge-nad", `{"cniVersion":"0.3.1","name":"b","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"198.51.100.0/24"}}`)
	appendFile(t, filepath.Join(e.dir, "node.yaml"), fmt.Sprintf("kubeconfig: %s\n", a.Kubeconfig))
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := func(name string) *libcni.RuntimeConf {
		r := rtConf("c-"+name, p)
		r.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}}
		return r
	}
	// a NAD's own pool needs the cluster admin's nadSubnets: by default
	// none, and then outside them
	for _, extra := range []string{"", `"nadSubnets":["198.51.101.0/24"]`} {
		_, err := e.add(e.multiConf(v4, extra), rt("web"))
		wantErr(t, err, cni.ErrBadRequest, "NetworkAttachmentDefinition spin/storage-nad: ipam.pools[0].subnet: 198.51.100.0/24 is not inside the address space the cluster admin allows NADs (nadSubnets in the CNI config: ")
		e.sameAs(before, p)
	}
	l := e.multiConf(v4, `"nadSubnets":["198.51.100.0/24"]`)
	r := e.mustAdd(l, rt("web"))
	if len(r.Interfaces) < 2 || r.Interfaces[1].Name != "net1" || nicAddr(t, r, "net1", true).String() != "198.51.100.70" {
		t.Fatalf("NAD network: interfaces %v, IPs %v", r.Interfaces, r.IPs)
	}
	if err := p.PingFrom(netip.MustParseAddr("198.51.100.70"), e.topo.Nets[1].GW4, 5*time.Second); err != nil {
		t.Errorf("net1 from the NAD: %v", err)
	}
	e.mustDel(l, rt("web"))
	e.sameAs(before, p)

	// a NAD's own pool keeps its gateway from the pod as the catalogue's do
	createPod(t, a, ns, "gw", map[string]string{"k8s.v1.cni.cncf.io/networks": `[{"name":"storage-nad","ips":["198.51.100.1"]}]`})
	_, err := e.add(l, rt("gw"))
	wantErr(t, err, cni.ErrBadRequest, "k8s.v1.cni.cncf.io/networks[0].ips: net1: static address 198.51.100.1 is the gateway of pool spin.storage-nad.v4")
	e.sameAs(before, p)

	// a tuning entry is done natively (sysctl with IFNAME, mtu); an entry
	// of a kind spinneret does not run is refused, never skipped
	createNAD(t, a, ns, "tuned-nad", `{"cniVersion":"0.3.1","name":"tuned","plugins":[
		{"type":"macvlan","master":"uplink1","mode":"bridge","ipam":{"type":"spinneret","pools":[{"name":"v4","subnet":"198.51.100.0/24","ranges":[{"start":"198.51.100.90","end":"198.51.100.99"}],"gateway":"198.51.100.1"}]}},
		{"type":"tuning","mtu":1400,"sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net.ipv4.conf.IFNAME.arp_announce":"2"}}]}`)
	createNAD(t, a, ns, "sbr-nad", `{"cniVersion":"0.3.1","name":"sbr","plugins":[
		{"type":"macvlan","master":"uplink1","ipam":{"type":"spinneret","pools":[{"name":"v4","subnet":"198.51.100.0/24"}]}},{"type":"sbr"}]}`)
	createPod(t, a, ns, "tuned", map[string]string{"k8s.v1.cni.cncf.io/networks": "tuned-nad@data"})
	e.mustAdd(l, rt("tuned"))
	if ln, err := p.NL().LinkByName("data"); err != nil || ln.Attrs().MTU != 1400 {
		t.Errorf("tuning's mtu 1400 on data: %v %v", ln, err)
	}
	for k, want := range map[string]string{"arp_filter": "1", "arp_announce": "2"} {
		if got, err := p.SysctlValue("net/ipv4/conf/data/" + k); got != want {
			t.Errorf("tuning's sysctl %s on data: %q (%v), want %s", k, got, err, want)
		}
	}
	e.mustDel(l, rt("tuned"))
	e.sameAs(before, p)
	createPod(t, a, ns, "sbr", map[string]string{"k8s.v1.cni.cncf.io/networks": "sbr-nad"})
	_, err = e.add(l, rt("sbr"))
	wantErr(t, err, cni.ErrBadRequest, `NetworkAttachmentDefinition spin/sbr-nad: plugins[1]: plugin "sbr" is not run by spinneret`)
	e.sameAs(before, p)

	createPod(t, a, ns, "br", map[string]string{"k8s.v1.cni.cncf.io/networks": "bridge-nad"})
	_, err = e.add(l, rt("br"))
	wantErr(t, err, cni.ErrBadRequest, "NetworkAttachmentDefinition spin/bridge-nad: no macvlan, ipvlan or sriov entry")
	createPod(t, a, ns, "other", map[string]string{"k8s.v1.cni.cncf.io/networks": "kube-system/storage-nad"})
	_, err = e.add(l, rt("other"))
	wantErr(t, err, cni.ErrBadRequest, `network "kube-system/storage-nad" is not in the pod's namespace spin`)
	createPod(t, a, ns, "nope", map[string]string{"k8s.v1.cni.cncf.io/networks": "missing-nad"})
	_, err = e.add(l, rt("nope"))
	wantErr(t, err, cni.ErrBadRequest, "nor is a NetworkAttachmentDefinition spin/missing-nad")
	e.sameAs(before, p)
}

// TestNADDelegatedIPAM: a standard macvlan NAD, as Multus users write it
// (IPAM host-local), works unchanged: spinneret runs host-local for the
// NIC, routes as it says, and releases through host-local on DEL and on a
// failed ADD (the run is journaled before it happens).
func TestNADDelegatedIPAM(t *testing.T) {
	e, a := nadEnv(t)
	ns := "spin"
	hlData := filepath.Join(e.dir, "host-local")
	createPod(t, a, ns, "web", map[string]string{"k8s.v1.cni.cncf.io/networks": "macvlan-conf"})
	createNAD(t, a, ns, "macvlan-conf", fmt.Sprintf(`{"cniVersion":"0.3.1","name":"macvlan-conf","type":"macvlan","master":"uplink1","mode":"bridge",
		"ipam":{"type":"host-local","subnet":"198.51.100.0/24","rangeStart":"198.51.100.80","rangeEnd":"198.51.100.89","gateway":"198.51.100.1",
		"routes":[{"dst":"198.18.0.0/24"}],"dataDir":%q}}`, hlData))
	appendFile(t, filepath.Join(e.dir, "node.yaml"), fmt.Sprintf("kubeconfig: %s\n", a.Kubeconfig))
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := rtConf("c1", p)
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "web"}}
	held := func() []string { return hostLocalHeld(hlData, "macvlan-conf") }
	// another IPAM plugin in a NAD hands out what it likes: without the
	// cluster admin's nadSubnets it is not run; with subnets that do not
	// hold what it gave, its address is refused and given back
	_, err := e.add(e.multiConf(v4, ""), rt)
	wantErr(t, err, cni.ErrBadRequest, "NetworkAttachmentDefinition spin/macvlan-conf: ipam: IPAM plugin host-local hands out addresses of the NAD's own choosing; the cluster admin allows that only inside nadSubnets (CNI config), which lists none")
	_, err = e.add(e.multiConf(v4, `"nadSubnets":["198.51.100.128/25"]`), rt)
	wantErr(t, err, cni.ErrBadRequest, "net1: IPAM plugin host-local gave 198.51.100.80, outside the address space the cluster admin allows NADs (nadSubnets in the CNI config: 198.51.100.128/25)")
	e.sameAs(before, p)
	if h := held(); len(h) != 0 {
		t.Fatalf("host-local still holds %v after its address was refused", h)
	}
	l := e.multiConf(v4, `"nadSubnets":["198.51.100.0/24"]`)
	r := e.mustAdd(l, rt)
	// (.81: host-local goes on from the .80 it gave the refused ADD)
	if got := nicAddr(t, r, "net1", true).String(); got != "198.51.100.81" || fmt.Sprint(held()) != "[198.51.100.81]" {
		t.Fatalf("net1 %s, host-local holds %v", got, held())
	}
	// host-local's route, via its gateway, in net1's table
	if err := p.PingFrom(netip.MustParseAddr("198.51.100.81"), e.topo.Nets[1].Remote4, 5*time.Second); err != nil {
		t.Errorf("via host-local's route: %v", err)
	}
	e.mustDel(l, rt)
	e.sameAs(before, p)
	if h := held(); len(h) != 0 {
		t.Fatalf("host-local still holds %v after DEL", h)
	}
	// the networks annotation's ips reach host-local as CNI's ips
	// capability (runtimeConfig.ips), and are honoured
	createPod(t, a, ns, "static", map[string]string{"k8s.v1.cni.cncf.io/networks": `[{"name":"macvlan-conf","ips":["198.51.100.86"]}]`})
	rtStatic := rtConf("c3", p)
	rtStatic.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "static"}}
	r = e.mustAdd(l, rtStatic)
	if got := nicAddr(t, r, "net1", true).String(); got != "198.51.100.86" || fmt.Sprint(held()) != "[198.51.100.86]" {
		t.Fatalf("net1 %s with ips 198.51.100.86, host-local holds %v", got, held())
	}
	e.mustDel(l, rtStatic)
	e.sameAs(before, p)
	if h := held(); len(h) != 0 {
		t.Fatalf("host-local still holds %v after DEL", h)
	}

	// a failed ADD (its first plan step fails, after host-local ran) gives
	// the address back to host-local
	t.Setenv("SPINNERET_TEST_FAIL_STEP", "0")
	_, err = e.add(l, rt)
	os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
	wantErr(t, err, cni.ErrStepFailed, "injected fault")
	e.sameAs(before, p)
	if h := held(); len(h) != 0 {
		t.Fatalf("host-local still holds %v after a failed ADD", h)
	}

	// host-local handing out the node's own address: refused with 104,
	// and host-local's allocation given back
	if err := e.topo.Node.AddAddrs("uplink1", netip.MustParsePrefix("198.51.100.2/24")); err != nil {
		t.Fatal(err)
	}
	before = e.snapshot(p)
	createPod(t, a, ns, "node", map[string]string{"k8s.v1.cni.cncf.io/networks": "node-conf"})
	createNAD(t, a, ns, "node-conf", fmt.Sprintf(`{"cniVersion":"0.3.1","name":"node-conf","type":"macvlan","master":"uplink1",
		"ipam":{"type":"host-local","subnet":"198.51.100.0/24","rangeStart":"198.51.100.2","rangeEnd":"198.51.100.2","dataDir":%q}}`, hlData))
	rtNode := rtConf("c2", p)
	rtNode.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "node"}}
	_, err = e.add(l, rtNode)
	wantErr(t, err, cni.ErrBadRequest, "net1: IPAM plugin host-local gave 198.51.100.2, an address of the node")
	e.sameAs(before, p)
	if h := hostLocalHeld(hlData, "node-conf"); len(h) != 0 {
		t.Fatalf("host-local still holds the refused address: %v", h)
	}
}

// nadEnv is multiEnv with an API server that serves NetworkAttachmentDefinitions.
func nadEnv(t *testing.T) (*env, *k8senv.APIServer) {
	t.Helper()
	e := multiEnv(t)
	a := startAPI(t, e.topo.Node.Do)
	if code := apiRequest(t, a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", nadCRD, nil); code != http.StatusCreated {
		t.Fatalf("NAD CRD: %d", code)
	}
	return e, a
}

// hostLocalHeld are the addresses host-local holds in dataDir for network.
func hostLocalHeld(dataDir, network string) []string {
	ents, _ := os.ReadDir(filepath.Join(dataDir, network))
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// podEvent reports whether pod has a Warning event with reason whose
// message holds substr.
func podEvent(t *testing.T, a *k8senv.APIServer, ns, pod, reason, substr string) bool {
	t.Helper()
	var events struct {
		Items []struct {
			Reason, Message, Type string
			InvolvedObject        struct{ Name string } `json:"involvedObject"`
		} `json:"items"`
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/events", nil, &events)
	for _, ev := range events.Items {
		if ev.InvolvedObject.Name == pod && ev.Reason == reason && ev.Type == "Warning" && strings.Contains(ev.Message, substr) {
			return true
		}
	}
	return false
}

// TestNADDelegatedDelConverges: a NAD whose config has no name (Multus'
// quickstart) works, named after the NAD as Multus names it; and a DEL
// whose delegated IPAM cannot release for a reason no retry fixes still
// finishes: a journaled config that is no valid CNI config (as the binary
// before this fix journaled such NADs) gives up at once, a plugin that
// fails every time gives up on the third DEL; each leaves a ReleaseFailed
// event on the pod and a log line, and nothing of spinneret's behind.
func TestNADDelegatedDelConverges(t *testing.T) {
	e, a := nadEnv(t)
	ns := "spin"
	hlData := filepath.Join(e.dir, "host-local")
	appendFile(t, filepath.Join(e.dir, "node.yaml"), fmt.Sprintf("kubeconfig: %s\n", a.Kubeconfig))
	l := e.multiConf(v4, `"nadSubnets":["198.51.100.0/24"]`)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := func(id, pod string) *libcni.RuntimeConf {
		createPod(t, a, ns, pod, map[string]string{"k8s.v1.cni.cncf.io/networks": "macvlan-conf"})
		r := rtConf(id, p)
		r.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", pod}}
		return r
	}
	held := func() []string { return hostLocalHeld(hlData, "macvlan-conf") }
	journal := func(id string) string {
		m, _ := filepath.Glob(filepath.Join(e.stateDir(), "journal", "*", id+":eth0.journal"))
		if len(m) != 1 {
			t.Fatalf("journals of %s: %v", id, m)
		}
		return m[0]
	}
	edit := func(id, old, new string) {
		b, _ := os.ReadFile(journal(id))
		if !strings.Contains(string(b), old) {
			t.Fatalf("journal of %s has no %s:\n%s", id, old, b)
		}
		os.WriteFile(journal(id), []byte(strings.Replace(string(b), old, new, 1)), 0o600)
	}

	r1 := rt("c1", "web") // (also gives the API server time to serve the new CRD)
	// Multus' quickstart macvlan-conf: no "name"
	createNAD(t, a, ns, "macvlan-conf", fmt.Sprintf(`{"cniVersion":"0.3.1","type":"macvlan","master":"uplink1","mode":"bridge",
		"ipam":{"type":"host-local","subnet":"198.51.100.0/24","rangeStart":"198.51.100.80","rangeEnd":"198.51.100.89","gateway":"198.51.100.1","dataDir":%q}}`, hlData))
	r := e.mustAdd(l, r1)
	if got := nicAddr(t, r, "net1", true).String(); got != "198.51.100.80" || fmt.Sprint(held()) != "[198.51.100.80]" {
		t.Fatalf("a NAD without name: net1 %s, host-local holds %v under the NAD's name", got, held())
	}
	e.mustDel(l, r1)
	e.sameAs(before, p)
	if h := held(); len(h) != 0 {
		t.Fatalf("host-local still holds %v", h)
	}

	// the journal of a NAD without a name, as the binary before the fix
	// wrote it: DEL gives up on host-local at once, and says so
	r2 := rt("c2", "old")
	e.mustAdd(l, r2)
	edit("c2", `"name":"macvlan-conf",`, "")
	e.mustDel(l, r2)
	e.sameAs(before, p)
	if !podEvent(t, a, ns, "old", "ReleaseFailed", "the journaled config cannot be run: no name") {
		t.Errorf("no ReleaseFailed event for pod old")
	}
	if b, _ := os.ReadFile(filepath.Join(e.dir, "spinneret.log")); !strings.Contains(string(b), "retrying cannot help") {
		t.Errorf("nothing logged about the address not released")
	}
	os.RemoveAll(filepath.Join(hlData, "macvlan-conf")) // what the operator releases by hand

	// a plugin that fails every DEL: two DELs fail (a retry might help),
	// the third gives up
	r3 := rt("c3", "flaky")
	e.mustAdd(l, r3)
	edit("c3", `"rangeStart":"198.51.100.80"`, `"rangeStart":"not-an-address"`)
	for i := 1; i <= 2; i++ {
		err := e.del(l, r3)
		wantErr(t, err, 11, "IPAM plugin host-local DEL for net1")
	}
	e.mustDel(l, r3)
	e.sameAs(before, p)
	if !podEvent(t, a, ns, "flaky", "ReleaseFailed", "failed 3 times") {
		t.Errorf("no ReleaseFailed event for pod flaky")
	}
}
