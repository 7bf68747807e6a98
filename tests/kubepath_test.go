package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/internal/clusternet"
	"github.com/spinneret-cni/spinneret/internal/statedir"
)

// kubePathPods is how many pods TestKubePath attaches per way.
const kubePathPods = 30

// apiCall is one API request as the plugin's debug log has it.
type apiCall struct {
	kind    string // method and resource ("PATCH pods/name")
	ms      float64
	tls     float64 // the handshake of a new connection, 0 on none
	resumed bool
}

// TestKubePath: the Kubernetes part of an ADD and a DEL through the
// binary against a real API server (`make bench-kube` prints it): which
// requests each way makes, what each costs (the plugin logs every request
// at debug level, with its connection's TLS handshake), and the ADD as a
// whole. Four ways, one pod each in turn:
//
//   - local IPAM, the annotations from the runtime (containerd's
//     pod-annotations capability): one request, the network-status
//     PATCH; its TLS session resumed from the last call's (the state dir
//     keeps it);
//   - the same with the kept session set aside for each call: a full
//     TLS handshake each time, as before sessions were kept;
//   - local IPAM, the annotations read from the API server: a pod GET
//     first;
//   - the kubernetes IPAM backend (an IPPool): the pod GET (its labels
//     and owner choose the pool and the address's life), its Namespace's
//     (default-pool annotations), the allocation's create, the PATCH
//     (what the pod already holds is in the node's view: no list of
//     the pod's allocations); DEL deletes the allocation.
//
// The published cluster CIDRs and the IPPool and ReservedIP lists are
// read once per poolCacheTTL (1h here, so once in the run), and so is
// the node's view of the pool it picks addresses from: its allocations
// (none yet), and the one allocation of its home block (is it empty?).
//
// What the test holds to, as it holds on any machine: the requests of
// each way, exactly, and every call after the first resuming its TLS
// session but where the session was removed. Times are printed, never
// asserted.
func TestKubePath(t *testing.T) {
	e := multiEnv(t)
	a := startAPI(t, e.topo.Node.Do)
	applyCRDs(t, a)
	k := &kubeEnv{env: e, a: a}
	nodeConf := fmt.Sprintf("stateDir: %s/state\nlogFile: %s/spinneret.log\nlogLevel: debug\nkubeconfig: %s\napiTimeout: 5s\nnodeName: node-a\npoolCacheTTL: 1h\n", e.dir, e.dir, a.Kubeconfig)
	if err := os.WriteFile(filepath.Join(e.dir, "node.yaml"), []byte(nodeConf), 0o644); err != nil {
		t.Fatal(err)
	}
	n := e.topo.Nets[0]
	// the controller's published cluster CIDRs, as the underlay
	// coordinator reads them (once per poolCacheTTL)
	doc, _ := json.Marshal(clusternet.Network{ServiceCIDRs: []string{"10.96.0.0/12"}, ServiceSource: "test", PodCIDRs: []string{"10.244.0.0/16"}, PodSource: "test"})
	if code := apiRequest(t, a, http.MethodPost, "/api/v1/namespaces/kube-system/configmaps", map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": clusternet.ConfigMapName}, "data": map[string]string{clusternet.ConfigMapKey: string(doc)}}, nil); code != http.StatusCreated {
		t.Fatalf("publishing the cluster CIDRs: HTTP %d", code)
	}
	// a range inside one block (.128/26), more addresses than the run's
	// ADDs: the node finds its block once
	k.createPool("red-v4", map[string]any{"subnet": n.Subnet4.String(), "gateway": n.GW4.String(),
		"ranges": []map[string]string{{"start": nth(n.Subnet4, 130).String(), "end": nth(n.Subnet4, 189).String()}}})
	conf := func(name, ipam string) *libcni.NetworkConfigList {
		return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
			"capabilities":{"io.kubernetes.cri.pod-annotations":true},"networks":[{"name":"red","master":%q,"ipam":%s}]}]}`, name, e.dir, n.Uplink, ipam))
	}
	local := fmt.Sprintf(`{"pools":[{"name":"red-local","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}]}`,
		n.Subnet4, nth(n.Subnet4, 100), nth(n.Subnet4, 149), n.GW4)
	ways := []struct {
		name        string
		l           *libcni.NetworkConfigList
		annotations bool // from the runtime
		cold        bool // the kept TLS session removed first
		add, del    []string
	}{
		{"local IPAM, runtime's annotations", conf("kp-local", local), true, false,
			[]string{"PATCH pods/name"}, nil},
		{"  the same, full TLS handshake", conf("kp-cold", local), true, true,
			[]string{"PATCH pods/name"}, nil},
		{"local IPAM, annotations from the API", conf("kp-api", local), false, false,
			[]string{"GET pods/name", "PATCH pods/name"}, nil},
		{"kubernetes IPAM, runtime's annotations", conf("kp-kube", `{"ippools":["red-v4"]}`), true, false,
			[]string{"GET pods/name", "GET namespaces/name", "POST ipallocations", "PATCH pods/name"}, []string{"DELETE ipallocations/name"}},
	}
	sessions := statedir.APISessions(filepath.Join(e.dir, "state"))
	adds, dels := make([][]time.Duration, len(ways)), make([][]time.Duration, len(ways))
	for i := range kubePathPods {
		for w, way := range ways {
			name := fmt.Sprintf("kp%d-%d", w, i)
			uid := k.pod("kp", name, nil, nil, "")
			p, err := e.topo.NewPod()
			if err != nil {
				t.Fatal(err)
			}
			rt := kubeRT(name, p, "kp", name, uid)
			if way.annotations {
				rt.CapabilityArgs = map[string]any{"io.kubernetes.cri.pod-annotations": map[string]string{"team": "a"}}
			}
			if way.cold { // the kept session set aside for this call
				if err := os.Rename(sessions, sessions+".aside"); err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
			}
			start := time.Now()
			e.mustAdd(way.l, rt)
			adds[w] = append(adds[w], time.Since(start))
			if way.cold {
				os.RemoveAll(sessions) // the cold call's own
				if err := os.Rename(sessions+".aside", sessions); err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
			}
			start = time.Now()
			e.mustDel(way.l, rt)
			dels[w] = append(dels[w], time.Since(start))
			e.topo.RemovePod(p)
		}
	}

	calls, phases := kubePathLog(t, filepath.Join(e.dir, "spinneret.log"))
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) }
	var out strings.Builder
	fetched := map[string]int{}
	fmt.Fprintf(&out, "%d pods per way, ADD then DEL, through the binary against kube-apiserver (ms, p50)\n", kubePathPods)
	for w, way := range ways {
		fmt.Fprintf(&out, "%-40s ADD %6s  DEL %6s   plugin:", way.name, ms(percentiles(adds[w])[0]), ms(percentiles(dels[w])[0]))
		for _, ph := range []string{"api", "select", "allocate", "status"} {
			if v := phases[fmt.Sprintf("kp%d", w)+" "+ph+"-ms"]; len(v) > 0 {
				fmt.Fprintf(&out, " %s %s", ph, ms(percentiles(v)[0]))
			}
		}
		out.WriteString("\n")
		for _, verb := range []string{"ADD", "DEL"} {
			want := way.add
			if verb == "DEL" {
				want = way.del
			}
			var tls, resumedTLS []time.Duration
			var seen []string
			perKind := map[string][]time.Duration{}
			for i := range kubePathPods {
				cs := calls[fmt.Sprintf("kp%d-%d %s", w, i, verb)]
				var kinds []string
				for _, c := range cs {
					if slices.Contains(kubePathCached, c.kind) {
						fetched[c.kind]++
					} else {
						kinds = append(kinds, c.kind)
					}
					if !slices.Contains(seen, c.kind) {
						seen = append(seen, c.kind)
					}
					perKind[c.kind] = append(perKind[c.kind], time.Duration(c.ms*float64(time.Millisecond)))
					if c.tls == 0 {
						continue
					}
					d := time.Duration(c.tls * float64(time.Millisecond))
					if c.resumed {
						resumedTLS = append(resumedTLS, d)
					} else {
						tls = append(tls, d)
					}
					// the first call of the first way has no session
					// yet; a cold call never has one
					if wantResumed := !way.cold && !(w == 0 && i == 0 && verb == "ADD"); c.resumed != wantResumed {
						t.Errorf("%s: %s pod %d: TLS session resumed %v, want %v", way.name, verb, i, c.resumed, wantResumed)
					}
				}
				if !slices.Equal(kinds, want) {
					t.Errorf("%s: %s of pod %d made the requests %q, want %q", way.name, verb, i, kinds, want)
				}
			}
			for _, kind := range seen {
				fmt.Fprintf(&out, "    %s %-42s %6s (%d)\n", verb, kind, ms(percentiles(perKind[kind])[0]), len(perKind[kind]))
			}
			if len(tls) > 0 {
				fmt.Fprintf(&out, "    %s full TLS handshake                          %6s (%d)\n", verb, ms(percentiles(tls)[0]), len(tls))
			}
			if len(resumedTLS) > 0 {
				fmt.Fprintf(&out, "    %s resumed TLS handshake                       %6s (%d)\n", verb, ms(percentiles(resumedTLS)[0]), len(resumedTLS))
			}
		}
	}
	for _, kind := range kubePathCached {
		if fetched[kind] != 1 {
			t.Errorf("%s: made %d times in the run, want once (poolCacheTTL 1h)", kind, fetched[kind])
		}
	}
	t.Log("\n" + out.String())
}

// kubePathCached are the reads an ADD makes once per poolCacheTTL, not
// every time: the published cluster CIDRs, the IPPool and ReservedIP
// lists, the node's view of the pool.
var kubePathCached = []string{"GET configmaps/name", "GET ippools", "GET reservedips",
	"GET ipallocations by spinneret.io/pool,spinneret.io/node", "GET ipallocations by spinneret.io/pool,spinneret.io/block"}

// kubePathLog reads the plugin's log: each call's API requests, by
// "<container> <verb>", and each ADD's phases, by "<way> <phase>-ms" (the
// way: the container's name up to its '-').
func kubePathLog(t *testing.T, file string) (map[string][]apiCall, map[string][]time.Duration) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	byPID := map[string][]apiCall{}
	calls, phases := map[string][]apiCall{}, map[string][]time.Duration{}
	for _, line := range strings.Split(string(data), "\n") {
		f := logFields(line)
		switch f["msg"] {
		case "api request":
			ms, _ := strconv.ParseFloat(f["ms"], 64)
			tls, _ := strconv.ParseFloat(f["tls-ms"], 64)
			byPID[f["pid"]] = append(byPID[f["pid"]], apiCall{kind: apiKind(f["method"], f["path"]), ms: ms, tls: tls, resumed: f["resumed"] == "true"})
		case "ok":
			key := f["container"] + " " + f["verb"]
			calls[key] = append(calls[key], byPID[f["pid"]]...)
			delete(byPID, f["pid"])
			if f["verb"] != "ADD" {
				continue
			}
			way, _, _ := strings.Cut(f["container"], "-")
			for k, v := range f {
				if strings.HasSuffix(k, "-ms") {
					d, _ := strconv.ParseFloat(v, 64)
					phases[way+" "+k] = append(phases[way+" "+k], time.Duration(d*float64(time.Millisecond)))
				}
			}
		}
	}
	return calls, phases
}

// logFields splits a text log line into its key=value fields (values
// quoted or not).
func logFields(line string) map[string]string {
	out := map[string]string{}
	for line != "" {
		k, rest, ok := strings.Cut(line, "=")
		if !ok {
			break
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		out[strings.TrimSpace(k)] = v
		line = strings.TrimLeft(rest, " ")
	}
	return out
}

// apiKind names a request by method and resource: "GET pods/name" for
// one object, "GET ipallocations" for a list, "GET ipallocations by
// spinneret.io/pod" for one by that label.
func apiKind(method, path string) string {
	u, err := url.Parse(path)
	if err != nil {
		return method + " " + path
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	// /api/v1/namespaces/<ns>/<resource>[/<name>] or
	// /apis/<group>/<version>/[namespaces/<ns>/]<resource>[/<name>]
	i := 2
	if parts[0] == "apis" {
		i = 3
	}
	if len(parts) > i+2 && parts[i] == "namespaces" {
		i += 2 // a namespaced resource, not the Namespace itself
	}
	if i >= len(parts) {
		return method + " " + u.Path
	}
	kind := method + " " + parts[i]
	if len(parts) > i+1 {
		kind += "/name"
	}
	if sel := u.Query().Get("labelSelector"); sel != "" {
		var keys []string
		for _, req := range strings.Split(sel, ",") {
			key, _, _ := strings.Cut(req, "=")
			key, _, _ = strings.Cut(key, " ") // "key in (...)"
			keys = append(keys, key)
		}
		kind += " by " + strings.Join(keys, ",")
	}
	return kind
}
