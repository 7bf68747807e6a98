package kube

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestResumeSessions: a client made afterwards (as the next CNI call's
// process makes one) resumes the TLS session an earlier one kept in the
// state dir; a damaged file costs a full handshake and is replaced; a
// kubeconfig with another identity never resumes it.
func TestResumeSessions(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"metadata":{"namespace":"ns1","name":"web","uid":"u-1"}}`)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	kc := writeKubeconfig(t, srv.URL, ca, `{token: t}`)
	dir := filepath.Join(t.TempDir(), "api-sessions")

	var got []Request
	Trace = func(r Request) { got = append(got, r) }
	defer func() { Trace = nil }()
	call := func(kubeconfig string) Request {
		t.Helper()
		c, err := Load(kubeconfig, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.ResumeSessions(dir)
		got = nil
		if _, err := c.GetPod(context.Background(), "ns1", "web"); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].TLS == 0 || got[0].Code != http.StatusOK {
			t.Fatalf("traced %+v, want one request on a new TLS connection", got)
		}
		return got[0]
	}
	if r := call(kc); r.Resumed {
		t.Fatal("the first call resumed a session")
	}
	files, _ := os.ReadDir(dir)
	if len(files) != 1 {
		t.Fatalf("%d files kept, want 1", len(files))
	}
	if fi, _ := files[0].Info(); fi.Mode().Perm() != 0o600 {
		t.Errorf("session file mode %v, want 0600", fi.Mode().Perm())
	}
	for i := range 2 {
		if r := call(kc); !r.Resumed {
			t.Fatalf("call %d after the first: not resumed", i+2)
		}
	}
	// damaged, truncated: a full handshake, and a good file again
	path := filepath.Join(dir, files[0].Name())
	good, _ := os.ReadFile(path)
	for _, bad := range [][]byte{[]byte("garbage"), good[:len(good)/2], {0xff, 0xff, 0xff, 0xff}} {
		os.WriteFile(path, bad, 0o600)
		if r := call(kc); r.Resumed {
			t.Fatalf("resumed from a damaged file (%d bytes)", len(bad))
		}
		if r := call(kc); !r.Resumed {
			t.Fatal("not resumed after the damaged file was replaced")
		}
	}
	// another identity (the same server, not verified) has a file of
	// its own
	insecure := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(insecure, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: ctx
clusters:
- name: c
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: t}
contexts:
- name: ctx
  context: {cluster: c, user: u}
`, srv.URL)), 0o600)
	if r := call(insecure); r.Resumed {
		t.Fatal("another identity resumed this one's session")
	}
	if files, _ := os.ReadDir(dir); len(files) != 2 {
		t.Fatalf("%d files, want one per identity", len(files))
	}
}
