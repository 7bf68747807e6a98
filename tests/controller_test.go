package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// startController runs spinneret-controller against the API server (in
// the namespace of in) with short leader-election and pass timings.
func startController(t *testing.T, a *k8senv.APIServer, in k8senv.InNS, identity string, extra ...string) *exec.Cmd {
	t.Helper()
	return startControllerAs(t, a.Kubeconfig, in, identity, extra...)
}

// startControllerAs runs the controller with the given kubeconfig.
func startControllerAs(t *testing.T, kubeconfig string, in k8senv.InNS, identity string, extra ...string) *exec.Cmd {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), identity+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "spinneret-controller"), append([]string{"-kubeconfig", kubeconfig, "-identity", identity,
		"-lease-duration", "3s", "-renew-deadline", "2s", "-retry-period", "500ms", "-interval", "1s", "-terminating-delay", "0s", "-log-level", "debug", "-metrics-addr", ""}, extra...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := cmd.Start
	if in != nil {
		err = in(start)
	} else {
		err = start()
	}
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProc(cmd)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", identity, b)
		}
	})
	return cmd
}

func stopProc(cmd *exec.Cmd) {
	if cmd.Process != nil && cmd.ProcessState == nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
}

// eventually polls cond every 100 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (%s)", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func leaseHolder(t *testing.T, a *k8senv.APIServer) string {
	var lease struct {
		Spec struct {
			HolderIdentity string `json:"holderIdentity"`
		} `json:"spec"`
	}
	apiRequest(t, a, http.MethodGet, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/spinneret-controller", nil, &lease)
	return lease.Spec.HolderIdentity
}

// podAllocCount counts the IPAllocations of a pod UID.
func (k *kubeEnv) podAllocCount(uid string) int {
	n := 0
	for _, a := range k.allocations() {
		if a.Spec.Pod.UID == uid {
			n++
		}
	}
	return n
}

func (k *kubeEnv) gone(uid string) func() (bool, string) {
	return func() (bool, string) {
		n := k.podAllocCount(uid)
		return n == 0, fmt.Sprintf("%d allocations of %s", n, uid)
	}
}

// TestController: spinneret controller, elected through a Lease, frees the
// addresses of pods that are gone, of pods terminating past their grace
// period on a NotReady node, of StatefulSet ordinals scaled away, and of
// quarantines that ran out; keeps those of live pods, of StatefulSet pods
// whose ordinal is valid and of pods terminating on a Ready node; frees
// an address whose DEL ran while the API server was down; and keeps each
// IPPool's status counts. A second replica takes over when the leader dies.
func TestController(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	in := k.topo.Node.Do
	ctl := startController(t, k.a, in, "ctl-1", "-metrics-addr", "127.0.0.1:19472")
	eventually(t, 15*time.Second, "ctl-1 holds the Lease", func() (bool, string) { h := leaseHolder(t, k.a); return h == "ctl-1", h })
	startController(t, k.a, in, "ctl-2", "-metrics-addr", "127.0.0.1:19473")
	metric := func(port, name string) float64 { return scrape(t, k.topo.Node.Do, port)[name] }
	// the leader's caches synced (its first pool status): what it counts
	// from here on is what happens while it leads
	eventually(t, 15*time.Second, "ctl-1's first pass", func() (bool, string) {
		v := metric("19472", `spinneret_pool_addresses{pool="red-v4"}`)
		return v == 10, fmt.Sprint(v)
	})

	add := func(ns, name, uid, cid string) {
		p, _ := k.topo.NewPod()
		k.mustAdd(l, kubeRT(cid, p, ns, name, uid))
	}
	// a pod deleted without DEL (a node lost, say)
	gone := k.pod("spin", "gone", nil, nil, "")
	add("spin", "gone", gone, "c-gone")
	live := k.pod("spin", "live", nil, nil, "")
	add("spin", "live", live, "c-live")
	if n := k.podAllocCount(gone); n != 2 {
		t.Fatalf("pod gone holds %d allocations", n)
	}
	k.deletePod("spin", "gone")
	eventually(t, 10*time.Second, "the deleted pod's addresses freed", k.gone(gone))

	// pool status: red-v4 hands out 10, one pod (live) holds one
	eventually(t, 10*time.Second, "IPPool red-v4 status", func() (bool, string) {
		var pool struct {
			Status struct {
				Allocated int64  `json:"allocated"`
				Total     string `json:"total"`
			} `json:"status"`
		}
		apiRequest(t, k.a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ippools/red-v4", nil, &pool)
		return pool.Status.Allocated == 1 && pool.Status.Total == "10", fmt.Sprintf("%+v", pool.Status)
	})
	var bluePool struct {
		Status struct{ Total string } `json:"status"`
	}
	apiRequest(t, k.a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ippools/blue-v4", nil, &bluePool)
	if bluePool.Status.Total != "2" {
		t.Errorf("blue-v4 total %q: 5 in range, .100 excluded, .101-.102 reserved", bluePool.Status.Total)
	}
	// the same in the leader's metrics, with what it did; the other
	// replica does not lead
	m := scrape(t, k.topo.Node.Do, "19472")
	for name, want := range map[string]float64{"spinneret_controller_leader": 1, `spinneret_pool_addresses{pool="red-v4"}`: 10,
		`spinneret_pool_allocated{pool="red-v4"}`: 1, `spinneret_pool_addresses{pool="blue-v4"}`: 2, `spinneret_gc_releases_total{reason="pod_gone"}`: 2,
		`spinneret_allocations_created_total{pool="red-v4"}`: 2, `spinneret_allocations_released_total{pool="red-v4"}`: 1, "spinneret_cidr_publishes_total": 1} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("ctl-1's metric %s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if m["spinneret_cidr_publish_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("ctl-1 published the CIDRs at %v", m["spinneret_cidr_publish_timestamp_seconds"])
	}
	if got := metric("19473", "spinneret_controller_leader"); got != 0 {
		t.Errorf("ctl-2 leads: %v", got)
	}

	// a StatefulSet pod keeps its address while its ordinal is valid
	sts := map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": map[string]any{"name": "db"},
		"spec": map[string]any{"replicas": 1, "serviceName": "db", "selector": map[string]any{"matchLabels": map[string]string{"app": "db"}},
			"template": map[string]any{"metadata": map[string]any{"labels": map[string]string{"app": "db"}},
				"spec": map[string]any{"containers": []map[string]any{{"name": "c", "image": "pause"}}}}}}
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/apps/v1/namespaces/spin/statefulsets", sts, nil); code != http.StatusCreated {
		t.Fatalf("create StatefulSet: %d", code)
	}
	db := k.pod("spin", "db-0", map[string]string{"app": "db"}, nil, "db")
	add("spin", "db-0", db, "c-db")
	k.deletePod("spin", "db-0")

	// terminating past its grace period: on a NotReady node freed, on a
	// Ready node kept (its kubelet finishes the job)
	k.node("node-b", false)
	k.node("node-c", true)
	tb := k.podOn("spin", "tb", "node-b")
	add("spin", "tb", tb, "c-tb")
	tc := k.podOn("spin", "tc", "node-c")
	add("spin", "tc", tc, "c-tc")
	for _, name := range []string{"tb", "tc"} {
		if code := apiRequest(t, k.a, http.MethodDelete, "/api/v1/namespaces/spin/pods/"+name+"?gracePeriodSeconds=1", nil, nil); code != http.StatusOK {
			t.Fatalf("delete pod %s: %d", name, code)
		}
	}
	eventually(t, 10*time.Second, "the pod terminating on NotReady node-b freed", k.gone(tb))

	// a quarantine that ran out
	q := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPAllocation", "metadata": map[string]any{"name": "red-v4.192.0.2.109", "labels": map[string]string{"spinneret.io/pool": "red-v4"}},
		"spec": map[string]any{"pool": "red-v4", "address": "192.0.2.109", "pod": map[string]string{"namespace": "", "name": "", "uid": ""},
			"containerID": "", "interface": "eth0", "node": "node-a", "quarantinedUntil": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)}}
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ipallocations", q, nil); code != http.StatusCreated {
		t.Fatalf("create quarantine: %d", code)
	}
	eventually(t, 10*time.Second, "the ended quarantine deleted", func() (bool, string) {
		code := apiRequest(t, k.a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations/red-v4.192.0.2.109", nil, nil)
		return code == http.StatusNotFound, fmt.Sprint(code)
	})
	if k.podAllocCount(db) != 2 || k.podAllocCount(tc) != 2 || k.podAllocCount(live) != 2 {
		t.Fatalf("kept: db-0 %d (StatefulSet ordinal 0 of 1), tc %d (Ready node), live %d", k.podAllocCount(db), k.podAllocCount(tc), k.podAllocCount(live))
	}
	// scale the StatefulSet to 0: ordinal 0 is gone
	if code := apiRequestCT(t, k.a, http.MethodPatch, "/apis/apps/v1/namespaces/spin/statefulsets/db", "application/merge-patch+json", map[string]any{"spec": map[string]any{"replicas": 0}}); code != http.StatusOK {
		t.Fatalf("scale: %d", code)
	}
	eventually(t, 10*time.Second, "the scaled-away ordinal's addresses freed", k.gone(db))

	// DEL with the API server down succeeds; the address waits for GC
	down := k.pod("spin", "down", nil, nil, "")
	p, _ := k.topo.NewPod()
	rt := kubeRT("c-down", p, "spin", "down", down)
	k.mustAdd(l, rt)
	k.a.StopAPIServer()
	k.mustDel(l, rt)
	if err := k.a.Restart(); err != nil {
		t.Fatal(err)
	}
	if n := k.podAllocCount(down); n != 2 {
		t.Fatalf("after DEL with the API server down: %d allocations, want 2 (left to GC)", n)
	}
	k.deletePod("spin", "down")
	eventually(t, 20*time.Second, "GC frees the address whose DEL missed the API server", k.gone(down))

	// the leader dies: the other replica takes over, and collects
	stopProc(ctl)
	eventually(t, 15*time.Second, "ctl-2 takes over the Lease", func() (bool, string) { h := leaseHolder(t, k.a); return h == "ctl-2", h })
	k.deletePod("spin", "live")
	eventually(t, 10*time.Second, "the new leader collects", k.gone(live))
	if l, gc := metric("19473", "spinneret_controller_leader"), metric("19473", `spinneret_gc_releases_total{reason="pod_gone"}`); l != 1 || gc != 2 {
		t.Errorf("ctl-2's metrics after taking over: leader %v, pod_gone releases %v (want 1, 2)", l, gc)
	}
}

// scrape reads a controller's /metrics (in the namespace in): each
// sample by its name and labels as written.
func scrape(t *testing.T, in k8senv.InNS, port string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := in(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}}}
	resp, err := c.Get("http://127.0.0.1:" + port + "/metrics")
	if err != nil {
		t.Fatalf("scrape :%s: %v", port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// node creates a Node with its Ready condition.
func (k *kubeEnv) node(name string, ready bool) {
	k.t.Helper()
	if code := apiRequest(k.t, k.a, http.MethodPost, "/api/v1/nodes", map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": name}}, nil); code != http.StatusCreated {
		k.t.Fatalf("create node %s: %d", name, code)
	}
	status := "False"
	if ready {
		status = "True"
	}
	patch := map[string]any{"status": map[string]any{"conditions": []map[string]any{{"type": "Ready", "status": status, "reason": "Test",
		"lastHeartbeatTime": time.Now().UTC().Format(time.RFC3339), "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}}
	if code := apiRequestCT(k.t, k.a, http.MethodPatch, "/api/v1/nodes/"+name+"/status", "application/merge-patch+json", patch); code != http.StatusOK {
		k.t.Fatalf("node %s status: %d", name, code)
	}
}

// podOn creates a pod bound to a node.
func (k *kubeEnv) podOn(ns, name, node string) string {
	k.t.Helper()
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": name},
		"spec": map[string]any{"nodeName": node, "containers": []map[string]any{{"name": "c", "image": "pause"}}}}
	var got struct {
		Metadata struct{ UID string } `json:"metadata"`
	}
	if code := apiRequest(k.t, k.a, http.MethodPost, "/api/v1/namespaces/"+ns+"/pods", pod, &got); code != http.StatusCreated {
		k.t.Fatalf("create pod %s/%s: %d", ns, name, code)
	}
	return got.Metadata.UID
}

// apiRequestCT is apiRequest with a content type (patches).
func apiRequestCT(t *testing.T, a *k8senv.APIServer, method, path, contentType string, body any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, a.URL+path, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", contentType)
	resp, err := a.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// published reads the controller's ConfigMap.
func published(t *testing.T, a *k8senv.APIServer) (cn struct {
	ServiceCIDRs  []string            `json:"serviceCIDRs"`
	ServiceSource string              `json:"serviceSource"`
	PodCIDRs      []string            `json:"podCIDRs"`
	PodSource     string              `json:"podSource"`
	NodePodCIDRs  map[string][]string `json:"nodePodCIDRs"`
}) {
	var cm struct{ Data map[string]string }
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/kube-system/configmaps/spinneret-cluster-network", nil, &cm)
	json.Unmarshal([]byte(cm.Data["network.json"]), &cn)
	return
}

// TestControllerCIDRs: the controller discovers the cluster's CIDRs and
// publishes them in one ConfigMap: service CIDRs from ServiceCIDR objects;
// pod CIDRs from the Nodes, then kubeadm-config, then Cilium (cluster-pool:
// each node's range from its CiliumNode, which differs here from the
// Node's spec.podCIDRs), then Calico's enabled IPPools. The plugin routes
// them through the node (veth0) when its config names none, and keeps
// using the last published values when the controller is gone.
func TestControllerCIDRs(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	in := k.topo.Node.Do
	ctl := startController(t, k.a, in, "ctl")
	for _, n := range []struct{ name, cidr string }{{"master1", "10.5.112.0/24"}, {"node01", "10.5.115.0/24"}} {
		node := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": n.name}, "spec": map[string]any{"podCIDR": n.cidr, "podCIDRs": []string{n.cidr}}}
		if code := apiRequest(t, k.a, http.MethodPost, "/api/v1/nodes", node, nil); code != http.StatusCreated {
			t.Fatalf("create node: %d", code)
		}
	}
	eventually(t, 15*time.Second, "services from ServiceCIDR, pods from the Nodes", func() (bool, string) {
		cn := published(t, k.a)
		return strings.Join(cn.ServiceCIDRs, ",") == "10.96.0.0/16" && cn.ServiceSource == "ServiceCIDR" &&
			strings.Join(cn.PodCIDRs, ",") == "10.5.112.0/24,10.5.115.0/24" && cn.NodePodCIDRs["node01"][0] == "10.5.115.0/24", fmt.Sprintf("%+v", cn)
	})

	// the plugin routes the published CIDRs through veth0
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	uid := k.pod("spin", "web", nil, nil, "")
	k.mustAdd(l, kubeRT("c1", p, "spin", "web", uid))
	viaVeth0 := func(p interface{ Do(func() error) error }, dst string) string {
		var dev string
		p.Do(func() error {
			rs, err := netlink.RouteGet(net.ParseIP(dst))
			if err != nil || len(rs) == 0 {
				dev = fmt.Sprint(err)
				return nil
			}
			if l, err := netlink.LinkByIndex(rs[0].LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return nil
		})
		return dev
	}
	for _, dst := range []string{"10.96.0.1", "10.5.115.7"} {
		if dev := viaVeth0(p, dst); dev != "veth0" {
			t.Errorf("pod route to %s via %s, want veth0 (published CIDRs)", dst, dev)
		}
	}

	kubeadm := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "kubeadm-config"},
		"data": map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.5.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"}}
	apiRequest(t, k.a, http.MethodPost, "/api/v1/namespaces/kube-system/configmaps", kubeadm, nil)
	eventually(t, 15*time.Second, "pods from kubeadm-config", func() (bool, string) {
		cn := published(t, k.a)
		return strings.Join(cn.PodCIDRs, ",") == "10.5.0.0/16" && cn.PodSource == "kubeadm-config" && cn.ServiceSource == "ServiceCIDR", fmt.Sprintf("%+v", cn)
	})

	// Cilium in cluster-pool mode: the nodes' ranges are the CiliumNodes'
	createCRD(t, k.a, "cilium.io", "ciliumnodes", "CiliumNode", "v2", "Cluster")
	for _, n := range []struct{ name, cidr string }{{"master1", "10.5.113.0/24"}, {"node01", "10.5.112.0/24"}} {
		cnode := map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": map[string]any{"name": n.name}, "spec": map[string]any{"ipam": map[string]any{"podCIDRs": []string{n.cidr}}}}
		createRetry(t, k.a, "/apis/cilium.io/v2/ciliumnodes", cnode)
	}
	cilium := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "cilium-config"},
		"data": map[string]string{"ipam": "cluster-pool", "cluster-pool-ipv4-cidr": "10.5.112.0/21", "cluster-pool-ipv4-mask-size": "24"}}
	apiRequest(t, k.a, http.MethodPost, "/api/v1/namespaces/kube-system/configmaps", cilium, nil)
	eventually(t, 15*time.Second, "pods from Cilium (cluster-pool, CiliumNode per node)", func() (bool, string) {
		cn := published(t, k.a)
		return strings.Join(cn.PodCIDRs, ",") == "10.5.112.0/21" && strings.HasPrefix(cn.PodSource, "cilium-config") &&
			fmt.Sprint(cn.NodePodCIDRs["master1"]) == "[10.5.113.0/24]" && fmt.Sprint(cn.NodePodCIDRs["node01"]) == "[10.5.112.0/24]", fmt.Sprintf("%+v", cn)
	})

	// Calico (no cilium-config): its enabled pools only
	apiRequest(t, k.a, http.MethodDelete, "/api/v1/namespaces/kube-system/configmaps/cilium-config", nil, nil)
	createCRD(t, k.a, "crd.projectcalico.org", "ippools", "IPPool", "v1", "Cluster")
	for _, cp := range []struct {
		name, cidr string
		disabled   bool
	}{{"default-ipv4", "10.244.0.0/16", false}, {"old", "10.245.0.0/16", true}, {"v6", "fd00:244::/64", false}} {
		createRetry(t, k.a, "/apis/crd.projectcalico.org/v1/ippools", map[string]any{"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
			"metadata": map[string]any{"name": cp.name}, "spec": map[string]any{"cidr": cp.cidr, "disabled": cp.disabled}})
	}
	eventually(t, 15*time.Second, "pods from Calico's enabled IPPools", func() (bool, string) {
		cn := published(t, k.a)
		return strings.Join(cn.PodCIDRs, ",") == "10.244.0.0/16,fd00:244::/64" && cn.PodSource == "Calico IPPool", fmt.Sprintf("%+v", cn)
	})

	// the controller is gone: pods still get the last published CIDRs
	stopProc(ctl)
	p2, _ := k.topo.NewPod()
	uid2 := k.pod("spin", "web2", nil, nil, "")
	k.mustAdd(l, kubeRT("c2", p2, "spin", "web2", uid2))
	if dev := viaVeth0(p2, "10.244.3.4"); dev != "veth0" {
		t.Errorf("with the controller down, route to 10.244.3.4 via %s, want veth0", dev)
	}
}

// createCRD installs a minimal CRD (any fields kept) for another project's
// objects.
func createCRD(t *testing.T, a *k8senv.APIServer, group, plural, kind, version, scope string) {
	t.Helper()
	crd := map[string]any{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": plural + "." + group},
		"spec": map[string]any{"group": group, "scope": scope,
			"names": map[string]any{"plural": plural, "singular": strings.ToLower(kind), "kind": kind},
			"versions": []map[string]any{{"name": version, "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, nil); code != http.StatusCreated {
		t.Fatalf("create CRD %s.%s: %d", plural, group, code)
	}
}

// createRetry creates an object, retrying while its CRD is not served yet.
func createRetry(t *testing.T, a *k8senv.APIServer, path string, obj any) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code := apiRequest(t, a, http.MethodPost, path, obj, nil)
		if code == http.StatusCreated {
			return
		}
		if code != http.StatusNotFound || time.Now().After(deadline) {
			t.Fatalf("create %s: %d", path, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
