package kube

import (
	"context"
	"encoding/base64"
	"encoding/json"
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

// TestListPages: List follows continue tokens a page of listPage at a
// time, sends the selector on every page, restarts once on 410 (an
// expired token), and an answer over the cap is an error naming it, not
// a truncated decode.
func TestListPages(t *testing.T) {
	const total = 1234
	var pages, gone int
	expireOnce, expireAlways := true, false
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path == "/big" {
			fmt.Fprintf(w, `{"items":[%q]}`, strings.Repeat("x", maxAnswer))
			return
		}
		if q.Get("labelSelector") != "a=b" || q.Get("limit") != "500" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		pages++
		from := 0
		if c := q.Get("continue"); c != "" {
			if expireAlways || expireOnce && c == "1000" {
				expireOnce = false
				gone++
				w.WriteHeader(http.StatusGone)
				fmt.Fprint(w, `{"kind":"Status","message":"the provided continue parameter is too old"}`)
				return
			}
			fmt.Sscan(c, &from)
		}
		to := min(from+500, total)
		var items []string
		for i := from; i < to; i++ {
			items = append(items, fmt.Sprintf(`{"n":%d}`, i))
		}
		next := ""
		if to < total {
			next = fmt.Sprint(to)
		}
		fmt.Fprintf(w, `{"metadata":{"continue":%q},"items":[%s]}`, next, strings.Join(items, ","))
	}))
	defer srv.Close()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	cl, err := Load(writeKubeconfig(t, srv.URL, ca, `{token: x}`), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	items, err := List[struct{ N int }](context.Background(), cl, "/things", "a=b")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != total || gone != 1 || pages != 3+3 {
		t.Fatalf("%d items in %d pages (%d expired), want %d in 6 (3, expired, 3)", len(items), pages, gone, total)
	}
	for i, it := range items {
		if it.N != i {
			t.Fatalf("item %d is %d", i, it.N)
		}
	}
	// a second expiry in the same list is the caller's error
	expireAlways = true
	if _, err := List[struct{ N int }](context.Background(), cl, "/things", "a=b"); err == nil || !strings.Contains(err.Error(), "410") {
		t.Fatalf("expired twice: %v", err)
	}
	if _, err := List[json.RawMessage](context.Background(), cl, "/big", ""); err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
		t.Fatalf("an answer over the cap: %v", err)
	}
}
