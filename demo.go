package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/statedir"
)

const demoNodeConf = `# the demo's node conf: state and log in a temp dir, the logical masters
# mapped to the node namespace's uplinks
stateDir: %[1]s/state
logFile: %[1]s/spinneret.log
logLevel: debug
masters:
  uplink: %[2]s
  storage: %[3]s
allowedMasters: [%[2]s, %[3]s]
`

// demoConfList is a catalogue of two networks (the primary "underlay" and
// "storage"); the node serves a stand-in ClusterIP inside serviceCIDR.
const demoConfList = `{
  "cniVersion": "1.1.0",
  "name": "spinneret",
  "plugins": [{
    "type": "spinneret",
    "nodeConf": "%[1]s/node.yaml",
    "capabilities": {"io.kubernetes.cri.pod-annotations": true},
    "coordinator": {"serviceCIDR": ["%[2]s", "%[3]s"]},
    "networks": [
      {"name": "underlay", "master": "uplink", "ipam": {"pools": [
        {"name": "underlay-v4", "subnet": "192.0.2.0/24", "ranges": [{"start": "192.0.2.10", "end": "192.0.2.99"}], "gateway": "192.0.2.1"},
        {"name": "underlay-v6", "subnet": "2001:db8:0:1::/64", "ranges": [{"start": "2001:db8:0:1::10", "end": "2001:db8:0:1::ff"}], "gateway": "2001:db8:0:1::1"}]}},
      {"name": "storage", "master": "storage", "ipam": {"pools": [
        {"name": "storage-v4", "subnet": "198.51.100.0/24", "ranges": [{"start": "198.51.100.10", "end": "198.51.100.99"}], "gateway": "198.51.100.1"},
        {"name": "storage-v6", "subnet": "2001:db8:0:2::/64", "ranges": [{"start": "2001:db8:0:2::10", "end": "2001:db8:0:2::ff"}], "gateway": "2001:db8:0:2::1"}]}}
    ],
    "dns": {"nameservers": ["198.19.0.53"], "search": ["demo.svc.cluster.local"]}
  }]
}`

func runDemo(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stdout)
	plugins := fs.String("plugins", "", "a directory with the reference ptp and host-local plugins, for the overlay scene (make demo builds them)")
	fs.Usage = func() {
		fmt.Fprintln(stdout, `usage: spinneret demo

Builds throwaway network namespaces (two L2 networks, each a switch with a
gateway; a node with an uplink to each; two pods), runs ADD for both pods
through this binary via libcni (pod1 asks for a second NIC on the "storage"
network through its annotation), prints their addresses, routes and rules,
checks traffic over IPv4 and IPv6 (pod to pod, pod to gateway, pod to node
and to a ClusterIP stand-in through veth0, node to pod, storage traffic
from net1), runs CHECK and STATUS, then DEL, and shows that the node and the
pods are clean. With -plugins, an overlay scene follows: pod3's eth0 from
the reference ptp plugin (a stand-in for Calico, run as spinneret's
delegate network), net1 macvlan on storage, coordinator mode overlay.
Needs root. The machine's own namespace is never touched; Ctrl-C cleans up.

flags:`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (it creates network namespaces)")
	}
	// Ctrl-C cancels ctx: the running plugin call is killed, the demo stops
	// at its next step, and cleanup removes every namespace and file it made
	// (the plugin only ever touched the demo's node and pod namespaces).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *plugins != "" {
		abs, err := filepath.Abs(*plugins)
		if err != nil {
			return err
		}
		*plugins = abs
	}
	d := &demo{out: stdout, plugins: *plugins}
	err := d.run(ctx)
	d.cleanup()
	if ctx.Err() != nil {
		fmt.Fprintln(stdout, "\ninterrupted: namespaces and state removed")
		os.Exit(130)
	}
	return err
}

type demo struct {
	out     io.Writer
	topo    *netlab.Topology
	dir     string
	plugins string // the reference plugins, for the overlay scene
}

func (d *demo) cleanup() {
	if d.topo != nil {
		d.topo.Close()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

func (d *demo) step(format string, a ...any) { fmt.Fprintf(d.out, "\n== "+format+"\n", a...) }

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.dir, err = os.MkdirTemp("", "spinneret-demo-"); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir := filepath.Join(d.dir, "bin")
	os.MkdirAll(binDir, 0o755)
	if err := os.Symlink(self, filepath.Join(binDir, "spinneret")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, "node.yaml"), []byte(fmt.Sprintf(demoNodeConf, d.dir, netlab.Uplink, "uplink1")), 0o644); err != nil {
		return err
	}
	list, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(demoConfList, d.dir, netlab.ServiceCIDR4, netlab.ServiceCIDR6)))
	if err != nil {
		return err
	}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(d.dir, "cache"), nil)

	d.step("topology: node %s/%s; networks underlay (gateway %s) and storage; ClusterIP stand-in %s on the node", netlab.NodeIP4, netlab.NodeIP6, netlab.Gateway4, netlab.ServiceIP4)
	if d.topo, err = netlab.NewTopology("spndemo"); err != nil {
		return err
	}
	storage, err := d.topo.AddNet()
	if err != nil {
		return err
	}
	nodeBefore, err := d.topo.Node.Dump()
	if err != nil {
		return err
	}
	pods := make([]*netlab.NS, 2)
	results := make([]*current.Result, 2)
	for i := range pods {
		if pods[i], err = d.topo.NewPod(); err != nil {
			return err
		}
	}
	annotations := []map[string]string{{"k8s.v1.cni.cncf.io/networks": "storage"}, {}}
	rt := func(i int) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{ContainerID: fmt.Sprintf("demo-pod-%d", i+1), NetNS: pods[i].Path(), IfName: "eth0",
			Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", fmt.Sprintf("pod%d", i+1)}},
			CapabilityArgs: map[string]interface{}{"io.kubernetes.cri.pod-annotations": annotations[i]}}
	}
	for i, p := range pods {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.step("ADD pod%d (netns %s, annotations %v)", i+1, p.Name, annotations[i])
		start := time.Now()
		err := d.topo.Node.Do(func() error {
			res, err := cfg.AddNetworkList(ctx, list, rt(i))
			if err == nil {
				results[i], err = current.NewResultFromResult(res)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("ADD pod%d: %w", i+1, err)
		}
		fmt.Fprintf(d.out, "ADD took %s; result:\n", time.Since(start).Round(time.Millisecond))
		b, _ := json.MarshalIndent(results[i], "  ", "  ")
		fmt.Fprintf(d.out, "  %s\n", b)
		show, err := p.Show()
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "pod%d now has:\n%s\n", i+1, show)
	}

	d.step("connectivity")
	addr := func(r *current.Result, v4 bool) netip.Addr {
		for _, ip := range r.IPs {
			a, _ := netip.AddrFromSlice(ip.Address.IP)
			if a = a.Unmap(); a.Is4() == v4 {
				return a
			}
		}
		return netip.Addr{}
	}
	failed := 0
	check := func(from int, what string, dst netip.Addr) {
		if ctx.Err() != nil {
			return
		}
		err := pods[from].Ping(dst, 3*time.Second)
		mark := "ok  "
		if err != nil {
			mark, failed = "FAIL", failed+1
		}
		fmt.Fprintf(d.out, "  %s pod%d -> %-8s %s\n", mark, from+1, what, dst)
	}
	for _, v4 := range []bool{true, false} {
		pick := func(a4, a6 netip.Addr) netip.Addr {
			if v4 {
				return a4
			}
			return a6
		}
		check(0, "pod2", addr(results[1], v4))
		check(1, "pod1", addr(results[0], v4))
		check(0, "gateway", pick(netlab.Gateway4, netlab.Gateway6))
		check(1, "gateway", pick(netlab.Gateway4, netlab.Gateway6))
		check(0, "node", pick(netlab.NodeIP4, netlab.NodeIP6))
		check(0, "service", pick(netlab.ServiceIP4, netlab.ServiceIP6))
		// storage traffic leaves by net1: from its address, through its table
		src := nicAddr(results[0], "net1", v4)
		dst := pick(storage.GW4, storage.GW6)
		err := pods[0].PingFrom(src, dst, 3*time.Second)
		mark := "ok  "
		if err != nil {
			mark, failed = "FAIL", failed+1
		}
		fmt.Fprintf(d.out, "  %s pod1 -> %-8s %s (from net1's %s)\n", mark, "storage", dst, src)
		// and the node reaches each pod through its veth
		err = d.topo.Node.Ping(addr(results[0], v4), 3*time.Second)
		mark = "ok  "
		if err != nil {
			mark, failed = "FAIL", failed+1
		}
		fmt.Fprintf(d.out, "  %s node -> %-8s %s\n", mark, "pod1", addr(results[0], v4))
	}

	d.step("CHECK and STATUS")
	for i := range pods {
		err := d.topo.Node.Do(func() error { return cfg.CheckNetworkList(ctx, list, rt(i)) })
		fmt.Fprintf(d.out, "  CHECK pod%d: %s\n", i+1, okOr(err))
		if err != nil {
			failed++
		}
	}
	err = d.topo.Node.Do(func() error { return cfg.GetStatusNetworkList(ctx, list) })
	fmt.Fprintf(d.out, "  STATUS: %s\n", okOr(err))

	d.step("DEL both pods")
	for i := range pods {
		if err := d.topo.Node.Do(func() error { return cfg.DelNetworkList(ctx, list, rt(i)) }); err != nil {
			return fmt.Errorf("DEL pod%d: %w", i+1, err)
		}
		show, _ := pods[i].Show()
		fmt.Fprintf(d.out, "pod%d after DEL (only lo is left, which is not shown):\n%s\n", i+1, show)
	}
	nodeAfter, err := d.topo.Node.Dump()
	if err != nil {
		return err
	}
	clean := nodeAfter == nodeBefore
	fmt.Fprintf(d.out, "node namespace identical to before ADD: %v\n", clean)
	if !clean {
		fmt.Fprintln(d.out, netlab.Diff(nodeBefore, nodeAfter))
	}
	left, _ := filepath.Glob(filepath.Join(statedir.Journal(filepath.Join(d.dir, "state"), "*"), "*.journal"))
	held, _ := filepath.Glob(filepath.Join(d.dir, "state", "ipam", "ips", "*"))
	fmt.Fprintf(d.out, "journals left: %d, addresses still allocated: %d\n", len(left), len(held))
	if !clean || len(left)+len(held) > 0 {
		failed++
	}
	if d.plugins == "" {
		fmt.Fprintln(d.out, "\n(no -plugins: the overlay scene is left out; make demo runs it)")
	} else {
		for _, p := range []string{"ptp", "host-local"} {
			if err := os.Symlink(filepath.Join(d.plugins, p), filepath.Join(binDir, p)); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
				return fmt.Errorf("the overlay scene needs the reference %s plugin in -plugins %s: %w", p, d.plugins, err)
			}
		}
		n, err := d.overlay(ctx, binDir, storage)
		if err != nil {
			return err
		}
		failed += n
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed; the plugin log is %s/spinneret.log", failed, d.dir)
	}
	fmt.Fprintf(d.out, "\nall checks passed; removing the namespaces\n")
	return nil
}

// nicAddr is the result's address of a family on the interface ifname.
func nicAddr(r *current.Result, ifname string, v4 bool) netip.Addr {
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a = a.Unmap(); ip.Interface != nil && r.Interfaces[*ip.Interface].Name == ifname && a.Is4() == v4 {
			return a
		}
	}
	return netip.Addr{}
}

func okOr(err error) string {
	if err != nil {
		return "FAIL: " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	return "ok"
}
