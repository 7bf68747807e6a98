package tests

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// ptpConflist is a stand-in for a cluster's existing CNI (Calico's shape:
// a point-to-point veth to the node, host-local addresses, portmap) with
// its host-local state under dir.
func ptpConflist(dir string) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
		{"type":"ptp","ipMasq":false,"mtu":1400,"ipam":{"type":"host-local","dataDir":%q,
			"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:244:1::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
		{"type":"portmap","capabilities":{"portMappings":true},"snat":false}]}`, filepath.Join(dir, "host-local"))
}

// TestDelegateNetOp: the delegate step runs a conflist of the reference
// plugins through libcni for eth0 (from the node's namespace, as the
// plugin would): its result has eth0's addresses, the pod reaches the node
// through the delegate's veth, CHECK passes, and its undo (the conflist's
// DEL, from the journaled bytes even once the file is gone) leaves the
// node, the pod and the delegate's IPAM store as before; a second undo
// succeeds too.
func TestDelegateNetOp(t *testing.T) {
	e := newEnv(t)
	p, _ := e.topo.NewPod()
	// a node running a CNI forwards (ptp turns it on: IPv6 forwarding
	// adds subnet-router anycast routes to every link of the node)
	if err := e.topo.Node.Do(func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before := kernel(t, e.topo.Node, p)
	file := filepath.Join(e.dir, "10-ptp.conflist")
	if err := os.WriteFile(file, []byte(ptpConflist(e.dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	op := &drivers.DelegateNet{File: file, Conflist: b, CNIPath: binDir, CacheDir: filepath.Join(e.dir, "delegate-cache"),
		ContainerID: "c1", NetNS: p.Path(), IfName: "eth0", Args: [][2]string{{"K8S_POD_NAME", "web"}, {"IgnoreUnknown", "1"}}}
	var err error
	var addrs []netip.Addr
	err = e.topo.Node.Do(func() error {
		r, err := op.Add(context.Background())
		if err != nil {
			return err
		}
		for _, ip := range r.IPs {
			a, _ := netip.AddrFromSlice(ip.Address.IP)
			addrs = append(addrs, a.Unmap())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("delegate ADD: %v", err)
	}
	if len(addrs) != 2 || !netip.MustParsePrefix("10.244.1.0/24").Contains(addrs[0]) || !netip.MustParsePrefix("fd00:244:1::/64").Contains(addrs[1]) {
		t.Fatalf("delegate result addresses %v", addrs)
	}
	if l, err := p.NL().LinkByName("eth0"); err != nil || l.Type() != "veth" {
		t.Fatalf("eth0 in the pod: %v", err)
	}
	// the node reaches the pod through the delegate's veth
	if err := e.topo.Node.Ping(addrs[0], 5*time.Second); err != nil {
		t.Errorf("node -> pod's eth0: %v", err)
	}
	if err := e.topo.Node.Do(func() error { return op.Check(nil) }); err != nil {
		t.Errorf("delegate CHECK: %v", err)
	}
	held, _ := os.ReadDir(filepath.Join(e.dir, "host-local", "k8s-pod-network"))
	if len(held) < 2 {
		t.Errorf("host-local holds %d files", len(held))
	}
	os.Remove(file) // DEL runs from the journaled bytes
	for i := range 2 {
		if err := e.topo.Node.Do(func() error { return op.Undo(&txn.Env{}) }); err != nil {
			t.Fatalf("delegate DEL %d: %v", i+1, err)
		}
	}
	if after := kernel(t, e.topo.Node, p); after != before {
		t.Errorf("after the delegate's DEL:\n%s", netlab.Diff(before, after))
	}
	ents, _ := os.ReadDir(filepath.Join(e.dir, "host-local", "k8s-pod-network"))
	for _, x := range ents {
		if !strings.HasPrefix(x.Name(), "last_reserved_ip") && x.Name() != "lock" {
			t.Errorf("host-local still holds %s", x.Name())
		}
	}
}
