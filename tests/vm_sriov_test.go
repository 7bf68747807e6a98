//go:build vmtest

package tests

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	podresources "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/ipam"
)

// The SR-IOV tests run in the VM's own namespace, where the emulated igb
// PFs and their VFs are: the VM is the node (the VM is thrown away).

// sriovPF enables n VFs on the first igb PF and returns its netdev and the
// VFs' PCI addresses.
func sriovPF(t *testing.T, n int) (string, []string) { return sriovPFAt(t, 0, n) }

// sriovPFAt is sriovPF for the idx-th PF (in sysfs order).
func sriovPFAt(t *testing.T, idx, n int) (string, []string) {
	t.Helper()
	ms, _ := filepath.Glob("/sys/class/net/*/device/sriov_totalvfs")
	if len(ms) <= idx {
		t.Fatalf("%d SR-IOV PF(s) in the VM, want %d (SPINNERET_VM_SRIOV)", len(ms), idx+1)
	}
	pf := filepath.Base(filepath.Dir(filepath.Dir(ms[idx])))
	dev := filepath.Dir(ms[idx])
	l, err := netlink.LinkByName(pf)
	if err != nil {
		t.Fatal(err)
	}
	netlink.LinkSetUp(l)
	if err := os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte(fmt.Sprint(n)), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte("0"), 0) })
	var vfs []string
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < n; i++ {
		for {
			target, err := os.Readlink(filepath.Join(dev, fmt.Sprintf("virtfn%d", i)))
			if err == nil {
				pci := filepath.Base(target)
				if nds, _ := filepath.Glob(filepath.Join(dev, fmt.Sprintf("virtfn%d", i), "net", "*")); len(nds) > 0 {
					vfs = append(vfs, pci)
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("VF %d of %s: no netdev", i, pf)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// igb limits VF tx rates only while its link is up (creating VFs
	// resets it)
	for deadline := time.Now().Add(15 * time.Second); ; {
		if l, err = netlink.LinkByName(pf); err == nil && l.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PF %s: no carrier", pf)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return pf, vfs
}

// vfSnapshot is every VF's state through the PF and its netdev's name.
func vfSnapshot(t *testing.T, vfs []string) string {
	t.Helper()
	var out []string
	for _, pci := range vfs {
		v, err := drivers.LookupVF(pci)
		if err != nil {
			out = append(out, pci+": "+err.Error())
			continue
		}
		st, err := drivers.ReadVFState(rootHandle(t), v)
		if st.MAC == st.NetdevMAC {
			// igb reports the MAC a VF's driver registered as it reports
			// an administrative one: a VF opened once reports its own
			// MAC where a fresh one reports zeros (none set through the
			// PF either way; TestInVMSriovWire proves it by changing it)
			st.MAC = "00:00:00:00:00:00"
		}
		out = append(out, fmt.Sprintf("%s vf %d netdev %s driver %s %+v %v", pci, v.Index, v.Netdev, v.Driver, st, err))
	}
	return strings.Join(out, "\n")
}

// kubeletStub serves the kubelet's PodResources API (its generated code) on
// a unix socket: pod ns/name got the devices of resource intel.com/sriov.
type kubeletStub struct {
	podresources.UnimplementedPodResourcesListerServer
	ns, name string
	devices  []string
}

func (k *kubeletStub) List(context.Context, *podresources.ListPodResourcesRequest) (*podresources.ListPodResourcesResponse, error) {
	return &podresources.ListPodResourcesResponse{PodResources: []*podresources.PodResources{{Name: k.name, Namespace: k.ns,
		Containers: []*podresources.ContainerResources{{Name: "c", Devices: []*podresources.ContainerDevices{{ResourceName: "intel.com/sriov", DeviceIds: k.devices}}}}}}}, nil
}

// rootAdd and rootDel run the plugin in the VM's own namespace (the node).
func (e *env) rootAdd(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	res, err := e.cni.AddNetworkList(e.ctx, l, rt)
	if err != nil {
		return nil, err
	}
	return currentResult(res)
}

func rootHandle(t *testing.T) *netlink.Handle {
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func (e *env) rootDel(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return e.cni.DelNetworkList(e.ctx, l, rt)
}

// TestInVMSriov (in the VM): a pod with two VFs of an igb PF, one by
// deviceID, one from the kubelet's PodResources for its resourceName:
// settings through the PF, netdevs in the pod under the pod's names,
// addresses on them; a second pod asking for a VF in use is refused; DEL
// returns both VFs with every original setting and name. Then: a SIGKILL
// at every step of the ADD, then DEL; a pod netns deleted before DEL; a VF
// bound to vfio-pci (DPDK: PF settings only, reported by PCI address).
func TestInVMSriov(t *testing.T) {
	e := newEnv(t)
	pf, vfs := sriovPF(t, 3)
	sock := filepath.Join(e.dir, "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podresources.RegisterPodResourcesListerServer(srv, &kubeletStub{ns: "spin", name: "web", devices: []string{vfs[1]}})
	go srv.Serve(lis)
	defer srv.Stop()
	appendFile(t, filepath.Join(e.dir, "node.yaml"), "podResourcesSocket: "+sock+"\n")
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"sr","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"coordinator":{"mode":"disable"},"networks":[
		{"name":"fast","driver":"sriov","deviceID":%q,"vlan":100,"spoofchk":"off","trust":"on","max_tx_rate":100,"mac":"0a:00:00:00:0a:01",
		 "ipam":{"pools":[{"name":"f4","subnet":"10.10.0.0/24","ranges":[{"start":"10.10.0.10","end":"10.10.0.20"}]},{"name":"f6","subnet":"fd00:10::/64","ranges":[{"start":"fd00:10::10","end":"fd00:10::20"}]}]}},
		{"name":"bulk","driver":"sriov","resourceName":"intel.com/sriov","vlan":200,
		 "ipam":{"pools":[{"name":"b4","subnet":"10.20.0.0/24","ranges":[{"start":"10.20.0.10","end":"10.20.0.20"}]}]}}]}]}`, e.dir, vfs[0]))
	p, _ := e.topo.NewPod()
	rt := &libcni.RuntimeConf{ContainerID: "c1", NetNS: p.Path(), IfName: "eth0",
		Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "spin"}, {"K8S_POD_NAME", "web"}},
		CapabilityArgs: map[string]interface{}{"io.kubernetes.cri.pod-annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": "bulk"}}}
	before, podBefore := vfSnapshot(t, vfs), e.podState(p)
	r, err := e.rootAdd(l, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(r.Interfaces) != 2 || r.Interfaces[0].PciID != vfs[0] || r.Interfaces[1].PciID != vfs[1] || r.Interfaces[0].Mac != "0a:00:00:00:0a:01" {
		t.Fatalf("result interfaces %+v %+v", r.Interfaces[0], r.Interfaces[1])
	}
	for i, pci := range vfs[:2] {
		st, _ := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pf, Index: i})
		want := []int{100, 200}[i]
		if st.VLAN != want || (i == 0 && (st.SpoofChk || !st.Trust || st.MaxTxRate != 100 || st.MAC != "0a:00:00:00:0a:01")) {
			t.Errorf("VF %s through the PF: %+v", pci, st)
		}
	}
	for _, c := range []struct{ ifname, addr string }{{"eth0", "10.10.0.10/24"}, {"eth0", "fd00:10::10/64"}, {"net1", "10.20.0.10/24"}} {
		pl, err := p.NL().LinkByName(c.ifname)
		if err != nil || pl.Type() != "device" {
			t.Fatalf("%s in the pod: %v", c.ifname, err)
		}
		addrs, _ := p.NL().AddrList(pl, netlink.FAMILY_ALL)
		if !strings.Contains(fmt.Sprint(addrs), c.addr) {
			t.Errorf("%s: addresses %v, want %s", c.ifname, addrs, c.addr)
		}
	}
	if err := e.cni.CheckNetworkList(e.ctx, l, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// a VF in use
	p2, _ := e.topo.NewPod()
	rt2 := &libcni.RuntimeConf{ContainerID: "c2", NetNS: p2.Path(), IfName: "eth0"}
	if _, err := e.rootAdd(l, rt2); err == nil || !strings.Contains(err.Error(), "in use by a pod") {
		t.Fatalf("a second pod on VF %s: %v", vfs[0], err)
	}
	if err := e.rootDel(l, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if after := vfSnapshot(t, vfs); after != before {
		t.Fatalf("VFs after DEL:\n%s", netlab.Diff(before, after))
	}
	if after := e.podState(p); after != podBefore {
		t.Fatalf("pod after DEL:\n%s", netlab.Diff(podBefore, after))
	}

	// killed after every step of the ADD, then DEL
	for step := 0; ; step++ {
		t.Setenv("SPINNERET_TEST_KILL_STEP", fmt.Sprint(step))
		_, err := e.rootAdd(l, rt)
		os.Unsetenv("SPINNERET_TEST_KILL_STEP")
		if err := e.rootDel(l, rt); err != nil {
			t.Fatalf("DEL after a kill at step %d: %v", step, err)
		}
		if after := vfSnapshot(t, vfs); after != before {
			t.Fatalf("VFs after a kill at step %d and DEL:\n%s", step, netlab.Diff(before, after))
		}
		if err == nil {
			break // past the last step
		}
	}

	// the pod's namespace deleted before DEL: the kernel returns the VFs
	// (under the pod's names), DEL renames them and restores their settings
	if _, err := e.rootAdd(l, rt); err != nil {
		t.Fatal(err)
	}
	e.topo.RemovePod(p)
	if err := e.rootDel(l, rt); err != nil {
		t.Fatalf("DEL with the pod's netns gone: %v", err)
	}
	if after := vfSnapshot(t, vfs); after != before {
		t.Fatalf("VFs after DEL with the netns gone:\n%s", netlab.Diff(before, after))
	}

	// with the coordinator: the VF and the veth to the node, policy routing
	lc := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"src","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true},"coordinator":{"serviceCIDR":["10.96.0.0/16"]},"networks":[
		{"name":"fast","driver":"sriov","deviceID":%q,"ipam":{"pools":[{"name":"c4","subnet":"10.10.0.0/24","gateway":"10.10.0.1","ranges":[{"start":"10.10.0.10","end":"10.10.0.20"}]}]}},
		{"name":"bulk","driver":"sriov","deviceID":%q,"ipam":{"pools":[{"name":"c5","subnet":"10.20.0.0/24","gateway":"10.20.0.1"}]}}]}]}`, e.dir, vfs[0], vfs[1]))
	pc, _ := e.topo.NewPod()
	rtc := &libcni.RuntimeConf{ContainerID: "cc", NetNS: pc.Path(), IfName: "eth0",
		CapabilityArgs: map[string]interface{}{"io.kubernetes.cri.pod-annotations": map[string]string{"k8s.v1.cni.cncf.io/networks": "bulk"}}}
	rootLinks := func() string {
		ls, _ := netlink.LinkList()
		var names []string
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return strings.Join(names, " ")
	}
	// the node's address on the VFs' subnet (on the PF): pods reach it, and
	// through it the services, via veth0
	pfLink, _ := netlink.LinkByName(pf)
	nodeAddr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 10, 0, 2), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(pfLink, nodeAddr); err != nil {
		t.Fatal(err)
	}
	defer netlink.AddrDel(pfLink, nodeAddr)
	linksBefore := rootLinks()
	if _, err := e.rootAdd(lc, rtc); err != nil {
		t.Fatalf("ADD with the coordinator: %v", err)
	}
	if _, err := pc.NL().LinkByName("veth0"); err != nil {
		t.Errorf("no veth0 in the pod: %v", err)
	}
	rs, _ := pc.NL().RouteGet(net.ParseIP("10.96.0.1"))
	if len(rs) == 0 {
		t.Errorf("no route to the service CIDR")
	} else if l, _ := pc.NL().LinkByIndex(rs[0].LinkIndex); l == nil || l.Attrs().Name != "veth0" {
		t.Errorf("service CIDR via %v, want veth0", l)
	}
	if err := pc.PingFrom(netip.MustParseAddr("10.10.0.10"), netip.MustParseAddr("10.10.0.2"), 5*time.Second); err != nil {
		t.Errorf("pod -> node through veth0: %v", err)
	}
	if err := e.rootDel(lc, rtc); err != nil {
		t.Fatal(err)
	}
	if after := vfSnapshot(t, vfs); after != before {
		t.Fatalf("VFs after DEL with the coordinator:\n%s", netlab.Diff(before, after))
	}
	if after := rootLinks(); after != linksBefore {
		t.Fatalf("the node's links after DEL: %s, before %s", after, linksBefore)
	}

	// DPDK: VF 2 bound to vfio-pci has no netdev
	// vfio-pci needs an IOMMU: vm.sh gives the VM QEMU's intel-iommu
	if out, err := exec.Command("modprobe", "vfio-pci").CombinedOutput(); err != nil {
		t.Fatalf("modprobe vfio-pci: %v %s", err, out)
	}
	dev := filepath.Join("/sys/bus/pci/devices", vfs[2])
	for _, w := range [][2]string{{filepath.Join(dev, "driver_override"), "vfio-pci"}, {filepath.Join(dev, "driver", "unbind"), vfs[2]}, {"/sys/bus/pci/drivers/vfio-pci/bind", vfs[2]}} {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil {
			t.Fatalf("%s: %v", w[0], err)
		}
	}
	if drv, _ := os.Readlink(filepath.Join(dev, "driver")); filepath.Base(drv) != "vfio-pci" {
		t.Fatalf("VF %s bound to %q, want vfio-pci", vfs[2], drv)
	}
	dpdkBefore := vfSnapshot(t, vfs[2:])
	// (its VF named by the runtime's deviceID capability, as Multus passes it)
	ld := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dpdk","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","coordinator":{"mode":"disable"},
		"capabilities":{"deviceID":true},"driver":"sriov","vlan":300,"ipam":{"pools":[{"name":"d4","subnet":"10.30.0.0/24"}]}}]}`, e.dir))
	p3, _ := e.topo.NewPod()
	rt3 := &libcni.RuntimeConf{ContainerID: "c3", NetNS: p3.Path(), IfName: "eth0", CapabilityArgs: map[string]interface{}{"deviceID": vfs[2]}}
	r, err = e.rootAdd(ld, rt3)
	if err != nil {
		t.Fatalf("ADD of a vfio-pci VF: %v", err)
	}
	if len(r.Interfaces) != 1 || r.Interfaces[0].PciID != vfs[2] || r.Interfaces[0].Sandbox != "" || len(r.IPs) != 1 {
		t.Fatalf("DPDK result %+v, IPs %v", r.Interfaces[0], r.IPs)
	}
	if st, _ := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pf, Index: 2}); st.VLAN != 300 {
		t.Errorf("DPDK VF through the PF: %+v", st)
	}
	if err := e.rootDel(ld, rt3); err != nil {
		t.Fatal(err)
	}
	if after := vfSnapshot(t, vfs[2:]); after != dpdkBefore {
		t.Fatalf("DPDK VF after DEL:\n%s", netlab.Diff(dpdkBefore, after))
	}
}

// TestInVMSriovReboot (in the VM): after a reboot (the VF back to its
// defaults, the state dir kept), another pod takes the same VF with another
// VLAN; the earlier boot's late DEL of the first pod then releases its
// addresses and journal and leaves the VF alone: its VLAN, MAC and netdev
// stay the new pod's. The new pod's DEL then restores the VF.
func TestInVMSriovReboot(t *testing.T) {
	e := newEnv(t)
	pf, vfs := sriovPF(t, 1)
	conf := func(vlan int, mac string) *libcni.NetworkConfigList {
		if mac != "" {
			mac = fmt.Sprintf(`,"mac":%q`, mac)
		}
		return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"sr","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
			"coordinator":{"mode":"disable"},"networks":[{"name":"fast","driver":"sriov","deviceID":%q,"vlan":%d%s,
			"ipam":{"pools":[{"name":"f4","subnet":"10.10.0.0/24","ranges":[{"start":"10.10.0.10","end":"10.10.0.20"}]}]}}]}]}`, e.dir, vfs[0], vlan, mac))
	}
	before := vfSnapshot(t, vfs)
	boot(t, "boot-1")
	pA, _ := e.topo.NewPod()
	rtA := &libcni.RuntimeConf{ContainerID: "old", NetNS: pA.Path(), IfName: "eth0"}
	if _, err := e.rootAdd(conf(100, "0a:00:00:00:0c:01"), rtA); err != nil {
		t.Fatalf("ADD in boot-1: %v", err)
	}
	restore := e.keepState()
	if err := e.rootDel(conf(100, "0a:00:00:00:0c:01"), rtA); err != nil {
		t.Fatal(err)
	}
	pA.Close()
	restore()
	if got := vfSnapshot(t, vfs); got != before {
		t.Fatalf("the \"reboot\" left the VF as\n%s\nwant\n%s", got, before)
	}

	boot(t, "boot-2")
	pB, _ := e.topo.NewPod()
	rtB := &libcni.RuntimeConf{ContainerID: "new", NetNS: pB.Path(), IfName: "eth0"}
	if _, err := e.rootAdd(conf(300, ""), rtB); err != nil {
		t.Fatalf("ADD in boot-2 on the same VF: %v", err)
	}
	want, _ := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pf, Index: 0})
	if want.VLAN != 300 {
		t.Fatalf("VF 0 of the new pod: %+v", want)
	}
	if err := e.rootDel(conf(100, "0a:00:00:00:0c:01"), rtA); err != nil {
		t.Fatalf("late DEL of the earlier boot's sandbox: %v", err)
	}
	got, _ := drivers.ReadVFState(rootHandle(t), &drivers.VF{PF: pf, Index: 0})
	if got != want {
		t.Errorf("the earlier boot's DEL changed the new pod's VF: %+v, was %+v", got, want)
	}
	if l, err := pB.NL().LinkByName("eth0"); err != nil || l.Type() != "device" {
		t.Errorf("the new pod's VF netdev after the late DEL: %v", err)
	}
	if err := e.rootDel(conf(300, ""), rtB); err != nil {
		t.Fatal(err)
	}
	if got := vfSnapshot(t, vfs); got != before {
		t.Errorf("after the new pod's DEL the VF is\n%s\nwant\n%s", got, before)
	}
	if journals, _ := filepath.Glob(filepath.Join(e.stateDir(), "journal", "*", "*.journal")); len(journals) != 0 {
		t.Errorf("journals left: %v", journals)
	}
	if o, _ := ipam.NewLocal(e.stateDir()).Owners(); len(o) != 0 {
		t.Errorf("addresses left: %v", o)
	}
}
