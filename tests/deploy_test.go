package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// kindPaths are the collections of the kinds deploy/k8s uses.
var kindPaths = map[string]string{
	"ServiceAccount":     "/api/v1/namespaces/%s/serviceaccounts",
	"ConfigMap":          "/api/v1/namespaces/%s/configmaps",
	"ClusterRole":        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
	"ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
	"Role":               "/apis/rbac.authorization.k8s.io/v1/namespaces/%s/roles",
	"RoleBinding":        "/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings",
	"Deployment":         "/apis/apps/v1/namespaces/%s/deployments",
	"DaemonSet":          "/apis/apps/v1/namespaces/%s/daemonsets",
	"Namespace":          "/api/v1/namespaces",
	"Service":            "/api/v1/namespaces/%s/services",

	"CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
	"ServiceMonitor":           "/apis/monitoring.coreos.com/v1/namespaces/%s/servicemonitors",

	"ValidatingAdmissionPolicy":        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
	"ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
}

// applyFile creates every object of a multi-document YAML file; with
// dryRun the API server only validates them (strict field validation).
func applyFile(t *testing.T, a *k8senv.APIServer, file string, dryRun bool) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s document %d: %v", file, i, err)
		}
		if obj == nil {
			continue // comments alone (helm's "# Source:" of an empty template)
		}
		kind, _ := obj["kind"].(string)
		meta, _ := obj["metadata"].(map[string]any)
		ns, _ := meta["namespace"].(string)
		path, ok := kindPaths[kind]
		if !ok {
			t.Fatalf("%s document %d: kind %q", file, i, kind)
		}
		if strings.Contains(path, "%s") {
			path = fmt.Sprintf(path, ns)
		}
		q := "?fieldValidation=Strict"
		if dryRun {
			q += "&dryRun=All"
		}
		body, _ := json.Marshal(obj)
		req, _ := http.NewRequest(http.MethodPost, a.URL+path+q, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := a.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var st bytes.Buffer
		st.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s: %s %s: %d %s", file, kind, meta["name"], resp.StatusCode, st.String())
		}
	}
}

// tokenKubeconfig writes a kubeconfig with a ServiceAccount's token.
func tokenKubeconfig(t *testing.T, a *k8senv.APIServer, ns, sa string) string {
	t.Helper()
	return writeKubeconfig(t, a, sa, saToken(t, a, ns, sa, nil))
}

// saToken asks the API server for a ServiceAccount's token, bound to an
// object (a pod, whose node the API server then puts in the token) when
// bound is not nil.
func saToken(t *testing.T, a *k8senv.APIServer, ns, sa string, bound map[string]any) string {
	t.Helper()
	var tr struct {
		Status struct{ Token string } `json:"status"`
	}
	spec := map[string]any{"expirationSeconds": 3600}
	if bound != nil {
		spec["boundObjectRef"] = bound
	}
	req := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
	if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token", req, &tr); code != http.StatusCreated {
		t.Fatalf("token for %s/%s: %d", ns, sa, code)
	}
	return tr.Status.Token
}

// writeKubeconfig writes a kubeconfig for the API server with a token.
func writeKubeconfig(t *testing.T, a *k8senv.APIServer, name, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]\n"+
		"users: [{name: u, user: {token: %q}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n", a.URL, token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nodeToken is the token the DaemonSet's pod on a node has: the
// spinneret-node ServiceAccount's, bound to a pod of that ServiceAccount
// bound to the node (both created here, the Node too if missing).
func (k *kubeEnv) nodeToken(node string) string {
	k.t.Helper()
	if apiRequest(k.t, k.a, http.MethodGet, "/api/v1/nodes/"+node, nil, nil) == http.StatusNotFound {
		k.node(node, true)
	}
	name := "spinneret-" + node
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": name},
		"spec": map[string]any{"nodeName": node, "serviceAccountName": "spinneret-node", "containers": []map[string]any{{"name": "c", "image": "spinneret"}}}}
	var got struct {
		Metadata struct{ UID string } `json:"metadata"`
	}
	if code := apiRequest(k.t, k.a, http.MethodPost, "/api/v1/namespaces/kube-system/pods", pod, &got); code != http.StatusCreated {
		k.t.Fatalf("create pod kube-system/%s: %d", name, code)
	}
	return saToken(k.t, k.a, "kube-system", "spinneret-node", map[string]any{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": got.Metadata.UID})
}

// TestDeployRBAC: deploy/k8s's RBAC is enough, and its workloads are valid.
// The objects are created in a real API server (RBAC authorization on);
// the controller Deployment and the node DaemonSet pass server-side
// validation; the plugin, with the spinneret-node ServiceAccount's token
// bound to its pod on node-a (as the DaemonSet's), reads the pod, lists pools, allocates, writes network-status and
// releases; the controller, with spinneret-controller's, leads, publishes
// the cluster CIDRs, keeps pool status and frees a deleted pod's address.
func TestDeployRBAC(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	k.applyRBAC()
	applyFile(t, k.a, "../deploy/k8s/controller.yaml", true)
	applyFile(t, k.a, "../deploy/k8s/daemonset.yaml", true)

	nodeKC := writeKubeconfig(t, k.a, "node-a", k.nodeToken("node-a"))
	ctlKC := tokenKubeconfig(t, k.a, "kube-system", "spinneret-controller")
	nodeConf := filepath.Join(k.dir, "node.yaml")
	b, _ := os.ReadFile(nodeConf)
	b = regexp.MustCompile(`(?m)^kubeconfig: .*$`).ReplaceAll(b, []byte("kubeconfig: "+nodeKC))
	if err := os.WriteFile(nodeConf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	startControllerAs(t, ctlKC, k.topo.Node.Do, "rbac")
	eventually(t, 15*time.Second, "the controller leads and publishes", func() (bool, string) {
		cn := published(t, k.a)
		return leaseHolder(t, k.a) == "rbac" && len(cn.ServiceCIDRs) > 0, fmt.Sprintf("%+v", cn)
	})

	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	uid := k.podWith("spin", "web", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "blue@net1"}, "", "node-a")
	rt := kubeRT("c1", p, "spin", "web", uid)
	k.mustAdd(l, rt)
	var pod struct {
		Metadata struct{ Annotations map[string]string } `json:"metadata"`
	}
	apiRequest(t, k.a, http.MethodGet, "/api/v1/namespaces/spin/pods/web", nil, &pod)
	if !strings.Contains(pod.Metadata.Annotations["k8s.v1.cni.cncf.io/network-status"], `"interface":"net1"`) {
		t.Errorf("network-status not written with the node's identity: %q", pod.Metadata.Annotations)
	}
	if n := k.podAllocCount(uid); n != 3 {
		t.Fatalf("%d allocations", n)
	}
	k.mustDel(l, rt)
	if n := k.podAllocCount(uid); n != 0 {
		t.Fatalf("DEL with the node's identity left %d allocations", n)
	}
	uid2 := k.podWith("spin", "web2", nil, nil, "", "node-a")
	p2, _ := k.topo.NewPod()
	k.mustAdd(l, kubeRT("c2", p2, "spin", "web2", uid2))
	eventually(t, 10*time.Second, "pool status by the controller's identity", func() (bool, string) {
		var pool struct {
			Status struct{ Allocated int64 } `json:"status"`
		}
		apiRequest(t, k.a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ippools/red-v4", nil, &pool)
		return pool.Status.Allocated == 1, fmt.Sprint(pool.Status)
	})
	k.deletePod("spin", "web2")
	eventually(t, 10*time.Second, "GC with the controller's identity", k.gone(uid2))
}
