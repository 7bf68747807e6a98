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

	"github.com/spinneret-cni/spinneret/cni"
)

// as sends a request with a token (not the admin's) and returns the code
// and the API server's message.
func (k *kubeEnv) as(token, method, path, contentType string, body any) (int, string) {
	k.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, k.a.URL+path, rd)
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := k.a.Client().Do(req)
	if err != nil {
		k.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var st struct{ Message string }
	json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st.Message
}

// allocObj is an IPAllocation of red-v4's n-th address on a node.
func (k *kubeEnv) allocObj(n int, node, pod, ownerKind string) (string, map[string]any) {
	a := nth(k.topo.Nets[0].Subnet4, n)
	name := fmt.Sprintf("red-v4.%d", n)
	spec := map[string]any{"pool": "red-v4", "address": a.String(), "containerID": "c-" + pod, "interface": "eth0", "node": node,
		"pod": map[string]any{"namespace": "spin", "name": pod, "uid": "00000000-0000-0000-0000-0000000000" + fmt.Sprint(n)}}
	if ownerKind != "" {
		spec["ownerKind"] = ownerKind
	}
	return name, map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPAllocation", "metadata": map[string]any{"name": name}, "spec": spec}
}

// applyRBAC applies deploy/k8s/rbac.yaml and waits until the API server
// enforces its admission policy (it loads policies a few seconds after
// they are created): a dry-run create of another node's IPAllocation by
// node-a's per-node user is refused.
func (k *kubeEnv) applyRBAC() {
	k.t.Helper()
	applyFile(k.t, k.a, "../deploy/k8s/rbac.yaml", false)
	_, probe := k.allocObj(199, "node-probe", "probe", "")
	eventually(k.t, 30*time.Second, "the node policy enforced", func() (bool, string) {
		code, msg := k.as(k.a.NodeTokens["node-a"], http.MethodPost, "/apis/spinneret.io/v1alpha1/ipallocations?dryRun=All", "application/json", probe)
		return code == http.StatusForbidden, fmt.Sprint(code, " ", msg)
	})
}

// TestNodeIdentity: the API server, with deploy/k8s/rbac.yaml applied,
// lets a node's plugin write only its own node's objects. Its identity
// is the spinneret-node ServiceAccount's token bound to its pod on the
// node (the API server names the node in it), or a per-node user
// spinneret:node:<node>. Refused with 403: creating, updating or deleting
// another node's IPAllocation (except taking over a StatefulSet pod's by
// its successor of the same name), annotating a pod not bound to the node,
// and any write with a token that names no node. The plugin itself, given
// node-a's token but configured as node-b, fails its ADD with 108 and
// leaves nothing.
func TestNodeIdentity(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	k.applyRBAC()
	const allocs = "/apis/spinneret.io/v1alpha1/ipallocations"
	tokA, tokB := k.nodeToken("node-a"), k.nodeToken("node-b")
	unbound := saToken(t, k.a, "kube-system", "spinneret-node", nil)

	// the API server names the node in the bound token
	var review struct {
		Status struct {
			UserInfo struct {
				Username string
				Extra    map[string][]string
			} `json:"userInfo"`
		} `json:"status"`
	}
	req, _ := http.NewRequest(http.MethodPost, k.a.URL+"/apis/authentication.k8s.io/v1/selfsubjectreviews",
		strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tokA)
	resp, err := k.a.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&review)
	resp.Body.Close()
	if got := review.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != "node-a" {
		t.Fatalf("bound token's identity %+v: want the node-name extra node-a", review.Status.UserInfo)
	}

	// creates, updates and deletes of a node's own objects pass; another
	// node's are refused, whatever the credential
	for _, c := range []struct {
		who        string
		mine, them string // tokens of this node and of the other node's credential kind
	}{
		{"bound ServiceAccount token", tokA, tokB},
		{"per-node user", k.a.NodeTokens["node-a"], k.a.NodeTokens["node-b"]},
	} {
		t.Run(c.who, func(t *testing.T) {
			defer func() {
				for _, n := range []int{150, 151, 152, 153, 154} {
					name, _ := k.allocObj(n, "", "", "")
					apiRequest(t, k.a, http.MethodDelete, allocs+"/"+name, nil, nil)
				}
			}()
			_, other := k.allocObj(150, "node-b", "web-b", "")
			if code, msg := k.as(c.mine, http.MethodPost, allocs, "application/json", other); code != http.StatusForbidden ||
				!strings.Contains(msg, "node node-a may create only IPAllocations of spec.node node-a") {
				t.Errorf("node-a creating node-b's IPAllocation: %d %q, want 403", code, msg)
			}
			_, mine := k.allocObj(151, "node-a", "web-a", "")
			if code, msg := k.as(c.mine, http.MethodPost, allocs, "application/json", mine); code != http.StatusCreated {
				t.Errorf("node-a creating its own IPAllocation: %d %q", code, msg)
			}
			// node-b's objects, made by the other node's credential
			theirs, obj := k.allocObj(152, "node-b", "web-b", "")
			if code, msg := k.as(c.them, http.MethodPost, allocs, "application/json", obj); code != http.StatusCreated {
				t.Fatalf("node-b creating its own IPAllocation: %d %q", code, msg)
			}
			patch := map[string]any{"spec": map[string]any{"node": "node-a", "containerID": "stolen"}}
			if code, msg := k.as(c.mine, http.MethodPatch, allocs+"/"+theirs, "application/merge-patch+json", patch); code != http.StatusForbidden ||
				!strings.Contains(msg, "may not update an IPAllocation of node node-b") {
				t.Errorf("node-a taking node-b's IPAllocation: %d %q, want 403", code, msg)
			}
			if code, msg := k.as(c.mine, http.MethodDelete, allocs+"/"+theirs, "application/json", nil); code != http.StatusForbidden ||
				!strings.Contains(msg, "may not delete an IPAllocation of node node-b") {
				t.Errorf("node-a deleting node-b's IPAllocation: %d %q, want 403", code, msg)
			}
			// a StatefulSet pod's address: its successor of the same name
			// takes it over from another node; any other pod may not
			sts, obj := k.allocObj(153, "node-b", "db-0", "StatefulSet")
			apiRequest(t, k.a, http.MethodPost, allocs, obj, nil)
			steal := map[string]any{"spec": map[string]any{"node": "node-a", "pod": map[string]any{"name": "db-1"}}}
			if code, msg := k.as(c.mine, http.MethodPatch, allocs+"/"+sts, "application/merge-patch+json", steal); code != http.StatusForbidden {
				t.Errorf("node-a giving a StatefulSet pod's address to another pod: %d %q, want 403", code, msg)
			}
			heir := map[string]any{"spec": map[string]any{"node": "node-a", "containerID": "c-heir"}}
			if code, msg := k.as(c.mine, http.MethodPatch, allocs+"/"+sts, "application/merge-patch+json", heir); code != http.StatusOK {
				t.Errorf("the StatefulSet successor's take-over on node-a: %d %q", code, msg)
			}
			// and an update may not hand node-a's own object to node-b
			give := map[string]any{"spec": map[string]any{"node": "node-b"}}
			if code, _ := k.as(c.mine, http.MethodPatch, allocs+"/"+sts, "application/merge-patch+json", give); code != http.StatusForbidden {
				t.Errorf("node-a moving its IPAllocation to node-b: %d, want 403", code)
			}
			if code, msg := k.as(c.them, http.MethodDelete, allocs+"/"+theirs, "application/json", nil); code != http.StatusOK {
				t.Errorf("node-b deleting its own IPAllocation: %d %q", code, msg)
			}
		})
	}

	// pods: only those bound to the node
	k.podWith("spin", "on-a", nil, nil, "", "node-a")
	k.podWith("spin", "on-b", nil, nil, "", "node-b")
	k.pod("spin", "unscheduled", nil, nil, "")
	annotate := map[string]any{"metadata": map[string]any{"annotations": map[string]string{cni.AnnotNetworkStatus: "[]"}}}
	for pod, want := range map[string]int{"on-a": http.StatusOK, "on-b": http.StatusForbidden, "unscheduled": http.StatusForbidden} {
		for who, tok := range map[string]string{"bound token": tokA, "per-node user": k.a.NodeTokens["node-a"]} {
			if code, msg := k.as(tok, http.MethodPatch, "/api/v1/namespaces/spin/pods/"+pod, "application/merge-patch+json", annotate); code != want {
				t.Errorf("node-a (%s) annotating pod %s: %d %q, want %d", who, pod, code, msg, want)
			}
		}
	}

	// a token of the ServiceAccount that names no node writes nothing
	_, obj := k.allocObj(155, "node-a", "web-a", "")
	if code, msg := k.as(unbound, http.MethodPost, allocs, "application/json", obj); code != http.StatusForbidden || !strings.Contains(msg, "names no node") {
		t.Errorf("unbound ServiceAccount token creating an IPAllocation: %d %q, want 403", code, msg)
	}
	if code, _ := k.as(unbound, http.MethodPatch, "/api/v1/namespaces/spin/pods/on-a", "application/merge-patch+json", annotate); code != http.StatusForbidden {
		t.Errorf("unbound ServiceAccount token annotating a pod: %d, want 403", code)
	}
	// other users are not this policy's business
	if code := apiRequest(t, k.a, http.MethodPost, allocs, obj, nil); code != http.StatusCreated {
		t.Errorf("the admin creating an IPAllocation: %d", code)
	}
	name, _ := k.allocObj(155, "", "", "")
	apiRequest(t, k.a, http.MethodDelete, allocs+"/"+name, nil, nil)

	// the plugin: node-a's credential, configured as node-b
	nodeConf := filepath.Join(k.dir, "node.yaml")
	b, _ := os.ReadFile(nodeConf)
	b = regexp.MustCompile(`(?m)^kubeconfig: .*$`).ReplaceAll(b, []byte("kubeconfig: "+writeKubeconfig(t, k.a, "node-a", tokA)))
	good := b
	b = regexp.MustCompile(`(?m)^nodeName: .*$`).ReplaceAll(b, []byte("nodeName: node-b"))
	if err := os.WriteFile(nodeConf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.podWith("spin", "web", nil, nil, "", "node-b")
	_, err = k.add(l, kubeRT("c1", p, "spin", "web", uid))
	wantErr(t, err, cni.ErrAPIForbidden, "may create only IPAllocations of spec.node node-a")
	k.sameAs(before, p)
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("IPAllocations left: %s", allocSummary(al))
	}
	// configured as itself, the same credential attaches a pod of its node
	if err := os.WriteFile(nodeConf, good, 0o644); err != nil {
		t.Fatal(err)
	}
	uid = k.podWith("spin", "web-a", nil, nil, "", "node-a")
	k.mustAdd(l, kubeRT("c2", p, "spin", "web-a", uid))
	if n := k.podAllocCount(uid); n != 2 {
		t.Errorf("%d allocations for web-a, want 2", n)
	}
	k.mustDel(l, kubeRT("c2", p, "spin", "web-a", uid))
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("IPAllocations left: %s", allocSummary(al))
	}
}
