package tests

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/conf"
)

// daemonSet is what deploy/k8s/daemonset.yaml installs with: the
// ConfigMap's files and the node container's command, env and mounts.
type daemonSet struct {
	config  map[string]string
	command []string
	mounts  map[string]string // mountPath -> volume name
}

func readDaemonSet(t *testing.T) daemonSet {
	t.Helper()
	b, err := os.ReadFile("../deploy/k8s/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ds := daemonSet{mounts: map[string]string{}}
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name         string   `json:"name"`
							Command      []string `json:"command"`
							Args         []string `json:"args"`
							VolumeMounts []struct {
								Name      string `json:"name"`
								MountPath string `json:"mountPath"`
							} `json:"volumeMounts"`
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		switch obj.Kind {
		case "ConfigMap":
			ds.config = obj.Data
		case "DaemonSet":
			for _, c := range obj.Spec.Template.Spec.Containers {
				if c.Name != "node" {
					continue
				}
				ds.command = append(c.Command, c.Args...)
				for _, m := range c.VolumeMounts {
					ds.mounts[m.MountPath] = m.Name
				}
			}
		}
	}
	if ds.config == nil || len(ds.command) == 0 {
		t.Fatalf("daemonset.yaml: ConfigMap %v, install command %v", ds.config, ds.command)
	}
	return ds
}

// run runs the DaemonSet's install command with every path it
// names (its mounts and the ServiceAccount's dir) under root, the image's
// /spinneret and /loopback being the binaries under test, and NODE_NAME
// as the downward API sets it; --once: the install, not the agent's loop.
func (ds daemonSet) run(t *testing.T, root, nodeName string) ([]byte, error) {
	t.Helper()
	sa := "/var/run/secrets/kubernetes.io/serviceaccount"
	os.MkdirAll(filepath.Join(root, sa), 0o755)
	os.WriteFile(filepath.Join(root, sa, "ca.crt"), []byte("test CA\n"), 0o644)
	os.WriteFile(filepath.Join(root, sa, "token"), []byte("test token\n"), 0o644)
	cfg := filepath.Join(root, "config")
	os.MkdirAll(cfg, 0o755)
	for name, data := range ds.config {
		if err := os.WriteFile(filepath.Join(cfg, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if ds.command[0] != "/spinneret" {
		t.Fatalf("the node container runs %q, not the image's /spinneret", ds.command[0])
	}
	image := map[string]string{"/loopback": filepath.Join(binDir, "loopback")}
	var args []string
	for _, a := range ds.command[1:] {
		k, v, _ := strings.Cut(a, "=")
		if p, ok := image[v]; ok {
			args = append(args, k+"="+p)
			continue
		}
		if strings.HasPrefix(v, "unix://") {
			continue // the CRI socket: the agent's loop, not the install
		}
		if strings.HasPrefix(v, "/") {
			mounted := false
			for m := range ds.mounts {
				mounted = mounted || v == m || strings.HasPrefix(v, m+"/")
			}
			if !mounted && v != sa && k != "--host-etc-dir" {
				t.Fatalf("%s names %s, which is not mounted", k, v)
			}
			if k != "--host-etc-dir" { // a path as the host sees it
				a = k + "=" + filepath.Join(root, v)
			}
		}
		args = append(args, a)
	}
	cmd := exec.Command(filepath.Join(binDir, "spinneret"), append(args, "--once")...)
	cmd.Env = append(os.Environ(), "NODE_NAME="+nodeName, "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
	return cmd.CombinedOutput()
}

// TestDaemonSetInstall: the node conf the DaemonSet installs parses, with
// the node's own name, whether the ConfigMap's node.yaml names no node or
// is deploy/node.yaml (nodeName ""); the conflist and binary are in place.
func TestDaemonSetInstall(t *testing.T) {
	ds := readDaemonSet(t)
	example, err := os.ReadFile("../deploy/node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, nodeYAML := range map[string]string{"configmap": ds.config["node.yaml"], "deploy/node.yaml": string(example)} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			root := t.TempDir()
			d := ds
			d.config = map[string]string{"00-spinneret.conflist": ds.config["00-spinneret.conflist"], "node.yaml": nodeYAML}
			if out, err := d.run(t, root, "node-a"); err != nil {
				t.Fatalf("install: %v\n%s", err, out)
			}
			n, err := conf.LoadNode(filepath.Join(root, "/etc/spinneret/node.yaml"), true)
			if err != nil {
				t.Fatalf("installed node conf: %v", err)
			}
			if n.NodeName != "node-a" {
				t.Fatalf("installed node conf names node %q", n.NodeName)
			}
			b, _ := os.ReadFile(filepath.Join(root, "/etc/spinneret/node.yaml"))
			if c := strings.Count(string(b), "nodeName:"); c != 1 {
				t.Fatalf("nodeName appears %d times:\n%s", c, b)
			}
			cl, _ := os.ReadFile(filepath.Join(root, "/etc/cni/net.d/00-spinneret.conflist"))
			if _, err := conf.ParseFile(cl); err != nil {
				t.Fatalf("installed conflist: %v", err)
			}
			kc, _ := os.ReadFile(filepath.Join(root, "/etc/spinneret/kubeconfig"))
			if !bytes.Contains(kc, []byte(`"https://10.96.0.1:443"`)) || !bytes.Contains(kc, []byte(`"/etc/spinneret/token"`)) {
				t.Fatalf("kubeconfig:\n%s", kc)
			}
			self, _ := os.ReadFile(filepath.Join(binDir, "spinneret"))
			got, _ := os.ReadFile(filepath.Join(root, "/opt/cni/bin/spinneret"))
			if st, err := os.Stat(filepath.Join(root, "/opt/cni/bin/spinneret")); err != nil || st.Mode().Perm() != 0o755 || !bytes.Equal(self, got) {
				t.Fatalf("installed binary: %v, %v", st, err)
			}
		})
	}
	// the shared file naming one node would give every node that name
	root := t.TempDir()
	d := ds
	d.config = map[string]string{"00-spinneret.conflist": ds.config["00-spinneret.conflist"], "node.yaml": "nodeName: node-b\n"}
	if out, err := d.run(t, root, "node-a"); err == nil || !strings.Contains(string(out), `nodeName "node-b": the shared node conf must not name a node`) {
		t.Fatalf("a node conf naming another node: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "/opt/cni/bin/spinneret")); !os.IsNotExist(err) {
		t.Fatalf("a refused install wrote the binary: %v", err)
	}
}

// TestInstallReplacesRunningBinary: the installer replaces a binary the
// runtime is executing (a rename: the running process keeps its file, the
// next one starts the new), never writes into it, and installs the
// conflist only after the binary: when the binary cannot be installed,
// the runtime is not pointed at it.
func TestInstallReplacesRunningBinary(t *testing.T) {
	ds := readDaemonSet(t)
	root := t.TempDir()
	bin := filepath.Join(root, "/opt/cni/bin/spinneret")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, sleep, 0o755); err != nil {
		t.Fatal(err)
	}
	old := exec.Command(bin, "60")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Process.Kill(); old.Wait() })
	var before syscall.Stat_t
	syscall.Stat(bin, &before)
	if out, err := ds.run(t, root, "node-a"); err != nil {
		t.Fatalf("install over a running binary: %v\n%s", err, out)
	}
	if err := old.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the running binary's process: %v", err)
	}
	var after syscall.Stat_t
	syscall.Stat(bin, &after)
	self, _ := os.ReadFile(filepath.Join(binDir, "spinneret"))
	got, _ := os.ReadFile(bin)
	if after.Ino == before.Ino || !bytes.Equal(got, self) {
		t.Fatalf("binary not replaced by a rename (inode %d -> %d, new content %v)", before.Ino, after.Ino, bytes.Equal(got, self))
	}
	if ents, _ := os.ReadDir(filepath.Dir(bin)); len(ents) != 2 { // and loopback
		t.Fatalf("left in the CNI bin dir: %v", ents)
	}

	// binary first, conflist last
	root = t.TempDir()
	os.MkdirAll(filepath.Join(root, "/opt/cni"), 0o755)
	os.WriteFile(filepath.Join(root, "/opt/cni/bin"), nil, 0o644) // not a directory
	if out, err := ds.run(t, root, "node-a"); err == nil {
		t.Fatalf("install into a broken bin dir succeeded:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(root, "/etc/cni/net.d/00-spinneret.conflist")); !os.IsNotExist(err) {
		t.Fatalf("conflist installed although the binary was not: %v", err)
	}
}

// TestInstallAPIServerEndpoint: the node's kubeconfig names the API
// server's own endpoint (the EndpointSlice default/kubernetes, which the
// spinneret-node ServiceAccount may read under deploy/k8s/rbac.yaml), not
// the Service's address it asked through: the host network reaches that
// only once kube-proxy runs. The CA and token installed work (the plugin
// reads a pod with them). With --api-server, that is named; without an
// EndpointSlice, the Service's address, with a warning.
func TestInstallAPIServerEndpoint(t *testing.T) {
	k := newKubeEnv(t)
	k.applyRBAC()
	u, _ := url.Parse(k.a.URL)
	port, _ := strconv.Atoi(u.Port())
	service := k.a.URL // as the Service's ClusterIP would be
	// the API server as its EndpointSlice has it (an EndpointSlice may
	// not hold a loopback address; this one listens on 127.0.0.1 alone)
	own := "https://192.0.2.2:" + u.Port()
	root := t.TempDir()
	sa := filepath.Join(root, "sa")
	os.MkdirAll(sa, 0o755)
	ca, err := os.ReadFile(k.a.CertFile())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(sa, "ca.crt"), ca, 0o644)
	os.WriteFile(filepath.Join(sa, "token"), []byte(k.nodeToken("node-a")), 0o644)
	ds := readDaemonSet(t)
	cfg := filepath.Join(root, "config")
	os.MkdirAll(cfg, 0o755)
	for name, data := range ds.config {
		os.WriteFile(filepath.Join(cfg, name), []byte(data), 0o644)
	}
	install := func(extra ...string) (string, string) {
		t.Helper()
		etc := filepath.Join(root, "etc")
		args := append([]string{"install", "--once", "--config-dir=" + cfg, "--cni-bin-dir=" + filepath.Join(root, "bin"),
			"--cni-conf-dir=" + filepath.Join(root, "net.d"), "--etc-dir=" + etc, "--host-etc-dir=" + etc,
			"--service-account-dir=" + sa}, extra...)
		cmd := exec.Command(filepath.Join(binDir, "spinneret"), args...)
		cmd.Env = append(os.Environ(), "NODE_NAME=node-a", "KUBERNETES_SERVICE_HOST="+u.Hostname(), "KUBERNETES_SERVICE_PORT="+u.Port())
		out, err := outputIn(k.topo.Node, cmd)
		if err != nil {
			t.Fatalf("install: %v\n%s", err, out)
		}
		kc, _ := os.ReadFile(filepath.Join(etc, "kubeconfig"))
		return string(kc), string(out)
	}

	// no EndpointSlice yet (this API server keeps none): the Service's URL
	kc, out := install()
	if !strings.Contains(kc, strconv.Quote(service)) || !strings.Contains(out, "set the chart's apiServer") {
		t.Fatalf("without an EndpointSlice the kubeconfig should name %s, with a warning:\n%s\n%s", service, kc, out)
	}
	slice := map[string]any{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
		"metadata":  map[string]any{"name": "kubernetes", "namespace": "default", "labels": map[string]string{"kubernetes.io/service-name": "kubernetes"}},
		"endpoints": []map[string]any{{"addresses": []string{"192.0.2.2"}, "conditions": map[string]any{"ready": true}}},
		"ports":     []map[string]any{{"name": "https", "port": port, "protocol": "TCP"}}}
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice, nil); code != http.StatusCreated {
		t.Fatalf("create the EndpointSlice: %d", code)
	}
	kc, out = install()
	if !strings.Contains(kc, strconv.Quote(own)) {
		t.Fatalf("the kubeconfig should name the API server's own endpoint %s:\n%s\n%s", own, kc, out)
	}
	// what the kubeconfig names besides the server: the CA verifies the
	// API server, the token reads a pod
	pool := x509.NewCertPool()
	if ca, _ := os.ReadFile(filepath.Join(root, "etc", "ca.crt")); !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no CA installed")
	}
	token, _ := os.ReadFile(filepath.Join(root, "etc", "token"))
	createPodOn(t, k.a, "default", "probe", "node-a", nil)
	req, _ := http.NewRequest(http.MethodGet, k.a.URL+"/api/v1/namespaces/default/pods/probe", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := k.a.ClientWith(&tls.Config{RootCAs: pool}).Do(req)
	if err != nil {
		t.Fatalf("the installed CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the installed token reads the pod: %d", resp.StatusCode)
	}
	if kc, _ = install("--api-server=https://api.example:6443"); !strings.Contains(kc, `"https://api.example:6443"`) {
		t.Fatalf("--api-server not named:\n%s", kc)
	}
}
