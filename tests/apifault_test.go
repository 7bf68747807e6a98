package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/cni"
)

// faultProxy is a TLS proxy in front of the real API server, on the
// node's loopback (where the plugin runs): it forwards each request as
// the plugin sent it (its own token), except those its rule matches,
// which it answers with the rule's status (and Retry-After) or holds for
// the rule's delay first.
type faultProxy struct {
	srv  *httptest.Server
	mu   sync.Mutex
	rule faultRule
	hits int
	// expired: an expireAfter rule's request went through; every request
	// since is answered with its code
	expired bool
}

type faultRule struct {
	method, path string // path: a substring of the request's path
	code         int
	retryAfter   string
	delay        time.Duration
	// expireAfter: the matching request goes through, and from then on
	// every request is answered with code (a token that expires mid-run)
	expireAfter bool
}

func newFaultProxy(t *testing.T, k *kubeEnv) *faultProxy {
	t.Helper()
	f := &faultProxy{}
	client := k.a.Client()
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		rule := f.rule
		match := rule.method != "" && r.Method == rule.method && strings.Contains(r.URL.Path, rule.path)
		if match {
			f.hits++
		}
		if rule.expireAfter {
			match, f.expired = f.expired, f.expired || match
		}
		f.mu.Unlock()
		if match && rule.delay > 0 {
			select {
			case <-time.After(rule.delay):
			case <-r.Context().Done():
				return
			}
		}
		if match && rule.code != 0 {
			if rule.retryAfter != "" {
				w.Header().Set("Retry-After", rule.retryAfter)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(rule.code)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected %d","code":%d}`, rule.code, rule.code)
			return
		}
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, k.a.URL+r.URL.RequestURI(), r.Body)
		out.Header = r.Header.Clone()
		resp, err := client.Do(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for h, v := range resp.Header {
			w.Header()[h] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	err := k.topo.Node.Do(func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		f.srv.Listener = ln
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// kubeconfigSwitch returns a function that points the kubeconfig the
// node conf names (the admin's) at a server, with a token; the original is
// put back when the test ends.
func (k *kubeEnv) kubeconfigSwitch() func(server, token string) {
	k.t.Helper()
	orig, err := os.ReadFile(k.a.Kubeconfig)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { os.WriteFile(k.a.Kubeconfig, orig, 0o600) })
	return func(server, token string) {
		kc := strings.Replace(strings.Replace(string(orig), k.a.URL, server, 1), k.a.Token, token, 1)
		if err := os.WriteFile(k.a.Kubeconfig, []byte(kc), 0o600); err != nil {
			k.t.Fatal(err)
		}
	}
}

func (f *faultProxy) hitCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

func (f *faultProxy) set(r faultRule) {
	f.mu.Lock()
	f.rule, f.hits, f.expired = r, 0, false
	f.mu.Unlock()
}

// TestKubeAPIAnswers: an API server answer that is not the pod's doing
// gets a code that says what happened, not 104: credentials refused
// (107), forbidden (108), throttled or failing (11, with the server's
// Retry-After), or too slow (11). Each ADD fails within apiTimeout + 1 s
// and leaves nothing: no link, no address in the local store, no
// IPAllocation; the first ones before anything is allocated, the others
// after eth0's addresses were taken (rolled back).
func TestKubeAPIAnswers(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, nil, "")
	proxy := newFaultProxy(t, k)
	kubeconfig := k.kubeconfigSwitch()
	for _, c := range []struct {
		name          string
		server, token string
		rule          faultRule
		code          uint
		msg           string
	}{
		{"token refused", k.a.URL, "0000", faultRule{}, cni.ErrAPIUnauthorized, "API server: 401"},
		{"forbidden", k.a.URL, k.a.NobodyToken, faultRule{}, cni.ErrAPIForbidden, "API server: 403"},
		{"throttled reading the pod", proxy.srv.URL, k.a.Token, faultRule{method: "GET", path: "/pods/web", code: 429, retryAfter: "7"}, 11, "API server: 429 injected 429 (retry after 7s)"},
		{"failing reading the pod", proxy.srv.URL, k.a.Token, faultRule{method: "GET", path: "/pods/web", code: 500}, 11, "API server: 500 injected 500"},
		{"unavailable creating an IPAllocation", proxy.srv.URL, k.a.Token, faultRule{method: "POST", path: "/ipallocations", code: 503, retryAfter: "3"}, 11, "API server: 503 injected 503 (retry after 3s)"},
		{"throttled creating an IPAllocation", proxy.srv.URL, k.a.Token, faultRule{method: "POST", path: "/ipallocations", code: 429}, 11, "API server: 429 injected 429"},
		{"slower than apiTimeout creating an IPAllocation", proxy.srv.URL, k.a.Token, faultRule{method: "POST", path: "/ipallocations", delay: 10 * time.Second}, 11, "API server unreachable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			kubeconfig(c.server, c.token)
			proxy.set(c.rule)
			start := time.Now()
			_, err := k.add(l, kubeRT("c1", p, "spin", "web", uid))
			d := time.Since(start)
			wantErr(t, err, c.code, c.msg)
			if d > 3*time.Second {
				t.Errorf("ADD took %s, want at most apiTimeout (2s) + 1s", d.Round(time.Millisecond))
			}
			if c.rule.method != "" && proxy.hitCount() == 0 {
				t.Fatalf("the fault was never hit")
			}
			k.sameAs(before, p)
			if al := k.allocations(); len(al) != 0 {
				t.Fatalf("IPAllocations left: %s", allocSummary(al))
			}
		})
	}
	// and with the API server answering again, the pod gets its addresses
	kubeconfig(proxy.srv.URL, k.a.Token)
	proxy.set(faultRule{})
	k.mustAdd(l, kubeRT("c1", p, "spin", "web", uid))
	k.mustDel(l, kubeRT("c1", p, "spin", "web", uid))
	k.sameAs(before, p)

	// DEL while the API server fails its IPAllocation deletes (or is too
	// slow) still succeeds, within apiTimeout + 1 s, and leaves the
	// node clean: the objects wait for the controller's GC
	for _, rule := range []faultRule{
		{method: "DELETE", path: "/ipallocations", code: 503, retryAfter: "5"},
		{method: "DELETE", path: "/ipallocations", code: 429},
		{method: "DELETE", path: "/ipallocations", code: 500},
		{method: "DELETE", path: "/ipallocations", delay: 10 * time.Second},
	} {
		proxy.set(faultRule{})
		k.mustAdd(l, kubeRT("c1", p, "spin", "web", uid))
		held := len(k.allocations())
		proxy.set(rule)
		start := time.Now()
		k.mustDel(l, kubeRT("c1", p, "spin", "web", uid))
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("DEL with %d/%s on IPAllocation deletes took %s", rule.code, rule.delay, d.Round(time.Millisecond))
		}
		if proxy.hitCount() == 0 {
			t.Fatalf("DEL with %d/%s: the fault was never hit", rule.code, rule.delay)
		}
		k.sameAs(before, p)
		if got := len(k.allocations()); got != held {
			t.Logf("DEL with %d/%s: %d of %d IPAllocations left for GC", rule.code, rule.delay, got, held)
		}
		// (GC's release of them is the controller's: TestKubeIPAMAPIDown)
		for _, a := range k.allocations() {
			apiRequest(t, k.a, http.MethodDelete, "/apis/spinneret.io/v1alpha1/ipallocations/"+a.Metadata.Name, nil, nil)
		}
	}
}

// TestKubeTokenExpires: the node's token stops being accepted in the
// middle of an ADD, right after its first IPAllocation is created. The
// ADD fails with 107 within apiTimeout + 1 s and leaves nothing on the
// node; the one object it could not delete any more is the pod's, and the
// runtime's retry (a new sandbox, the token renewed) takes it over and
// gets the pod's addresses, leaking none. With the token refused for all
// of a DEL, the DEL succeeds and leaves the node clean; the controller's
// GC deletes the objects once the pod is gone.
func TestKubeTokenExpires(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "blue@net1"}, "")
	proxy := newFaultProxy(t, k)
	kubeconfig := k.kubeconfigSwitch()
	kubeconfig(proxy.srv.URL, k.a.Token)

	proxy.set(faultRule{method: "POST", path: "/ipallocations", code: 401, expireAfter: true})
	start := time.Now()
	_, err := k.add(l, kubeRT("c1", p, "spin", "web", uid))
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("ADD took %s, want at most apiTimeout (2s) + 1s", d.Round(time.Millisecond))
	}
	wantErr(t, err, cni.ErrAPIUnauthorized, "API server: 401")
	k.sameAs(before, p)
	left := k.allocations()
	if len(left) != 1 || left[0].Spec.Pod.UID != uid || left[0].Spec.ContainerID != "c1" {
		t.Fatalf("after the token expired mid-ADD: %s, want the one object created before", allocSummary(left))
	}

	proxy.set(faultRule{})
	r := k.mustAdd(l, kubeRT("c2", p, "spin", "web", uid))
	al := k.allocations()
	if len(al) != 3 {
		t.Fatalf("after the retry: %s", allocSummary(al))
	}
	for _, a := range al {
		if a.Spec.ContainerID != "c2" {
			t.Errorf("IPAllocation %s not the retry's: %s", a.Metadata.Name, a.Spec.ContainerID)
		}
	}
	took := false
	for _, ip := range r.IPs {
		took = took || ip.Address.IP.String() == left[0].Spec.Address
	}
	if !took {
		t.Errorf("the retry did not take over %s: %v", left[0].Spec.Address, r.IPs)
	}

	proxy.set(faultRule{method: "GET", code: 401, expireAfter: true})
	proxy.mu.Lock()
	proxy.expired = true // refused from the first request on
	proxy.mu.Unlock()
	start = time.Now()
	k.mustDel(l, kubeRT("c2", p, "spin", "web", uid))
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("DEL with the token refused took %s", d.Round(time.Millisecond))
	}
	k.sameAs(before, p)
	if got := len(k.allocations()); got != 3 {
		t.Fatalf("DEL with the token refused deleted %d objects", 3-got)
	}
	// the controller has its own credential (the admin's kubeconfig here)
	kubeconfig(k.a.URL, k.a.Token)
	startController(t, k.a, k.topo.Node.Do, "gc")
	k.deletePod("spin", "web")
	eventually(t, 15*time.Second, "the controller's GC of the pod's objects", k.gone(uid))
}
