package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/install"
)

const chartDir = "../deploy/helm/spinneret"

// helmBin is helm, built from the Go module proxy once per machine
// (tests/helm/build.sh).
func helmBin(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("helm/build.sh")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building helm: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// helmTemplate renders the chart into namespace with the values files'
// contents (and --show-only templates, when given).
func helmTemplate(t *testing.T, helm, namespace string, values []string, showOnly ...string) []byte {
	t.Helper()
	return helmTemplateOf(t, helm, chartDir, namespace, values, showOnly...)
}

// valuesFiles writes each values file's contents to a file and gives
// helm's arguments for them.
func valuesFiles(t *testing.T, values []string) []string {
	t.Helper()
	var args []string
	for i, v := range values {
		f := filepath.Join(t.TempDir(), "values"+string(rune('a'+i))+".yaml")
		if err := os.WriteFile(f, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", f)
	}
	return args
}

// helmTemplateOf is helmTemplate of another chart (an earlier release's).
func helmTemplateOf(t *testing.T, helm, chart, namespace string, values []string, showOnly ...string) []byte {
	t.Helper()
	args := append([]string{"template", "spinneret", chart, "--namespace", namespace}, valuesFiles(t, values)...)
	for _, s := range showOnly {
		args = append(args, "--show-only", s)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(helm, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// renderedObjects are the objects of a rendering, by kind.
func renderedObjects(t *testing.T, rendered []byte) map[string][]map[string]any {
	t.Helper()
	out := map[string][]map[string]any{}
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(rendered), -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("rendered document: %v\n%s", err, doc)
		}
		if obj != nil {
			kind, _ := obj["kind"].(string)
			out[kind] = append(out[kind], obj)
		}
	}
	return out
}

// TestChartManifests: deploy/k8s is the chart rendered with its defaults
// (make manifests), so the plain manifests and the chart never drift.
func TestChartManifests(t *testing.T) {
	helm := helmBin(t)
	for _, m := range []string{"rbac", "daemonset", "controller", "crds"} {
		want := helmTemplate(t, helm, "kube-system", nil, "templates/"+m+".yaml")
		got, err := os.ReadFile("../deploy/k8s/" + m + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/k8s/%s.yaml is not the chart's rendering: run make manifests", m)
		}
	}
}

// TestChart: every object the chart renders passes the real API server's
// validation (server-side dry run, strict field validation: the Kubernetes
// schemas, and the CRDs' own schemas), with its defaults and with other
// values (another namespace, no NAD CRD, no controller, an API server
// URL, an overlay catalogue); the CRDs install and serve; the ConfigMap's
// conflist and node conf are what the plugin accepts, and the DaemonSet
// mounts every path its container names.
func TestChart(t *testing.T) {
	helm := helmBin(t)
	e := newEnv(t)
	a := startAPI(t, e.topo.Node.Do)
	// prometheus-operator's ServiceMonitor, its CRD reduced to what the
	// dry run needs
	smCRD := map[string]any{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": map[string]any{"name": "servicemonitors.monitoring.coreos.com"},
		"spec": map[string]any{"group": "monitoring.coreos.com", "scope": "Namespaced",
			"names":    map[string]any{"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
			"versions": []map[string]any{{"name": "v1", "served": true, "storage": true, "schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}
	if code := apiRequest(t, a, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", smCRD, nil); code != 201 {
		t.Fatalf("create the ServiceMonitor CRD: %d", code)
	}
	eventually(t, 30e9, "the ServiceMonitor CRD served", func() (bool, string) {
		return apiRequest(t, a, "GET", "/apis/monitoring.coreos.com/v1/servicemonitors", nil, nil) == 200, "not yet"
	})
	cases := []struct {
		name, namespace string
		values          []string
		crds            int
		controller      bool
	}{
		{"defaults", "kube-system", nil, 4, true},
		{"ServiceMonitor", "monitoring", []string{"serviceMonitor: {enabled: true, labels: {release: prom}}\n"}, 4, true},
		{"other values", "spinneret-system", []string{`
crds: {networkAttachmentDefinition: false}
controller: {enabled: false}
apiServer: https://10.0.0.1:6443
nodeAgent: {runtimeEndpoint: "unix:///var/run/crio/crio.sock", sweepInterval: 10m}
cni:
  coordinator: {mode: auto, podCIDR: [10.244.0.0/16], serviceCIDR: [10.96.0.0/12]}
  networks:
    - {name: pods, delegate: {conflist: /etc/cni/net.d/10-calico.conflist}}
    - {name: storage, master: storage, ipam: {backend: kubernetes, ippools: [storage-v4]}}
  extra: {maxNICs: 4, dns: {nameservers: [10.96.0.10]}}
node: {masters: {storage: ens224}, allowedMasters: [ens224], logLevel: debug}
`}, 3, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rendered := helmTemplate(t, helm, c.namespace, c.values)
			objs := renderedObjects(t, rendered)
			if sm := len(objs["ServiceMonitor"]) == 1; sm != (c.name == "ServiceMonitor") {
				t.Errorf("rendered a ServiceMonitor: %v", sm)
			}
			if len(objs["CustomResourceDefinition"]) != c.crds || (len(objs["Deployment"]) == 1) != c.controller || len(objs["DaemonSet"]) != 1 {
				t.Fatalf("rendered %d CRDs, %d controller Deployments, %d DaemonSets", len(objs["CustomResourceDefinition"]), len(objs["Deployment"]), len(objs["DaemonSet"]))
			}
			for _, crd := range objs["CustomResourceDefinition"] {
				if ann, _ := crd["metadata"].(map[string]any)["annotations"].(map[string]any); ann["helm.sh/resource-policy"] != "keep" {
					t.Errorf("CRD %v is not kept on uninstall", crd["metadata"].(map[string]any)["name"])
				}
			}
			if c.namespace != "kube-system" {
				apiRequest(t, a, "POST", "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": c.namespace}}, nil)
			}
			file := filepath.Join(t.TempDir(), "rendered.yaml")
			os.WriteFile(file, rendered, 0o644)
			applyFile(t, a, file, true)

			// the ConfigMap: the conflist parses as the plugin parses it,
			// the node conf with the installer's node name
			cm := objs["ConfigMap"][0]["data"].(map[string]any)
			if _, err := conf.ParseFile([]byte(cm[install.ConflistName].(string))); err != nil {
				t.Errorf("the chart's conflist: %v\n%s", err, cm[install.ConflistName])
			}
			nodeYAML := filepath.Join(t.TempDir(), "node.yaml")
			os.WriteFile(nodeYAML, []byte(cm["node.yaml"].(string)), 0o644)
			b, err := install.NodeConf(nodeYAML, "node-a")
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(nodeYAML, b, 0o644)
			n, err := conf.LoadNode(nodeYAML, true)
			if err != nil {
				t.Fatalf("the chart's node conf: %v\n%s", err, b)
			}
			if c.namespace != "kube-system" && n.ControllerNamespace != c.namespace {
				t.Errorf("node conf controllerNamespace %q, want %q", n.ControllerNamespace, c.namespace)
			}
			// every absolute path an argument names is mounted
			ds, _ := yaml.Marshal(objs["DaemonSet"][0])
			var d struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args         []string
								VolumeMounts []struct{ MountPath string } `json:"volumeMounts"`
							}
						}
					}
				}
			}
			yaml.Unmarshal(ds, &d)
			ctr := d.Spec.Template.Spec.Containers[0]
			for _, arg := range ctr.Args {
				_, v, _ := strings.Cut(arg, "=")
				v = strings.TrimPrefix(v, "unix://")
				if !strings.HasPrefix(v, "/") || v == "/loopback" || strings.HasPrefix(v, "/var/run/secrets/") {
					continue
				}
				mounted := false
				for _, m := range ctr.VolumeMounts {
					mounted = mounted || v == m.MountPath || strings.HasPrefix(v, m.MountPath+"/")
				}
				if !mounted {
					t.Errorf("DaemonSet argument %s names a path not mounted", arg)
				}
			}
		})
	}
	// the CRDs install (not a dry run) and serve
	file := filepath.Join(t.TempDir(), "crds.yaml")
	os.WriteFile(file, helmTemplate(t, helm, "kube-system", nil, "templates/crds.yaml"), 0o644)
	applyFile(t, a, file, false)
	eventually(t, 30e9, "the chart's CRDs served", func() (bool, string) {
		code := apiRequest(t, a, "GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions", nil, nil)
		code2 := apiRequest(t, a, "GET", "/apis/spinneret.io/v1alpha1/ipallocations", nil, nil)
		return code == 200 && code2 == 200, "not yet"
	})
}
