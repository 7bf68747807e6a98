package kube

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeKubeconfig(t *testing.T, server, caData, user string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("file-token\n"), 0o600)
	p := filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: ctx
clusters:
- name: c
  cluster: {server: %q, certificate-authority-data: %q}
users:
- name: u
  user: %s
contexts:
- name: ctx
  context: {cluster: c, user: u}
`, server, caData, user)
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGetPod(t *testing.T) {
	var gotAuth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		if r.URL.Path != "/api/v1/namespaces/ns1/pods/web" {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"kind":"Status","message":"pods \"x\" not found"}`)
			return
		}
		fmt.Fprint(w, `{"metadata":{"namespace":"ns1","name":"web","uid":"u-1","annotations":{"a":"b"}}}`)
	}))
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	for _, c := range []struct{ user, wantAuth string }{
		{`{token: t0k3n}`, "Bearer t0k3n"},
		{`{tokenFile: token}`, "Bearer file-token"}, // relative to the kubeconfig
	} {
		cl, err := Load(writeKubeconfig(t, srv.URL, ca, c.user), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		p, err := cl.GetPod(context.Background(), "ns1", "web")
		if err != nil || p.UID != "u-1" || p.Annotations["a"] != "b" || gotAuth != c.wantAuth {
			t.Fatalf("GetPod = %+v, %v (auth %q)", p, err, gotAuth)
		}
		_, err = cl.GetPod(context.Background(), "ns1", "gone")
		var se *StatusError
		if !errors.As(err, &se) || se.Code != 404 || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("missing pod: %v", err)
		}
	}
	// the server goes away
	cl, _ := Load(writeKubeconfig(t, srv.URL, ca, `{token: x}`), time.Second)
	srv.Close()
	if _, err := cl.GetPod(context.Background(), "ns1", "web"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("server down: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ body, want string }{
		{"current-context: nope\ncontexts: []\n", `current-context "nope" not found`},
		{"current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {}}]\n", `cluster "c" has no server`},
		{"current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', certificate-authority-data: 'bm90IGEgY2VydA=='}}]\n", "no certificate in its certificate authority"},
		{"{{", "kubeconfig"},
	} {
		p := filepath.Join(dir, "kc")
		os.WriteFile(p, []byte(c.body), 0o600)
		if _, err := Load(p, time.Second); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q) = %v, want %q", c.body, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(dir, "absent"), time.Second); err == nil {
		t.Error("a missing kubeconfig loaded")
	}
}
