package tests

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// The full stack, as an operator runs it: kube-apiserver + etcd, Debian's
// containerd and a kubelet (built from the Go module proxy, cached) in the
// test's node namespace; spinneret's image imported into containerd; the
// DaemonSet's and the controller's pods made from the chart's own pod
// templates with spec.nodeName (no scheduler or controller manager).

const (
	e2eImage = "ghcr.io/spinneret-cni/spinneret:e2e"
	e2ePause = "registry.k8s.io/pause:3.10"
	// e2ePrevious is the release the suite upgrades from: its chart and
	// image are built from this commit of the repository (git archive).
	// Move it to the last release when one changes what the node keeps
	// (journals, the conflist, the chart's objects).
	e2ePrevious      = "84148e7679cef1570971c8c88713a0b81bceaf03"
	e2ePreviousImage = "ghcr.io/spinneret-cni/spinneret:previous"
	// the versions the two images' binaries report
	e2eVersion, e2ePreviousVersion = "e2e-current", "e2e-previous"
)

// e2eNode is a containerd and a kubelet of the test's node.
type e2eNode struct {
	t          *testing.T
	dir        string // everything of this node: containerd's root and state, the CNI dirs, spinneret's paths
	sock       string
	ctrd, kube *exec.Cmd
	// how they were started, for a restart
	ctrdArgs, kubeArgs []string
	e                  *env
	rt                 e2eRuntime
}

// e2eRuntime is a containerd the suite runs under: Debian's (1.6, from
// PATH), or one built from the Go module proxy (tests/containerd/build.sh)
// whose daemon, runc shim and ctr are in dir.
type e2eRuntime struct{ name, dir string }

// e2eRuntimes are Debian's containerd 1.6 and containerd 2.4 (which reads
// the same version 2 config, converted to its version 3).
func e2eRuntimes(t *testing.T) []e2eRuntime {
	t.Helper()
	out, err := exec.Command("containerd/build.sh").Output()
	if err != nil {
		t.Fatalf("building containerd 2: %v", err)
	}
	return []e2eRuntime{{"containerd-1.6", ""}, {"containerd-2.4", strings.TrimSpace(string(out))}}
}

// bin is the path of one of the runtime's commands.
func (r e2eRuntime) bin(name string) string {
	if r.dir == "" {
		return name
	}
	return filepath.Join(r.dir, name)
}

func (n *e2eNode) path(p string) string { return filepath.Join(n.dir, p) }

// e2eImages builds spinneret's image (make image, amd64), the previous
// release's image and chart (from e2ePrevious's tree) and the pause
// image, once per test binary.
func e2eImages(t *testing.T) (spin, prev, prevChart, pause string) {
	t.Helper()
	// beside the test binary's builds, removed with them: each run's image
	// is its own code's
	dir := filepath.Join(filepath.Dir(binDir), "e2e-images")
	spin, prev, pause = filepath.Join(dir, "spinneret.tar"), filepath.Join(dir, "previous.tar"), filepath.Join(dir, "pause.tar")
	src := filepath.Join(dir, "previous-src")
	prevChart = filepath.Join(src, "deploy/helm/spinneret")
	if _, err := os.Stat(pause); err == nil {
		return
	}
	os.MkdirAll(filepath.Join(dir, "pause"), 0o755)
	os.MkdirAll(src, 0o755)
	if out, err := exec.Command("sh", "-c", "git -C .. archive "+e2ePrevious+" | tar -x -C "+src).CombinedOutput(); err != nil {
		t.Fatalf("the previous release's tree (git archive %s; a clone with its history is needed): %v\n%s", e2ePrevious, err, out)
	}
	for _, c := range [][]string{
		{"make", "-s", "-C", "..", "image", "IMAGE=" + e2eImage, "IMAGE_OUT=" + spin, "IMAGE_DIR=" + filepath.Join(dir, "build"), "PLATFORMS=linux/amd64", "VERSION=" + e2eVersion},
		{"make", "-s", "-C", src, "image", "IMAGE=" + e2ePreviousImage, "IMAGE_OUT=" + prev, "IMAGE_DIR=" + filepath.Join(dir, "build-previous"), "PLATFORMS=linux/amd64", "VERSION=" + e2ePreviousVersion},
		{"env", "CGO_ENABLED=0", "go", "build", "-trimpath", "-o", filepath.Join(dir, "pause", "pause"), "./e2e/pause"},
		{"go", "run", "../hack/mkimage", "-o", pause, "-tag", e2ePause, "-entrypoint", "/pause", "-platform", "linux/amd64=" + filepath.Join(dir, "pause")},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v", strings.Join(c, " "), err)
		}
	}
	return
}

// startE2ENode starts containerd in the node's namespace (its own root,
// state, socket and runc root; pod namespaces under its state dir; the
// CNI dirs under dir) with both images, then a kubelet registering node
// against the API server.
func startE2ENode(t *testing.T, e *env, a *k8senv.APIServer, node string, rt e2eRuntime) *e2eNode {
	t.Helper()
	kubelet, err := exec.Command("k8s/build-apiserver.sh", k8senv.Version, "kubelet").Output()
	if err != nil {
		t.Fatalf("building kubelet: %v", err)
	}
	spin, prev, _, pause := e2eImages(t)
	n := &e2eNode{t: t, dir: t.TempDir(), rt: rt}
	n.sock = n.path("run/containerd/containerd.sock")
	for _, d := range []string{"root", "run/containerd", "state/netns", "opt/cni/bin", "etc/cni/net.d", "kubelet/root", "kubelet/pki", "kubelet/logs"} {
		os.MkdirAll(n.path(d), 0o755)
	}
	// a node's mounts are shared (systemd makes them so; this machine
	// runs none): the DaemonSet mounts the pods' namespaces with
	// HostToContainer propagation, which a private mount refuses
	if err := syscall.Mount(n.dir, n.dir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(n.dir, syscall.MNT_DETACH) })
	if err := syscall.Mount("", n.dir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[ttrpc]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[4]q
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[5]q
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[6]q
      conf_dir = %[7]q
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = %[8]q
`, n.path("root"), n.path("state"), n.sock, n.path("opt"), e2ePause, n.path("opt/cni/bin"), n.path("etc/cni/net.d"), n.path("runc"))
	os.WriteFile(n.path("containerd.toml"), []byte(cfg), 0o644)
	n.e, n.ctrdArgs = e, []string{rt.bin("containerd"), "--config", n.path("containerd.toml")}
	n.startContainerd()
	v, _ := exec.Command(rt.bin("containerd"), "--version").Output()
	t.Logf("runtime: %s", bytes.TrimSpace(v))
	t.Cleanup(n.stop)
	for _, img := range []string{pause, spin, prev} {
		if out, err := n.ctr("images", "import", "--platform", "linux/amd64", img); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", img, err, out)
		}
	}
	kc := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
podLogsDir: %q
resolvConf: ""
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
containerRuntimeEndpoint: unix://%s
`, n.path("kubelet/logs"), n.sock)
	os.WriteFile(n.path("kubelet.yaml"), []byte(kc), 0o644)
	n.kubeArgs = []string{strings.TrimSpace(string(kubelet)), "--config", n.path("kubelet.yaml"), "--kubeconfig", a.Kubeconfig,
		"--root-dir", n.path("kubelet/root"), "--cert-dir", n.path("kubelet/pki"), "--hostname-override", node, "--node-ip", netlab.NodeIP4.String()}
	n.startKubelet()
	return n
}

func (n *e2eNode) startContainerd() {
	n.t.Helper()
	n.ctrd = n.start(n.e, "containerd.log", n.ctrdArgs[0], n.ctrdArgs[1:]...)
	eventually(n.t, 20*time.Second, "containerd answers", func() (bool, string) {
		out, err := n.ctr("version")
		return err == nil, string(out)
	})
}

func (n *e2eNode) startKubelet() {
	n.kube = n.start(n.e, "kubelet.log", n.kubeArgs[0], n.kubeArgs[1:]...)
}

// ctr runs containerd's client against the node's containerd, in the
// CRI's namespace.
func (n *e2eNode) ctr(args ...string) ([]byte, error) {
	return exec.Command(n.rt.bin("ctr"), append([]string{"--address", n.sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
}

// termProc stops a process the node started (its process group, by PID):
// SIGTERM, then SIGKILL after 10 s.
func termProc(c *exec.Cmd) {
	if c == nil || c.Process == nil || c.ProcessState != nil {
		return
	}
	syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// start runs a process of the node inside its namespace, its output to
// the node's dir.
func (n *e2eNode) start(e *env, log, bin string, args ...string) *exec.Cmd {
	n.t.Helper()
	f, err := os.OpenFile(n.path(log), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if n.rt.dir != "" {
		// containerd starts the runc shim it finds first in PATH
		cmd.Env = append(os.Environ(), "PATH="+n.rt.dir+":"+os.Getenv("PATH"))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.topo.Node.Do(cmd.Start); err != nil {
		n.t.Fatalf("start %s: %v", bin, err)
	}
	return cmd
}

// stop stops the kubelet and containerd (by PID), and what containerd's
// shims left of this node alone: its containers (runc), its shims, its
// mounts.
func (n *e2eNode) stop() {
	if n.t.Failed() {
		logs := []string{"kubelet.log", "containerd.log", "var/log/spinneret/spinneret.log"}
		agents, _ := filepath.Glob(n.path("kubelet/logs/kube-system_spinneret-node-a_*/*/*.log"))
		for _, l := range agents {
			logs = append(logs, strings.TrimPrefix(l, n.dir+"/"))
		}
		for _, l := range logs {
			b, _ := os.ReadFile(n.path(l))
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			n.t.Logf("%s (tail):\n%s", l, b)
		}
	}
	termProc(n.kube)
	termProc(n.ctrd)
	// the containers outlive containerd and their shims: runc (this
	// node's own root) kills and deletes each, then the shims go
	root := filepath.Join(n.path("runc"), "k8s.io")
	if ids, err := exec.Command("runc", "--root", root, "list", "-q").Output(); err == nil {
		for _, id := range strings.Fields(string(ids)) {
			exec.Command("runc", "--root", root, "delete", "-f", id).Run()
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(n.sock)) {
			continue
		}
		var pid int
		fmt.Sscan(d.Name(), &pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var ms []string
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], n.dir) {
			ms = append(ms, f[1])
		}
	}
	for i := len(ms) - 1; i >= 0; i-- {
		syscall.Unmount(ms[i], syscall.MNT_DETACH)
	}
}

// e2eChart renders a chart (this one, or the previous release's) for the
// node: its paths and CNI dirs under the node's dir, the runtime's
// socket, the image tag as imported, the API server's URL, and the given
// catalogue values. It gives the objects and helm's values arguments.
func e2eChart(t *testing.T, n *e2eNode, a *k8senv.APIServer, chart, tag, values string) (map[string][]map[string]any, []string) {
	t.Helper()
	base := fmt.Sprintf(`
image: {repository: ghcr.io/spinneret-cni/spinneret, tag: %s, pullPolicy: Never}
apiServer: %s
paths: {etc: %s, state: %s, log: %s, netns: %s}
nodeAgent: {runtimeEndpoint: "unix://%s", sweepInterval: 10s, sweepMinAge: 5s}
controller: {replicas: 1, interval: 5s}
`, tag, a.URL, n.path("etc/spinneret"), n.path("var/lib/spinneret"), n.path("var/log/spinneret"), n.path("state/netns"), n.sock)
	base += fmt.Sprintf("cni: {binDir: %s, confDir: %s}\n", n.path("opt/cni/bin"), n.path("etc/cni/net.d"))
	vals := []string{base, values}
	return renderedObjects(t, helmTemplateOf(t, helmBin(t), chart, "kube-system", vals)), valuesFiles(t, vals)
}

// e2eHelm runs helm against the API server, from the node's namespace,
// its cache and config in the test's own dirs.
func e2eHelm(t *testing.T, e *env, a *k8senv.APIServer, args ...string) {
	t.Helper()
	cmd := exec.Command(helmBin(t), append(args, "--kubeconfig", a.Kubeconfig)...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	if out, err := outputIn(e.topo.Node, cmd); err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// e2eNodePods creates the node agent's and the controller's pods from a
// rendering's DaemonSet and Deployment, as their controllers would.
func e2eNodePods(t *testing.T, a *k8senv.APIServer, objs map[string][]map[string]any) {
	t.Helper()
	for _, p := range []struct{ kind, name string }{{"DaemonSet", "spinneret-node-a"}, {"Deployment", "spinneret-controller-node-a"}} {
		pod := podFromTemplate(objs[p.kind][0], p.name, "node-a")
		if p.kind == "Deployment" {
			// in-cluster config names the kubernetes Service's ClusterIP,
			// which needs a kube-proxy this cluster lacks: the API server's
			// own address instead
			u, _ := url.Parse(a.URL)
			c := pod["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
			c["env"] = append(c["env"].([]any), map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": u.Hostname()}, map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": u.Port()})
		}
		if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/kube-system/pods", pod, nil); code != http.StatusCreated {
			t.Fatalf("create pod %s: %d", p.name, code)
		}
	}
}

// e2eNodeReady waits for the node to be Ready with the installed
// plugin's version.
func e2eNodeReady(t *testing.T, e *env, a *k8senv.APIServer, n *e2eNode, version string) {
	t.Helper()
	eventually(t, 90*time.Second, "node-a Ready (spinneret "+version+" installed, containerd's network ready)", func() (bool, string) {
		var node struct {
			Status struct {
				Conditions []struct{ Type, Status, Message string }
			}
		}
		apiRequest(t, a, http.MethodGet, "/api/v1/nodes/node-a", nil, &node)
		v, _ := outputIn(e.topo.Node, exec.Command(n.path("opt/cni/bin/spinneret"), "version"))
		for _, c := range node.Status.Conditions {
			if c.Type == "Ready" {
				ph, why := podPhase(t, a, "kube-system", "spinneret-node-a")
				return c.Status == "True" && strings.Contains(string(v), version), c.Message + " / node pod " + ph + " " + why + " / installed " + string(v)
			}
		}
		return false, "no Ready condition"
	})
}

// e2ePod is a pause pod on node-a asking for networks.
func e2ePod(name, networks string) map[string]any {
	return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": name, "annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": networks}},
		"spec": map[string]any{"nodeName": "node-a", "automountServiceAccountToken": false,
			"containers": []map[string]any{{"name": "c", "image": e2ePause, "imagePullPolicy": "Never"}}}}
}

// e2eRunning creates a pod and waits for it to be Running.
func e2eRunning(t *testing.T, a *k8senv.APIServer, pod map[string]any) time.Duration {
	t.Helper()
	name := pod["metadata"].(map[string]any)["name"].(string)
	start := time.Now()
	if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/default/pods", pod, nil); code != http.StatusCreated {
		t.Fatalf("create pod %s: %d", name, code)
	}
	eventually(t, 60*time.Second, "pod "+name+" Running", func() (bool, string) {
		ph, why := podPhase(t, a, "default", name)
		return ph == "Running", ph + " " + why + "\n" + events(t, a, "default")
	})
	return time.Since(start)
}

// podFromTemplate is a Pod made of a workload's pod template, bound to node.
func podFromTemplate(workload map[string]any, name, node string) map[string]any {
	tpl := workload["spec"].(map[string]any)["template"].(map[string]any)
	meta := tpl["metadata"].(map[string]any)
	meta["name"] = name
	spec := tpl["spec"].(map[string]any)
	spec["nodeName"] = node
	return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
}

// podPhase is a pod's phase and, when not Running, why.
func podPhase(t *testing.T, a *k8senv.APIServer, ns, name string) (string, string) {
	var p struct {
		Status struct {
			Phase             string
			ContainerStatuses []struct {
				State map[string]struct{ Reason, Message string }
			}
		}
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/"+name, nil, &p)
	why := ""
	for _, c := range p.Status.ContainerStatuses {
		for k, s := range c.State {
			why += k + " " + s.Reason + " " + s.Message + "; "
		}
	}
	return p.Status.Phase, why
}

// events are a namespace's Events' reasons and messages.
func events(t *testing.T, a *k8senv.APIServer, ns string) string {
	var l struct {
		Items []struct{ Reason, Message string }
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/"+ns+"/events", nil, &l)
	var out []string
	for _, e := range l.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return strings.Join(out, "\n")
}

// TestE2E: spinneret installed the way operators install it, under a real
// kubelet and containerd, and upgraded with pods running. The previous
// release is installed with helm (its CRDs, RBAC and ConfigMap; the
// DaemonSet's and the controller's pods from its templates) and attaches
// pod "old" (net1 of a NAD, Kubernetes IPAM); helm upgrade to this chart,
// and the pods replaced as the DaemonSet's rolling update replaces them,
// installs this binary. Then a pod with eth0, net1, net2 and net3 becomes
// Running with its addresses and network-status and its Kubernetes IPAM
// allocations; a pod asking for a missing network gets the Event and
// leaves nothing; deleting the pods (old's DEL reading the previous
// release's journal) leaves no journal, allocation or link of a pod.
func TestE2E(t *testing.T) {
	for _, rt := range e2eRuntimes(t) {
		t.Run(rt.name, func(t *testing.T) { testE2E(t, rt) })
	}
}

func testE2E(t *testing.T, rt e2eRuntime) {
	e := multiEnv(t)
	e.forwarding()
	a := startAPI(t, e.topo.Node.Do)
	n := startE2ENode(t, e, a, "node-a", rt)
	_, _, prevChart, _ := e2eImages(t)
	catalogue := fmt.Sprintf(`
cni:
  coordinator: {serviceCIDR: ["10.96.0.0/16"]}
  networks:
    - {name: red, master: uplink0, ipam: {backend: kubernetes, ippools: [red-v4]}}
    - {name: blue, master: uplink1, ipam: {pools: [{name: blue-v4, subnet: "%s", ranges: [{start: "%s", end: "%s"}], gateway: "%s"}]}}
    - {name: green, master: uplink2, ipam: {pools: [{name: green-v4, subnet: "%s", ranges: [{start: "%s", end: "%s"}], gateway: "%s"}]}}
node: {masters: {}, logLevel: debug}
`, e.topo.Nets[1].Subnet4, nth(e.topo.Nets[1].Subnet4, 10), nth(e.topo.Nets[1].Subnet4, 20), e.topo.Nets[1].GW4,
		e.topo.Nets[2].Subnet4, nth(e.topo.Nets[2].Subnet4, 10), nth(e.topo.Nets[2].Subnet4, 20), e.topo.Nets[2].GW4)
	prevObjs, prevValues := e2eChart(t, n, a, prevChart, "previous", catalogue)
	objs, values := e2eChart(t, n, a, chartDir, "e2e", catalogue)
	// what kube-controller-manager would have made: the namespace's CA
	// ConfigMap every projected token volume mounts
	ca, _ := os.ReadFile(a.CertFile())
	for _, ns := range []string{"kube-system", "default"} {
		apiRequest(t, a, http.MethodPost, "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}, nil)
		apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/"+ns+"/configmaps", map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "kube-root-ca.crt"}, "data": map[string]string{"ca.crt": string(ca)}}, nil)
	}
	apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/default/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}}, nil)
	e2eHelm(t, e, a, append([]string{"install", "spinneret", prevChart, "--namespace", "kube-system"}, prevValues...)...)
	eventually(t, 30*time.Second, "spinneret's CRDs served", func() (bool, string) {
		return apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ippools", nil, nil) == http.StatusOK, ""
	})
	net0 := e.topo.Nets[0]
	pool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "red-v4"},
		"spec": map[string]any{"subnet": net0.Subnet4.String(), "gateway": net0.GW4.String(), "ranges": []map[string]string{{"start": nth(net0.Subnet4, 100).String(), "end": nth(net0.Subnet4, 109).String()}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create IPPool: %d", code)
	}
	// net3 from a NetworkAttachmentDefinition (a Multus macvlan NAD) on
	// an admin's IPPool
	nadPool := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "nad-v4"},
		"spec": map[string]any{"subnet": e.topo.Nets[1].Subnet4.String(), "ranges": []map[string]string{{"start": nth(e.topo.Nets[1].Subnet4, 200).String(), "end": nth(e.topo.Nets[1].Subnet4, 209).String()}}}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", nadPool, nil); code != http.StatusCreated {
		t.Fatalf("create IPPool nad-v4: %d", code)
	}
	nad := map[string]any{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": map[string]any{"name": "storage"},
		"spec": map[string]any{"config": `{"cniVersion":"0.3.1","name":"storage","type":"macvlan","master":"uplink1","mode":"bridge","ipam":{"backend":"kubernetes","ippools":["nad-v4"]}}`}}
	if code := apiRequest(t, a, http.MethodPost, "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", nad, nil); code != http.StatusCreated {
		t.Fatalf("create the NAD: %d", code)
	}
	start := time.Now()
	e2eNodePods(t, a, prevObjs)
	e2eNodeReady(t, e, a, n, e2ePreviousVersion)
	t.Logf("previous release: node Ready %.1fs after the DaemonSet's pod was created", time.Since(start).Seconds())
	t.Logf("pod old (eth0, net1 of a NAD), previous release: created -> Running in %.2fs", e2eRunning(t, a, e2ePod("old", "storage")).Seconds())

	// the upgrade: helm upgrade, then what the DaemonSet's and the
	// Deployment's rolling updates do, a pod at a time: delete, create
	// from the new template
	start = time.Now()
	e2eHelm(t, e, a, append([]string{"upgrade", "spinneret", chartDir, "--namespace", "kube-system"}, values...)...)
	for _, p := range []string{"spinneret-node-a", "spinneret-controller-node-a"} {
		apiRequest(t, a, http.MethodDelete, "/api/v1/namespaces/kube-system/pods/"+p+"?gracePeriodSeconds=0", nil, nil)
		eventually(t, 60*time.Second, "pod "+p+" of the previous release gone", func() (bool, string) {
			return apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/kube-system/pods/"+p, nil, nil) == http.StatusNotFound, ""
		})
	}
	e2eNodePods(t, a, objs)
	e2eNodeReady(t, e, a, n, e2eVersion)
	t.Logf("upgrade: helm upgrade -> this release installed, node Ready in %.1fs", time.Since(start).Seconds())

	web := e2ePod("web", "blue,green,storage")
	t.Logf("pod web (eth0, net1, net2, net3 of a NAD): created -> Running in %.2fs", e2eRunning(t, a, web).Seconds())
	var pod struct {
		Metadata struct{ Annotations map[string]string }
		Status   struct{ PodIPs []struct{ IP string } }
	}
	apiRequest(t, a, http.MethodGet, "/api/v1/namespaces/default/pods/web", nil, &pod)
	ns := pod.Metadata.Annotations["k8s.v1.cni.cncf.io/network-status"]
	var eth0 netip.Addr
	if len(pod.Status.PodIPs) > 0 {
		eth0, _ = netip.ParseAddr(pod.Status.PodIPs[0].IP)
	}
	if !eth0.IsValid() || eth0.Less(nth(net0.Subnet4, 100)) || nth(net0.Subnet4, 109).Less(eth0) {
		t.Errorf("pod IPs %v: want eth0's, from IPPool red-v4 (.100-.109)", pod.Status.PodIPs)
	}
	for _, want := range []string{`"interface":"eth0"`, `"interface":"net1"`, `"interface":"net2"`, `"interface":"net3"`, `"name":"default/storage"`, `"ips":["` + eth0.String() + `"]`,
		`"ips":["` + nth(e.topo.Nets[1].Subnet4, 10).String() + `"]`, `"ips":["` + nth(e.topo.Nets[2].Subnet4, 10).String() + `"]`} {
		if !strings.Contains(strings.ReplaceAll(ns, " ", ""), want) {
			t.Errorf("network-status lacks %s: %s", want, ns)
		}
	}
	journals := func() int {
		js, _ := txn.ListJournalFiles(n.path("var/lib/spinneret"), "spinneret")
		return len(js)
	}
	var allocs struct{ Items []any }
	apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &allocs)
	if len(allocs.Items) != 4 {
		t.Errorf("%d IPAllocations, want eth0's and net3's of web, eth0's and net1's of old", len(allocs.Items))
	}
	// the operator's view, through the binary the DaemonSet installed
	page, _ := outputIn(e.topo.Node, exec.Command(n.path("opt/cni/bin/spinneret"), "inspect", "--no-cluster", "--conflist", n.path("etc/cni/net.d/00-spinneret.conflist"), "default/web"))
	for _, want := range []string{"pod default/web", "net3 ", "lookup 10", "table 500", "journal: committed"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("spinneret inspect default/web lacks %q:\n%s", want, page)
		}
	}
	// a pod asking for a network nobody defined: the Event says why, and
	// nothing of it is left
	if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/default/pods", e2ePod("ghost", "nosuch"), nil); code != http.StatusCreated {
		t.Fatalf("create pod ghost: %d", code)
	}
	eventually(t, 30*time.Second, "pod ghost's Event names the missing network", func() (bool, string) {
		ev := events(t, a, "default")
		return strings.Contains(ev, "FailedCreatePodSandBox") && strings.Contains(ev, "nosuch"), ev
	})
	if j := journals(); j != 2 {
		t.Errorf("%d journals with pod ghost failing, want web's and old's", j)
	}
	apiRequest(t, a, http.MethodDelete, "/api/v1/namespaces/default/pods/ghost?gracePeriodSeconds=0", nil, nil)

	// a sandbox whose DEL never comes: with the kubelet stopped, pod
	// lost's containers are removed behind containerd's back and
	// containerd restarts without them, the pod is deleted; the kubelet,
	// started again, knows of neither. The node agent's sweep finds the
	// attachment without a sandbox and runs spinneret's GC for it
	e2eRunning(t, a, e2ePod("lost", "green"))
	lost := ""
	js, _ := txn.ListJournalFiles(n.path("var/lib/spinneret"), "spinneret")
	for _, j := range js {
		if b, _ := os.ReadFile(j.Path); strings.Contains(string(b), `"pod":"default/lost"`) {
			lost = j.ContainerID
		}
	}
	if lost == "" {
		t.Fatal("no journal of pod lost")
	}
	termProc(n.kube)
	ids, err := n.ctr("containers", "list", "-q", `labels."io.kubernetes.pod.name"==lost`)
	if err != nil || !strings.Contains(string(ids), lost) {
		t.Fatalf("pod lost's containers %q (%v), want its sandbox %s among them", ids, err, lost)
	}
	// the app container first, the sandbox last
	// (containerd 2 on cgroup v1 prints a deprecation warning first)
	fields := regexp.MustCompile(`(?m)^[0-9a-f]{64}$`).FindAllString(string(ids), -1)
	slices.SortFunc(fields, func(x, y string) int { return map[bool]int{true: 1}[x == lost] - map[bool]int{true: 1}[y == lost] })
	for _, id := range fields {
		n.ctr("tasks", "kill", "-s", "SIGKILL", id)
		eventually(t, 20*time.Second, "task "+id+" stopped", func() (bool, string) {
			out, _ := n.ctr("tasks", "delete", id)
			gone, _ := n.ctr("tasks", "list", "-q")
			return !strings.Contains(string(gone), id), string(out)
		})
		if out, err := n.ctr("containers", "delete", id); err != nil {
			t.Fatalf("ctr containers delete %s: %v\n%s", id, err, out)
		}
	}
	if rt.dir != "" {
		// containerd 2 keeps the CRI's sandboxes in a store of their own
		// (the sandbox API) besides the containers
		if out, err := n.ctr("sandboxes", "rm", "-f", lost); err != nil {
			t.Fatalf("ctr sandboxes rm %s: %v\n%s", lost, err, out)
		}
	}
	termProc(n.ctrd)
	n.startContainerd()
	apiRequest(t, a, http.MethodDelete, "/api/v1/namespaces/default/pods/lost?gracePeriodSeconds=0", nil, nil)
	hasLost := func() bool {
		js, _ := txn.ListJournalFiles(n.path("var/lib/spinneret"), "spinneret")
		return slices.ContainsFunc(js, func(j txn.JournalFile) bool { return j.ContainerID == lost })
	}
	if !hasLost() {
		t.Fatal("pod lost's journal went before the kubelet came back: a DEL came after all")
	}
	n.startKubelet()
	before := time.Now()
	eventually(t, 60*time.Second, "pod lost's attachment swept", func() (bool, string) {
		return !hasLost(), "its journal is there"
	})
	t.Logf("pod lost (its sandbox forgotten by the runtime): swept %.1fs after containerd and the kubelet came back", time.Since(before).Seconds())
	apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &allocs)
	if len(allocs.Items) != 4 {
		t.Errorf("%d IPAllocations after the sweep, want web's and old's 4", len(allocs.Items))
	}
	before = time.Now()
	for _, p := range []string{"web", "old"} {
		apiRequest(t, a, http.MethodDelete, "/api/v1/namespaces/default/pods/"+p+"?gracePeriodSeconds=0", nil, nil)
	}
	podLinks := func() []string {
		var out []string
		e.topo.Node.Do(func() error {
			links, _ := netlink.LinkList()
			for _, l := range links {
				if name := l.Attrs().Name; strings.HasPrefix(name, "spn") {
					out = append(out, name)
				}
			}
			return nil
		})
		return out
	}
	eventually(t, 60*time.Second, "the pods' attachments gone (DEL; old's by this release, from the previous one's journal)", func() (bool, string) {
		apiRequest(t, a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &allocs)
		return journals() == 0 && len(allocs.Items) == 0 && len(podLinks()) == 0, fmt.Sprintf("%d journals, %d allocations, node links %q", journals(), len(allocs.Items), podLinks())
	})
	t.Logf("pods web and old deleted -> nothing left in %.2fs", time.Since(before).Seconds())
}
