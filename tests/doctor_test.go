package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/spinneret-cni/spinneret/doctor"
	"github.com/spinneret-cni/spinneret/request"
)

// runDoctor runs `spinneret doctor --output json` (and the text report)
// in the node's namespace; it returns the report and the exit code.
func (e *env) runDoctor(args ...string) (*doctor.Report, int, string) {
	e.t.Helper()
	var out, text []byte
	code := 0
	err := e.topo.Node.Do(func() error {
		var err error
		out, err = exec.Command(filepath.Join(binDir, "spinneret"), append([]string{"doctor", "--output", "json"}, args...)...).Output()
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
			err = nil
		}
		text, _ = exec.Command(filepath.Join(binDir, "spinneret"), append([]string{"doctor"}, args...)...).Output()
		return err
	})
	if err != nil {
		e.t.Fatalf("doctor: %v\n%s", err, out)
	}
	var r doctor.Report
	if err := json.Unmarshal(out, &r); err != nil {
		e.t.Fatalf("doctor --output json: %v\n%s", err, out)
	}
	return &r, code, string(text)
}

// finding is the report's finding of check whose subject is subj, or
// else contains it.
func finding(r *doctor.Report, check, subj string) *doctor.Finding {
	for i, f := range r.Findings {
		if f.Check == check && f.Subject == subj {
			return &r.Findings[i]
		}
	}
	for i, f := range r.Findings {
		if f.Check == check && strings.Contains(f.Subject, subj) {
			return &r.Findings[i]
		}
	}
	return nil
}

// TestDoctor: spinneret doctor on a healthy node (exit 0, every check
// ok, with the masters' drivers) and on a broken one (exit 1): a master
// missing, one down, one without carrier, one not allowed; forwarding off;
// the host rule removed under a pod's routes; an attachment whose sandbox
// the runtime no longer has; a runtime (containerd 1.6, over the CRI)
// that cannot take the conflist's CNI version; NetworkManager and
// systemd-networkd set to manage spinneret's veths; and, against the real
// API server, Cilium's cni.exclusive, a stale controller Lease, overlapping
// pools, a pool holding the node's address, Node and CiliumNode pod CIDRs
// that disagree, and kubeadm-config's service subnet against the
// ServiceCIDRs. Each finding names its fix.
func TestDoctor(t *testing.T) {
	k := newKubeEnv(t)
	e := k.env
	e.forwarding()
	for key, v := range map[string]string{"net/ipv4/conf/all/arp_notify": "1", "net/ipv4/neigh/default/gc_thresh3": "28160", "net/ipv4/conf/all/rp_filter": "0"} {
		e.topo.Node.Sysctl(key, v)
	}
	cri, endpoint := startCRI(t, e.dir)
	l := e.multiConf(v4, "")
	conflist := filepath.Join(e.dir, "00-spinneret.conflist")
	os.WriteFile(conflist, l.Bytes, 0o644)
	root := t.TempDir()
	p, _ := e.topo.NewPod()
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue"})
	e.mustAdd(l, rt)
	cri.set("c1")
	cri.status = map[string]string{"lastCNILoadStatus": "OK",
		"cniconfig": `{"Networks":[{"Config":{"Name":"cni-loopback","CNIVersion":"0.3.1"},"IFName":"lo"},{"Config":{"Name":"multi","CNIVersion":"1.1.0"},"IFName":"eth"}]}`}
	// the conflist's cniVersion 1.1.0 is what a containerd 1.6 refuses;
	// the healthy node's runtime is a containerd 2
	setVersion := func(v string) {
		cri.mu.Lock()
		defer cri.mu.Unlock()
		cri.version = &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: v, RuntimeApiVersion: "v1"}
	}
	setVersion("2.1.4")
	args := []string{"--conflist", conflist, "--runtime-endpoint", endpoint, "--kubeconfig", k.a.Kubeconfig, "--root", root}

	// healthy
	k.createPool("red-v4", map[string]any{"subnet": "192.0.2.0/24", "ranges": []map[string]any{{"start": "192.0.2.10", "end": "192.0.2.60"}}})
	k.createPool("blue-v4", map[string]any{"subnet": "198.51.100.0/24"})
	lease := map[string]any{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": map[string]any{"name": "spinneret-controller", "namespace": "kube-system"},
		"spec": map[string]any{"holderIdentity": "ctl-0", "renewTime": time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), "leaseDurationSeconds": 15}}
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", lease, nil); code != http.StatusCreated {
		t.Fatalf("create Lease: %d", code)
	}
	r, code, text := e.runDoctor(args...)
	t.Logf("doctor on a healthy node:\n%s", text)
	if code != 0 || r.Failed() {
		t.Fatalf("healthy node: exit %d\n%s", code, text)
	}
	for _, c := range [][2]string{{"conflist", ""}, {"node conf", ""}, {"master", "uplink0"}, {"master", "uplink1"}, {"master", "uplink2"},
		{"sysctl", "ip_forward"}, {"host rule", ""}, {"attachments", ""}, {"runtime", "containerd 2.1.4"}, {"cilium", ""}, {"controller", ""}, {"pools", ""}} {
		if f := finding(r, c[0], c[1]); f == nil || f.Status != doctor.OK {
			t.Errorf("healthy node: %s %s: %+v", c[0], c[1], f)
		}
	}
	if f := finding(r, "master", "uplink0"); f != nil && !strings.Contains(f.Message, "driver veth") {
		t.Errorf("the master's driver (ethtool): %s", f.Message)
	}

	// broken
	nc, _ := os.ReadFile(filepath.Join(e.dir, "node.yaml"))
	os.WriteFile(filepath.Join(e.dir, "node.yaml"), append(nc, "allowedMasters: [uplink0, uplink1, uplink2, nosuch0]\n"...), 0o644)
	bad := strings.Replace(string(l.Bytes), `"networks":[`, `"networks":[{"name":"ghost","master":"nosuch0","ipam":{"pools":[{"name":"g","subnet":"203.0.113.0/28"}]}},{"name":"banned","master":"lo","ipam":{"pools":[{"name":"b","subnet":"203.0.113.16/28"}]}},`, 1)
	os.WriteFile(conflist, []byte(bad), 0o644)
	setVersion("1.6.20")
	up1, _ := e.topo.Node.NL().LinkByName("uplink1")
	e.topo.Node.NL().LinkSetDown(up1)
	defer e.topo.Node.NL().LinkSetUp(up1)
	peer, err := e.topo.Nets[2].Switch.NL().LinkByName("port-node") // uplink2's other end
	if err != nil {
		t.Fatal(err)
	}
	e.topo.Nets[2].Switch.NL().LinkSetDown(peer)
	e.topo.Node.Sysctl("net/ipv4/ip_forward", "0")
	rules, _ := e.topo.Node.NL().RuleList(netlink.FAMILY_V4)
	for _, rl := range rules {
		if rl.Priority == 1000 {
			e.topo.Node.NL().RuleDel(&rl)
		}
	}
	cri.set() // the runtime lost c1
	os.MkdirAll(filepath.Join(root, "etc/NetworkManager"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/NetworkManager/NetworkManager.conf"), []byte("[main]\nplugins=keyfile\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "etc/systemd/network"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/systemd/network/99-all.network"), []byte("[Match]\nName=*\n\n[Network]\nDHCP=yes\n"), 0o644)
	for _, obj := range []struct {
		path string
		body map[string]any
	}{
		{"/api/v1/namespaces/kube-system/configmaps", map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "cilium-config"}, "data": map[string]string{"cni-exclusive": "true"}}},
		{"/api/v1/namespaces/kube-system/configmaps", map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "kubeadm-config"},
			"data": map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  serviceSubnet: 10.112.0.0/12\n"}}},
	} {
		if code := apiRequest(t, k.a, http.MethodPost, obj.path, obj.body, nil); code != http.StatusCreated {
			t.Fatalf("create %s: %d", obj.path, code)
		}
	}
	k.createPool("red-wide", map[string]any{"subnet": "192.0.0.0/22"}) // overlaps red-v4, holds the node's 192.0.2.2
	lease["spec"].(map[string]any)["renewTime"] = time.Now().Add(-10 * time.Minute).UTC().Format("2006-01-02T15:04:05.000000Z")
	var cur map[string]any
	apiRequest(t, k.a, http.MethodGet, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/spinneret-controller", nil, &cur)
	cur["spec"] = lease["spec"]
	apiRequest(t, k.a, http.MethodPut, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/spinneret-controller", cur, nil)
	ciliumNode(t, k, "node-a", []string{"10.244.1.0/24"}, []string{"10.0.7.0/24"})

	r, code, text = e.runDoctor(args...)
	t.Logf("doctor on a broken node:\n%s", text)
	if code != 1 || !r.Failed() {
		t.Fatalf("broken node: exit %d, want 1", code)
	}
	for _, c := range []struct {
		check, subj string
		status      doctor.Status
		msg         string
	}{
		{"master", "nosuch0", doctor.Fail, "no such interface"},
		{"master", "uplink1", doctor.Fail, "down"},
		{"master", "uplink2", doctor.Fail, "no carrier"},
		{"master", "network banned", doctor.Fail, "allowedMasters"},
		{"sysctl", "ip_forward", doctor.Fail, "0"},
		{"host rule", "1000", doctor.Fail, "missing"},
		{"attachments", "", doctor.Warn, "c1/eth0"},
		{"runtime", "containerd 1.6.20", doctor.Fail, "accepts results up to 1.0.0"},
		{"network manager", "NetworkManager", doctor.Warn, "spn*"},
		{"network manager", "99-all.network", doctor.Warn, "Name=*"},
		{"cilium", "cni-exclusive", doctor.Fail, "true"},
		{"controller", "lease", doctor.Fail, "no replica leads"},
		{"pools", "red-v4, red-wide", doctor.Fail, "overlap"},
		{"pools", "red-wide", doctor.Warn, "192.0.2.2"},
		{"pod CIDRs", "node-a", doctor.Warn, "CiliumNode"},
		{"service CIDRs", "", doctor.Warn, "10.112.0.0/12"},
	} {
		f := finding(r, c.check, c.subj)
		if f == nil || f.Status != c.status || !strings.Contains(f.Message, c.msg) || f.Fix == "" {
			t.Errorf("broken node: %s %s: %+v, want %s with %q and a fix", c.check, c.subj, f, c.status, c.msg)
		}
	}
	// what it checked, it left as it was
	e.topo.Node.Sysctl("net/ipv4/ip_forward", "1")
	e.topo.Node.NL().LinkSetUp(up1)
	e.topo.Nets[2].Switch.NL().LinkSetUp(peer)
	os.WriteFile(conflist, l.Bytes, 0o644)
	e.mustDel(l, rt)
}

// ciliumNode makes node a Node with pod CIDRs nodeCIDRs and a CiliumNode
// (its CRD reduced to what the test needs) whose IPAM has ciliumCIDRs.
func ciliumNode(t *testing.T, k *kubeEnv, node string, nodeCIDRs, ciliumCIDRs []string) {
	t.Helper()
	n := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": node}, "spec": map[string]any{"podCIDRs": nodeCIDRs, "podCIDR": nodeCIDRs[0]}}
	if code := apiRequest(t, k.a, http.MethodPost, "/api/v1/nodes", n, nil); code != http.StatusCreated {
		t.Fatalf("create Node %s: %d", node, code)
	}
	crd := map[string]any{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": map[string]any{"name": "ciliumnodes.cilium.io"},
		"spec": map[string]any{"group": "cilium.io", "scope": "Cluster",
			"names":    map[string]any{"plural": "ciliumnodes", "singular": "ciliumnode", "kind": "CiliumNode"},
			"versions": []map[string]any{{"name": "v2", "served": true, "storage": true, "schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, nil); code != http.StatusCreated {
		t.Fatalf("create the CiliumNode CRD: %d", code)
	}
	cn := map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": map[string]any{"name": node}, "spec": map[string]any{"ipam": map[string]any{"podCIDRs": ciliumCIDRs}}}
	eventually(t, 30*time.Second, "a CiliumNode created", func() (bool, string) {
		code := apiRequest(t, k.a, http.MethodPost, "/apis/cilium.io/v2/ciliumnodes", cn, nil)
		return code == http.StatusCreated, fmt.Sprint(code)
	})
}
