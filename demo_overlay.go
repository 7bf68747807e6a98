package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// The demo's overlay scene: the cluster's existing CNI is a stand-in (the
// reference ptp plugin with host-local, as Calico makes eth0: a veth to
// the node, a /32 route), named by a delegate network; net1 is spinneret's
// macvlan on the storage network. Pod and service CIDRs as a cluster's.
const (
	demoPodCIDR4 = "10.244.0.0/16"
	demoPodCIDR6 = "fd00:244::/32"
)

const demoPtpConflist = `{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1400, "ipam": {"type": "host-local", "dataDir": "%[1]s/host-local",
    "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:1::/64"}]], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]}`

const demoOverlayConfList = `{
  "cniVersion": "1.1.0",
  "name": "spinneret-overlay",
  "plugins": [{
    "type": "spinneret",
    "nodeConf": "%[1]s/node.yaml",
    "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true},
    "coordinator": {"mode": "auto", "serviceCIDR": ["%[2]s", "%[3]s"], "podCIDR": ["%[4]s", "%[5]s"]},
    "networks": [
      {"name": "pods", "delegate": {"conflist": "%[1]s/10-ptp.conflist"}},
      {"name": "storage", "master": "storage", "ipam": {"pools": [
        {"name": "storage-v4", "subnet": "198.51.100.0/24", "ranges": [{"start": "198.51.100.100", "end": "198.51.100.199"}], "gateway": "198.51.100.1"},
        {"name": "storage-v6", "subnet": "2001:db8:0:2::/64", "ranges": [{"start": "2001:db8:0:2::100", "end": "2001:db8:0:2::1ff"}], "gateway": "2001:db8:0:2::1"}]}}
    ]
  }]
}`

// overlay runs the overlay scene on the underlay scene's topology: pod3's
// eth0 from the delegate, net1 on storage. It returns how many checks
// failed.
func (d *demo) overlay(ctx context.Context, binDir string, storage *netlab.Net) (int, error) {
	d.step("overlay: eth0 from the cluster's CNI (the reference ptp plugin, a delegate network), net1 macvlan on storage")
	if err := os.WriteFile(filepath.Join(d.dir, "10-ptp.conflist"), []byte(fmt.Sprintf(demoPtpConflist, d.dir)), 0o600); err != nil {
		return 0, err
	}
	list, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(demoOverlayConfList, d.dir, netlab.ServiceCIDR4, netlab.ServiceCIDR6, demoPodCIDR4, demoPodCIDR6)))
	if err != nil {
		return 0, err
	}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(d.dir, "cache"), nil)
	// a node running a CNI forwards (ptp would turn it on itself, and the
	// kernel then adds the uplinks' anycast routes): before the snapshot
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := d.topo.Node.Sysctl(k, "1"); err != nil {
			return 0, err
		}
	}
	nodeBefore, err := d.topo.Node.Dump()
	if err != nil {
		return 0, err
	}
	pod, err := d.topo.NewPod()
	if err != nil {
		return 0, err
	}
	ann := map[string]string{"k8s.v1.cni.cncf.io/networks": "storage"}
	rt := &libcni.RuntimeConf{ContainerID: "demo-pod-3", NetNS: pod.Path(), IfName: "eth0",
		Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod3"}},
		CapabilityArgs: map[string]any{"io.kubernetes.cri.pod-annotations": ann}}
	d.step("ADD pod3 (netns %s, annotations %v)", pod.Name, ann)
	start := time.Now()
	var r *current.Result
	err = d.topo.Node.Do(func() error {
		res, err := cfg.AddNetworkList(ctx, list, rt)
		if err == nil {
			r, err = current.NewResultFromResult(res)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ADD pod3: %w", err)
	}
	fmt.Fprintf(d.out, "ADD took %s\n", time.Since(start).Round(time.Millisecond))
	show, err := pod.Show()
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(d.out, "pod3 now has (table 100: eth0's routes, for replies from eth0's addresses; net1's table: the node and the cluster's CIDRs via eth0):\n%s\n", show)

	d.step("overlay connectivity")
	failed := 0
	mark := func(err error) string {
		if err != nil {
			failed++
			return "FAIL"
		}
		return "ok  "
	}
	nic := func(ifname string, v4 bool) netip.Addr { return nicAddr(r, ifname, v4) }
	for _, v4 := range []bool{true, false} {
		pick := func(a4, a6 netip.Addr) netip.Addr {
			if v4 {
				return a4
			}
			return a6
		}
		for _, c := range []struct {
			what string
			dst  netip.Addr
		}{{"node", pick(netlab.NodeIP4, netlab.NodeIP6)}, {"service", pick(netlab.ServiceIP4, netlab.ServiceIP6)}} {
			err := viaLink(pod, "eth0", func() error { return pod.Ping(c.dst, 3*time.Second) })
			fmt.Fprintf(d.out, "  %s pod3 -> %-8s %s (over eth0)\n", mark(err), c.what, c.dst)
		}
		src, gw := nic("net1", v4), pick(storage.GW4, storage.GW6)
		err := viaLink(pod, "net1", func() error { return pod.PingFrom(src, gw, 3*time.Second) })
		fmt.Fprintf(d.out, "  %s pod3 -> %-8s %s (from net1's %s, over net1)\n", mark(err), "storage", gw, src)
		for _, ifname := range []string{"eth0", "net1"} {
			a := nic(ifname, v4)
			err := viaLink(pod, "eth0", func() error { return d.topo.Node.Ping(a, 3*time.Second) })
			fmt.Fprintf(d.out, "  %s node -> pod3's %s %s (answered over eth0)\n", mark(err), ifname, a)
		}
	}
	err = d.topo.Node.Do(func() error { return cfg.CheckNetworkList(ctx, list, rt) })
	fmt.Fprintf(d.out, "  CHECK pod3 (the delegate's and spinneret's): %s\n", okOr(err))
	if err != nil {
		failed++
	}
	err = d.topo.Node.Do(func() error { return cfg.GetStatusNetworkList(ctx, list) })
	fmt.Fprintf(d.out, "  STATUS (the delegate's included): %s\n", okOr(err))

	d.step("DEL pod3 (spinneret's NICs, then the delegate's DEL)")
	if err := d.topo.Node.Do(func() error { return cfg.DelNetworkList(ctx, list, rt) }); err != nil {
		return failed, fmt.Errorf("DEL pod3: %w", err)
	}
	nodeAfter, err := d.topo.Node.Dump()
	if err != nil {
		return failed, err
	}
	clean := nodeAfter == nodeBefore
	var held []string
	ents, _ := os.ReadDir(filepath.Join(d.dir, "host-local", "k8s-pod-network"))
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			held = append(held, e.Name())
		}
	}
	fmt.Fprintf(d.out, "node namespace identical to before ADD: %v; addresses the delegate still holds: %d\n", clean, len(held))
	if !clean {
		fmt.Fprintln(d.out, netlab.Diff(nodeBefore, nodeAfter))
	}
	if !clean || len(held) > 0 {
		failed++
	}
	return failed, nil
}

// viaLink runs fn and fails unless the pod's link sent a packet meanwhile.
func viaLink(pod *netlab.NS, link string, fn func() error) error {
	before, err := pod.TxPackets(link)
	if err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	if after, _ := pod.TxPackets(link); after == before {
		return fmt.Errorf("nothing left by %s", link)
	}
	return nil
}
