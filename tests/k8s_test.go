package tests

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// apiRequest sends a JSON request to the API server and decodes the reply.
func apiRequest(t *testing.T, a *k8senv.APIServer, method, path string, body, out any) int {
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
	if resp.StatusCode >= 300 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// TestAPIServerEnv proves the Kubernetes test environment the Kubernetes
// issue builds on: a real etcd and kube-apiserver (built from the Go module
// proxy, cached by version) start on 127.0.0.1, take a namespace, a service
// account and a pod with annotations, give them back, and stop.
func TestAPIServerEnv(t *testing.T) {
	bin, err := k8senv.Binary("..")
	if err != nil {
		t.Fatal(err)
	}
	a, err := k8senv.StartAPIServer(t.TempDir(), bin)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	ns := "spinneret-test"
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{"/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}},
		{"/api/v1/namespaces/" + ns + "/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}}},
		{"/api/v1/namespaces/" + ns + "/pods", map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": "pod1", "annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": "storage@net1", "spinneret.io/default-route-nic": "net1"}},
			"spec":     map[string]any{"containers": []map[string]any{{"name": "c", "image": "pause"}}}}},
	} {
		if code := apiRequest(t, a, http.MethodPost, c.path, c.body, nil); code != http.StatusCreated {
			t.Fatalf("POST %s: %d", c.path, code)
		}
	}
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
