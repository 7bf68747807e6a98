package tests

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/ipam/kubeipam"
	"github.com/spinneret-cni/spinneret/tests/k8senv"
)

// kubeEnv is a two-network topology with a real API server on the node's
// loopback, the CRDs installed, and the plugin's node conf pointing at it.
type kubeEnv struct {
	*env
	a *k8senv.APIServer
}

func newKubeEnv(t *testing.T) *kubeEnv {
	e := multiEnv(t)
	a := startAPI(t, e.topo.Node.Do)
	applyCRDs(t, a)
	appendFile(t, filepath.Join(e.dir, "node.yaml"), fmt.Sprintf("kubeconfig: %s\napiTimeout: 2s\nnodeName: node-a\npoolCacheTTL: 0s\n", a.Kubeconfig))
	return &kubeEnv{env: e, a: a}
}

func (k *kubeEnv) createPool(name string, spec map[string]any) {
	k.t.Helper()
	obj := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": name}, "spec": spec}
	if code := apiRequest(k.t, k.a, http.MethodPost, "/apis/spinneret.io/v1alpha1/ippools", obj, nil); code != http.StatusCreated {
		k.t.Fatalf("create IPPool %s: %d", name, code)
	}
}

// allocations lists the IPAllocations, sorted by address.
func (k *kubeEnv) allocations() []kubeipam.Alloc {
	k.t.Helper()
	var l struct{ Items []kubeipam.Alloc }
	if code := apiRequest(k.t, k.a, http.MethodGet, "/apis/spinneret.io/v1alpha1/ipallocations", nil, &l); code != http.StatusOK {
		k.t.Fatalf("list IPAllocations: %d", code)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Addr().Less(l.Items[j].Addr()) })
	return l.Items
}

func allocSummary(al []kubeipam.Alloc) string {
	var out []string
	for _, a := range al {
		out = append(out, fmt.Sprintf("%s %s/%s %s %s", a.Spec.Address, a.Spec.Pod.Namespace, a.Spec.Pod.Name, a.Spec.Interface, a.Spec.ContainerID))
	}
	return strings.Join(out, "; ")
}

// pod creates a pod (labels, annotations, owner) and returns its UID.
func (k *kubeEnv) pod(ns, name string, labels, annotations map[string]string, owner string) string {
	k.t.Helper()
	return k.podWith(ns, name, labels, annotations, owner, "")
}

// podWith is pod, bound to a node unless node is "".
func (k *kubeEnv) podWith(ns, name string, labels, annotations map[string]string, owner, node string) string {
	k.t.Helper()
	if apiRequest(k.t, k.a, http.MethodGet, "/api/v1/namespaces/"+ns, nil, nil) == http.StatusNotFound {
		apiRequest(k.t, k.a, http.MethodPost, "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}, nil)
	}
	if apiRequest(k.t, k.a, http.MethodGet, "/api/v1/namespaces/"+ns+"/serviceaccounts/default", nil, nil) == http.StatusNotFound {
		apiRequest(k.t, k.a, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}}, nil)
	}
	meta := map[string]any{"name": name, "labels": labels, "annotations": annotations}
	if owner != "" {
		meta["ownerReferences"] = []map[string]any{{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "0d6f0000-0000-0000-0000-00000000000" + name[len(name)-1:], "controller": true}}
	}
	spec := map[string]any{"containers": []map[string]any{{"name": "c", "image": "pause"}}}
	if node != "" {
		spec["nodeName"] = node
	}
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
	var got struct {
		Metadata struct{ UID string } `json:"metadata"`
	}
	if code := apiRequest(k.t, k.a, http.MethodPost, "/api/v1/namespaces/"+ns+"/pods", pod, &got); code != http.StatusCreated {
		k.t.Fatalf("create pod %s/%s: %d", ns, name, code)
	}
	return got.Metadata.UID
}

func (k *kubeEnv) deletePod(ns, name string) {
	k.t.Helper()
	if code := apiRequest(k.t, k.a, http.MethodDelete, "/api/v1/namespaces/"+ns+"/pods/"+name+"?gracePeriodSeconds=0", nil, nil); code != http.StatusOK {
		k.t.Fatalf("delete pod %s/%s: %d", ns, name, code)
	}
}

// kubeRT is the runtime conf kubelet passes for a pod's sandbox.
func kubeRT(cid string, p interface{ Path() string }, ns, name, uid string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: cid, NetNS: p.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", uid}}}
}

// kubeConf: network red (eth0) draws from IPPools red-v4 and red-v6, blue
// from blue-v4, any (on blue's wire) from the cluster's default pools.
func (k *kubeEnv) kubeConf() *libcni.NetworkConfigList {
	n := k.topo.Nets
	return k.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"kube","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","networks":[
		{"name":"red","master":%q,"ipam":{"ippools":["red-v4","red-v6"]}},
		{"name":"blue","master":%q,"ipam":{"ippools":["blue-v4"]}},
		{"name":"any","master":%q,"ipam":{"backend":"kubernetes"}}]}]}`, k.dir, n[0].Uplink, n[1].Uplink, n[1].Uplink))
}

func (k *kubeEnv) pools() {
	n := k.topo.Nets
	k.createPool("red-v4", map[string]any{"subnet": n[0].Subnet4.String(), "gateway": n[0].GW4.String(),
		"ranges": []map[string]string{{"start": nth(n[0].Subnet4, 100).String(), "end": nth(n[0].Subnet4, 109).String()}}})
	k.createPool("red-v6", map[string]any{"subnet": n[0].Subnet6.String(), "gateway": n[0].GW6.String(),
		"ranges": []map[string]string{{"start": nth(n[0].Subnet6, 100).String(), "end": nth(n[0].Subnet6, 109).String()}}})
	k.createPool("blue-v4", map[string]any{"subnet": n[1].Subnet4.String(), "gateway": n[1].GW4.String(), "default": true,
		"ranges":  []map[string]string{{"start": nth(n[1].Subnet4, 100).String(), "end": nth(n[1].Subnet4, 104).String()}},
		"exclude": []string{nth(n[1].Subnet4, 100).String()}})
	k.createPool("tenant-v4", map[string]any{"subnet": n[0].Subnet4.String(), "gateway": n[0].GW4.String(),
		"ranges":            []map[string]string{{"start": nth(n[0].Subnet4, 120).String(), "end": nth(n[0].Subnet4, 121).String()}},
		"namespaceAffinity": map[string]any{"matchLabels": map[string]string{"tenant": "a"}}})
	// reserved: blue-v4's .101 and .102 (with the excluded .100, only .103
	// and .104 are handed out)
	rsv := map[string]any{"apiVersion": "spinneret.io/v1alpha1", "kind": "ReservedIP", "metadata": map[string]any{"name": "printers"},
		"spec": map[string]any{"addresses": []string{nth(n[1].Subnet4, 101).String(), nth(n[1].Subnet4, 102).String() + "/32"}}}
	if code := apiRequest(k.t, k.a, http.MethodPost, "/apis/spinneret.io/v1alpha1/reservedips", rsv, nil); code != http.StatusCreated {
		k.t.Fatalf("create ReservedIP: %d", code)
	}
}

// TestKubeIPAM drives the binary with the kubernetes IPAM backend against a
// real API server: addresses come from IPPools as IPAllocation objects (one
// per address, with pod, sandbox, interface and node), traffic flows, ADD
// is idempotent, DEL releases, reserved and excluded addresses are never
// handed out, and a failed ADD leaves no object.
func TestKubeIPAM(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	n := k.topo.Nets
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "blue@net1"}, "")
	rt := kubeRT("c1", p, "spin", "web", uid)
	r := k.mustAdd(l, rt)
	v4, v6, b4 := nicAddr(t, r, "eth0", true), nicAddr(t, r, "eth0", false), nicAddr(t, r, "net1", true)
	in := func(a netip.Addr, sub netip.Prefix, lo, hi int) bool {
		return !a.Less(nth(sub, lo)) && !nth(sub, hi).Less(a)
	}
	if !in(v4, n[0].Subnet4, 100, 109) || !in(v6, n[0].Subnet6, 100, 109) || !in(b4, n[1].Subnet4, 103, 104) {
		t.Fatalf("addresses %s %s %s: want red-v4, red-v6 and blue-v4 (.103 or .104: .100 excluded, .101-.102 reserved)", v4, v6, b4)
	}
	al := k.allocations()
	if len(al) != 3 {
		t.Fatalf("IPAllocations: %s", allocSummary(al))
	}
	for _, a := range al {
		if a.Spec.Pod.UID != uid || a.Spec.ContainerID != "c1" || a.Spec.Node != "node-a" || a.Spec.Pod.Name != "web" ||
			a.Metadata.Name != kubeipam.AllocName(a.Spec.Pool, a.Addr()) || a.Metadata.Labels[kubeipam.LabelPool] != a.Spec.Pool {
			t.Errorf("IPAllocation %+v", a)
		}
	}
	if err := p.PingFrom(v4, n[0].GW4, 5*time.Second); err != nil {
		t.Errorf("eth0 -> gateway: %v", err)
	}
	if err := p.PingFrom(b4, n[1].GW4, 5*time.Second); err != nil {
		t.Errorf("net1 -> gateway: %v", err)
	}
	k.mustDel(l, kubeRT("c1", p, "spin", "web", uid))
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after DEL: %s", allocSummary(al))
	}
	k.sameAs(before, p)

	// idempotency per (pod UID, interface): a new sandbox of the same pod,
	// while the old one's objects still exist (its DEL was lost), gets the
	// same addresses, recorded for the new sandbox; the old sandbox's late
	// DEL then frees nothing
	r = k.mustAdd(l, kubeRT("c2", p, "spin", "web", uid))
	first := allocSummary(k.allocations())
	// simulate a lost DEL: the pod netns is recreated, addresses kept
	p.Close()
	p, _ = k.topo.NewPod()
	r2 := k.mustAdd(l, kubeRT("c3", p, "spin", "web", uid))
	if nicAddr(t, r, "eth0", true) != nicAddr(t, r2, "eth0", true) || nicAddr(t, r, "net1", true) != nicAddr(t, r2, "net1", true) {
		t.Errorf("new sandbox of the same pod: %v, first %v", r2.IPs, r.IPs)
	}
	if got := allocSummary(k.allocations()); got != strings.ReplaceAll(first, " c2", " c3") {
		t.Errorf("after the new sandbox's ADD: %s, want %s with c3", got, first)
	}
	k.mustDel(l, kubeRT("c2", p, "spin", "web", uid))
	if got := len(k.allocations()); got != 3 {
		t.Fatalf("the old sandbox's late DEL freed the new one's addresses: %s", allocSummary(k.allocations()))
	}
	k.mustDel(l, kubeRT("c3", p, "spin", "web", uid))
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after DEL: %s", allocSummary(al))
	}
	before = k.snapshot(p)

	// a failed ADD (a plan step fails after allocation) leaves no object
	t.Setenv("SPINNERET_TEST_FAIL_STEP", "1")
	_, err := k.add(l, kubeRT("c4", p, "spin", "web", uid))
	os.Unsetenv("SPINNERET_TEST_FAIL_STEP")
	wantErr(t, err, cni.ErrStepFailed, "injected fault")
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after a failed ADD: %s", allocSummary(al))
	}
	k.sameAs(before, p)
}

// TestKubeIPAMStatic: a static address of the networks annotation
// ("ips") is created as asked; another pod asking for it is refused (400,
// in use), and so is a reserved one; a new sandbox of the pod, while the
// old one's object still exists (its DEL was lost), gets it back (the
// create's 409, then one read: it is the pod's own), recorded for the new
// sandbox, and the old sandbox's late DEL frees nothing.
func TestKubeIPAMStatic(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	n := k.topo.Nets
	static := func(i int) map[string]string {
		return map[string]string{"k8s.v1.cni.cncf.io/networks": fmt.Sprintf(`[{"name":"blue","interface":"net1","ips":["%s/%d"]}]`, nth(n[1].Subnet4, i), n[1].Subnet4.Bits())}
	}
	p, _ := k.topo.NewPod()
	uid := k.pod("spin", "fixed", nil, static(104), "")
	r := k.mustAdd(l, kubeRT("s1", p, "spin", "fixed", uid))
	if got := nicAddr(t, r, "net1", true); got != nth(n[1].Subnet4, 104) {
		t.Fatalf("net1 %s, want the static %s", got, nth(n[1].Subnet4, 104))
	}
	q, _ := k.topo.NewPod()
	other := k.pod("spin", "thief", nil, static(104), "")
	_, err := k.add(l, kubeRT("t1", q, "spin", "thief", other))
	wantErr(t, err, cni.ErrBadRequest, "in use")
	reserved := k.pod("spin", "printer", nil, static(101), "")
	_, err = k.add(l, kubeRT("t2", q, "spin", "printer", reserved))
	wantErr(t, err, cni.ErrBadRequest, "reserved")

	held := k.allocations()
	first := allocSummary(held)
	p.Close()
	p, _ = k.topo.NewPod() // the DEL of s1 was lost
	r2 := k.mustAdd(l, kubeRT("s2", p, "spin", "fixed", uid))
	if nicAddr(t, r2, "net1", true) != nth(n[1].Subnet4, 104) || nicAddr(t, r2, "eth0", true) != nicAddr(t, r, "eth0", true) {
		t.Errorf("new sandbox of the same pod: %v, first %v", r2.IPs, r.IPs)
	}
	if got := allocSummary(k.allocations()); got != strings.ReplaceAll(first, " s1", " s2") {
		t.Errorf("after the new sandbox's ADD: %s, want %s with s2", got, first)
	}
	k.mustDel(l, kubeRT("s1", p, "spin", "fixed", uid))
	if got := len(k.allocations()); got != len(held) {
		t.Fatalf("the old sandbox's late DEL freed the new one's addresses: %s", allocSummary(k.allocations()))
	}
	k.mustDel(l, kubeRT("s2", p, "spin", "fixed", uid))
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after DEL: %s", allocSummary(al))
	}
	// freed: the other pod may have it now
	k.mustAdd(l, kubeRT("t3", q, "spin", "thief", other))
}

// TestKubeIPAMSelection: the pools a NIC draws from are, in order, the
// pod's spinneret.io/ippools annotation, its namespace's default pools
// (first NIC), the network's ippools, the cluster's default pools; a pool
// whose namespace affinity does not admit the pod is refused with a reason,
// and a family without a free address is an exhausted pool.
func TestKubeIPAMSelection(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	n := k.topo.Nets
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)

	// the annotation names a pool the namespace is not admitted to
	uid := k.pod("spin", "a1", nil, map[string]string{"spinneret.io/ippools": `[{"interface":"eth0","ipv4":["tenant-v4"]}]`}, "")
	_, err := k.add(l, kubeRT("c1", p, "spin", "a1", uid))
	wantErr(t, err, cni.ErrBadRequest, `tenant-v4: namespace spin is not admitted`)
	uid = k.pod("spin", "a2", nil, map[string]string{"spinneret.io/ippools": `[{"interface":"eth0","ipv4":["nope"]}]`}, "")
	_, err = k.add(l, kubeRT("c1", p, "spin", "a2", uid))
	wantErr(t, err, cni.ErrBadRequest, `IPPool "nope" (from spinneret.io/ippools) does not exist`)
	k.sameAs(before, p)
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after refused ADDs: %s", allocSummary(al))
	}

	// a labelled namespace whose default pool is tenant-v4: eth0 comes from
	// it (IPv4 only: the namespace names no IPv6 pool)
	apiRequest(t, k.a, http.MethodPost, "/api/v1/namespaces", map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": "team", "labels": map[string]string{"tenant": "a"},
			"annotations": map[string]string{kubeipam.AnnotNSDefaultV4: `["tenant-v4"]`}}}, nil)
	uid = k.pod("team", "t1", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "any"}, "")
	r := k.mustAdd(l, kubeRT("t1", p, "team", "t1", uid))
	if got := nicAddr(t, r, "eth0", true); got != nth(n[0].Subnet4, 120) && got != nth(n[0].Subnet4, 121) {
		t.Errorf("eth0 %s: want tenant-v4 (the namespace's default)", got)
	}
	// network "any" names no pool: the cluster's default pool blue-v4
	if got := nicAddr(t, r, "net1", true); got != nth(n[1].Subnet4, 103) && got != nth(n[1].Subnet4, 104) {
		t.Errorf("net1 %s: want blue-v4 (the cluster's default pool)", got)
	}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() == nil {
			t.Errorf("IPv6 address %s: the namespace names IPv4 pools only", ip.Address.IP)
		}
	}
	// blue-v4 has two addresses to give (.103, .104): a second pod takes
	// the other, a third finds the pool exhausted and leaves nothing
	p2, _ := k.topo.NewPod()
	uid2 := k.pod("team", "t2", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "any"}, "")
	r2 := k.mustAdd(l, kubeRT("t2", p2, "team", "t2", uid2))
	if nicAddr(t, r2, "net1", true) == nicAddr(t, r, "net1", true) {
		t.Fatalf("two pods with %s", nicAddr(t, r, "net1", true))
	}
	p3, _ := k.topo.NewPod()
	before3 := k.snapshot(p3)
	held := allocSummary(k.allocations())
	uid3 := k.pod("spin", "t3", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "any"}, "")
	_, err = k.add(l, kubeRT("t3", p3, "spin", "t3", uid3))
	wantErr(t, err, cni.ErrPoolExhausted, `pool "blue-v4" is exhausted`)
	k.sameAs(before3, p3)
	if got := allocSummary(k.allocations()); got != held {
		t.Errorf("after an exhausted ADD: %s, want %s", got, held)
	}
	k.mustDel(l, kubeRT("t1", p, "team", "t1", uid))
	k.mustDel(l, kubeRT("t2", p2, "team", "t2", uid2))
	if al := k.allocations(); len(al) != 0 {
		t.Fatalf("after DEL: %s", allocSummary(al))
	}
}

// TestKubeIPAMStatefulSet: a StatefulSet pod keeps its address across
// re-creation (another UID, another sandbox); a stateless pod re-created
// under the same name gets a new one; neither old pod's late DEL frees the
// new pod's address.
func TestKubeIPAMStatefulSet(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	p, _ := k.topo.NewPod()

	uid := k.pod("spin", "db-0", nil, nil, "db")
	r := k.mustAdd(l, kubeRT("s1", p, "spin", "db-0", uid))
	addr := nicAddr(t, r, "eth0", true)
	k.mustDel(l, kubeRT("s1", p, "spin", "db-0", uid))
	if al := k.allocations(); len(al) != 2 {
		t.Fatalf("a StatefulSet pod's DEL keeps its addresses for its successor: %s", allocSummary(al))
	}
	k.deletePod("spin", "db-0")
	uid2 := k.pod("spin", "db-0", nil, nil, "db")
	r = k.mustAdd(l, kubeRT("s2", p, "spin", "db-0", uid2))
	if got := nicAddr(t, r, "eth0", true); got != addr {
		t.Fatalf("re-created db-0 got %s, had %s", got, addr)
	}
	for _, a := range k.allocations() {
		if a.Spec.Pod.UID != uid2 || a.Spec.ContainerID != "s2" || a.Metadata.Labels[kubeipam.LabelPodUID] != uid2 {
			t.Errorf("taken over allocation %+v", a)
		}
	}
	// the old pod's late DEL
	p.Close()
	p, _ = k.topo.NewPod()
	k.mustDel(l, kubeRT("s1", p, "spin", "db-0", uid))
	if al := k.allocations(); len(al) != 2 {
		t.Fatalf("old pod's late DEL: %s", allocSummary(al))
	}

	// stateless: same name, new UID, new address; old pod's DEL frees its own
	p2, _ := k.topo.NewPod()
	wuid := k.pod("spin", "web", nil, nil, "")
	r = k.mustAdd(l, kubeRT("w1", p2, "spin", "web", wuid))
	old := nicAddr(t, r, "eth0", true)
	k.deletePod("spin", "web")
	wuid2 := k.pod("spin", "web", nil, nil, "")
	p3, _ := k.topo.NewPod()
	r = k.mustAdd(l, kubeRT("w2", p3, "spin", "web", wuid2))
	if nicAddr(t, r, "eth0", true) == old {
		t.Fatalf("the re-created stateless pod got the old pod's %s, still held", old)
	}
	k.mustDel(l, kubeRT("w1", p2, "spin", "web", wuid))
	var left []string
	for _, a := range k.allocations() {
		left = append(left, a.Spec.Pod.Name+"/"+a.Spec.ContainerID)
	}
	sort.Strings(left)
	if want := []string{"db-0/s2", "db-0/s2", "web/w2", "web/w2"}; !slices.Equal(left, want) {
		t.Fatalf("after the old web's DEL: %v, want %v", left, want)
	}
}

// TestKubeIPAMAPIDown: with the API server down, ADD fails within its
// timeout and leaves nothing; DEL succeeds from the node's journal and
// leaves the release to the controller's GC.
func TestKubeIPAMAPIDown(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, nil, "")
	if err := k.status(l); err != nil {
		t.Fatalf("STATUS with the API server up: %v", err)
	}
	k.mustAdd(l, kubeRT("c1", p, "spin", "web", uid))
	k.a.StopAPIServer()
	// STATUS says the primary network cannot get addresses now
	wantErr(t, k.status(l), 50, "takes its addresses from the kubernetes backend")
	k.mustDel(l, kubeRT("c1", p, "spin", "web", uid))
	k.sameAs(before, p)
	start := time.Now()
	_, err := k.add(l, kubeRT("c2", p, "spin", "web", uid))
	wantErr(t, err, 11, "API server unreachable")
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("ADD with the API server down took %s (timeout 2s)", d)
	}
	k.sameAs(before, p)
	if err := k.a.Restart(); err != nil {
		t.Fatal(err)
	}
	if al := k.allocations(); len(al) != 2 {
		t.Fatalf("the release is left to GC: %s", allocSummary(al))
	}
}

// TestKubeIPAMQuarantine: with detectIPConflict, an address another host
// answers for is quarantined on its IPAllocation (no pod, no sandbox: no
// DEL frees it), the next ADD gets another address, a pool whose addresses
// are all quarantined is exhausted, and once the quarantine is over the
// address is handed out again.
func TestKubeIPAMQuarantine(t *testing.T) {
	k := newKubeEnv(t)
	n := k.topo.Nets[0]
	a1, a2 := nth(n.Subnet4, 130), nth(n.Subnet4, 131)
	k.createPool("q-v4", map[string]any{"subnet": n.Subnet4.String(), "gateway": n.GW4.String(),
		"ranges": []map[string]string{{"start": a1.String(), "end": a2.String()}}})
	squatter, err := k.topo.AddHost(0, netip.PrefixFrom(a1, 24), netip.PrefixFrom(a2, 24))
	if err != nil {
		t.Fatal(err)
	}
	l := k.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"kube","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","networks":[
		{"name":"q","master":%q,"ipam":{"ippools":["q-v4"]},
		 "coordinator":{"detectIPConflict":true,"detectOptions":{"retries":2,"timeout":"200ms","quarantine":"3s"}}}]}]}`, k.dir, n.Uplink))
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, nil, "")
	quarantined := func() []string {
		var out []string
		for _, a := range k.allocations() {
			if a.Spec.QuarantinedUntil != nil && a.Spec.ContainerID == "" && a.Metadata.Labels["spinneret.io/pod-uid"] == "" {
				out = append(out, a.Spec.Address)
			}
		}
		return out
	}
	for i, want := range []int{1, 2} {
		_, err := k.add(l, kubeRT(fmt.Sprintf("c%d", i), p, "spin", "web", uid))
		wantErr(t, err, cni.ErrIPConflict, "quarantined for 3s")
		if q := quarantined(); len(q) != want || len(k.allocations()) != want {
			t.Fatalf("after conflict %d: quarantined %v of %s", i+1, q, allocSummary(k.allocations()))
		}
		k.mustDel(l, kubeRT(fmt.Sprintf("c%d", i), p, "spin", "web", uid))
		if q := quarantined(); len(q) != want {
			t.Fatalf("DEL freed a quarantined address: %v", q)
		}
	}
	k.sameAs(before, p)
	_, err = k.add(l, kubeRT("c3", p, "spin", "web", uid))
	wantErr(t, err, cni.ErrPoolExhausted, `pool "q-v4" is exhausted`)
	// the squatter leaves; once the quarantine is over, the address is
	// handed out again (its quarantine object deleted first)
	squatter.Close()
	time.Sleep(3 * time.Second)
	r := k.mustAdd(l, kubeRT("c4", p, "spin", "web", uid))
	got := nicAddr(t, r, "eth0", true)
	if got != a1 && got != a2 {
		t.Fatalf("after the quarantine: %s", got)
	}
	if err := p.PingFrom(got, n.GW4, 5*time.Second); err != nil {
		t.Errorf("ping gateway: %v", err)
	}
	k.mustDel(l, kubeRT("c4", p, "spin", "web", uid))
	if q := quarantined(); len(q) != 1 || len(k.allocations()) != 1 {
		t.Fatalf("after DEL: %s", allocSummary(k.allocations()))
	}
}

// TestKubeIPAMCrash: an ADD killed right after it created an IPAllocation
// (before any journal: DEL finds the object by the pod's UID and the
// sandbox) or after journaling a plan step (DEL deletes what the journal
// records) leaves nothing once DEL ran.
func TestKubeIPAMCrash(t *testing.T) {
	k := newKubeEnv(t)
	k.pools()
	l := k.kubeConf()
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	uid := k.pod("spin", "web", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "blue@net1"}, "")
	for _, kill := range [][2]string{{"SPINNERET_TEST_KILL_AT", "kube-created"}, {"SPINNERET_TEST_KILL_STEP", "0"}, {"SPINNERET_TEST_KILL_STEP", "6"}} {
		t.Setenv(kill[0], kill[1])
		rt := kubeRT("k-"+kill[1], p, "spin", "web", uid)
		if _, err := k.add(l, rt); err == nil {
			t.Fatalf("%s=%s: ADD survived", kill[0], kill[1])
		}
		os.Unsetenv(kill[0])
		if len(k.allocations()) == 0 {
			t.Fatalf("%s=%s: no allocation was made before the kill", kill[0], kill[1])
		}
		k.mustDel(l, rt)
		if al := k.allocations(); len(al) != 0 {
			t.Fatalf("%s=%s: after DEL: %s", kill[0], kill[1], allocSummary(al))
		}
		k.sameAs(before, p)
	}
}
