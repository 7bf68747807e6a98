package tests

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/request"
)

// The cluster's CIDRs in the overlay tests: the ptp delegate's pod
// subnets are inside podCIDR; the service stand-ins the node serves are
// netlab's.
var (
	podCIDR4 = netip.MustParsePrefix("10.244.0.0/16")
	podCIDR6 = netip.MustParsePrefix("fd00:244::/32")
)

// overlayEnv is a node running a stand-in for the cluster's CNI (the ptp
// conflist, of a family) and three networks; its config has the delegate
// as the primary network (coordinator mode auto: overlay) and the
// topology's networks as red, blue, green.
func overlayEnv(t *testing.T, fam family, extra string) (*env, *libcni.NetworkConfigList) {
	e := multiEnv(t)
	e.forwarding()
	file := filepath.Join(e.dir, "10-ptp.conflist")
	if err := os.WriteFile(file, []byte(ptpConflistFam(e.dir, fam)), 0o600); err != nil {
		t.Fatal(err)
	}
	coord := fmt.Sprintf(`"coordinator":{"serviceCIDR":["%s","%s"],"podCIDR":["%s","%s"]%s}`,
		netlab.ServiceCIDR4, netlab.ServiceCIDR6, podCIDR4, podCIDR6, extra)
	return e, e.multiConfWith(fam, fmt.Sprintf(`{"name":"pods","delegate":{"conflist":%q}}`, file), coord)
}

// TestOverlay: eth0 from the delegate, net1 (red) and net2 (blue) from
// spinneret, in coordinator mode overlay, for every family. The node
// reaches every address of the pod through eth0's veth (the underlay
// NICs' too, by table 500), and the replies leave by eth0; the pod
// reaches the node, a service stand-in and another pod over eth0, from
// eth0's address and from net1's; net1 reaches its gateway, and a peer on
// its subnet from an unbound socket; a request arriving on net1 is
// answered on net1, and one arriving on eth0 from an address on net1's
// subnet is answered on eth0 (not without the from-eth0 rule: the control).
// CHECK passes, and finds spinneret's rule gone; DEL leaves the node, the
// pods and the delegate's address store as before.
func TestOverlay(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e, l := overlayEnv(t, fam, "")
			// a node address on net1's subnet that is not a node IP of
			// the conf (those have /32 routes via eth0 in main): main
			// routes it out of net1, so only the from-eth0 rule sends the
			// reply to a request from it to eth0 back by eth0
			onRed := map[bool]netip.Addr{true: nth(e.topo.Nets[0].Subnet4, 200), false: nth(e.topo.Nets[0].Subnet6, 200)}
			if err := e.topo.Node.AddAddrs("lo", netip.PrefixFrom(onRed[true], 32), netip.PrefixFrom(onRed[false], 128)); err != nil {
				t.Fatal(err)
			}
			p, _ := e.topo.NewPod()
			peer, _ := e.topo.NewPod()
			before := e.snapshot(p, peer)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red, blue"})
			peerRT := podRT("c2", peer, nil)
			r := e.mustAdd(l, rt)
			rp := e.mustAdd(l, peerRT)
			red, blue := e.topo.Nets[0], e.topo.Nets[1]
			// the layout coordinator/README.md shows (go test -v)
			show, _ := p.Show()
			node, _ := e.topo.Node.Dump()
			var hostSide []string
			for _, line := range strings.Split(node, "\n") {
				if strings.Contains(line, "table 500") || strings.Contains(line, "lookup 500") || strings.Contains(line, "permanent") {
					hostSide = append(hostSide, line)
				}
			}
			t.Logf("pod:\n%s\nnode:\n%s", show, strings.Join(hostSide, "\n"))
			for _, v4 := range fam.versions() {
				pick := func(a, b netip.Addr) netip.Addr {
					if v4 {
						return a
					}
					return b
				}
				eth0, net1, net2 := nicAddr(t, r, "eth0", v4), nicAddr(t, r, "net1", v4), nicAddr(t, r, "net2", v4)
				node, svc := pick(netlab.NodeIP4, netlab.NodeIP6), pick(netlab.ServiceIP4, netlab.ServiceIP6)
				if !podCIDR4.Contains(eth0) && !podCIDR6.Contains(eth0) {
					t.Fatalf("eth0 %s is not the delegate's", eth0)
				}
				// the node reaches each address through eth0's veth
				for _, a := range []netip.Addr{eth0, net1, net2} {
					if err := sentBy(t, p, "eth0", 3, func() error {
						for range 3 {
							if err := e.topo.Node.Ping(a, 5*time.Second); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						t.Errorf("node -> %s, answered over eth0: %v", a, err)
					}
				}
				// the pod reaches the node, a service and a pod over eth0,
				// from eth0's address (unbound) and from net1's
				other := nicAddr(t, rp, "eth0", v4)
				for _, dst := range []netip.Addr{node, svc, other} {
					for _, src := range []netip.Addr{{}, net1} {
						if err := sentBy(t, p, "eth0", 1, func() error { return p.PingFrom(src, dst, 5*time.Second) }); err != nil {
							t.Errorf("pod (from %v) -> %s over eth0: %v", src, dst, err)
						}
					}
				}
				// net1 to its gateway, and unbound to a peer on its subnet
				gw := pick(red.GW4, red.GW6)
				if err := p.PingFrom(net1, gw, 5*time.Second); err != nil {
					t.Errorf("net1 -> its gateway: %v", err)
				}
				if err := sentBy(t, p, "net1", 3, func() error {
					for range 3 {
						if err := p.Ping(gw, 5*time.Second); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					t.Errorf("unbound -> %s (net1's subnet) out of net1: %v", gw, err)
				}
				// replies leave by the NIC the request came in on
				replyLeavesBy(t, p, red.Gateway, pick(red.Remote4, red.Remote6), net1, "net1", "eth0")
				replyLeavesBy(t, p, blue.Gateway, pick(blue.Remote4, blue.Remote6), net2, "net2", "eth0")
				replyLeavesBy(t, p, e.topo.Node, onRed[v4], eth0, "eth0", "net1")
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			// the control: without the from-eth0 rule, the reply to an
			// address on net1's subnet leaves by net1
			v4 := fam.has4()
			eth0 := nicAddr(t, r, "eth0", v4)
			rule := netlink.NewRule()
			rule.Priority, rule.Table, rule.Src = 30000, 100, netops.IPNet(netip.PrefixFrom(eth0, eth0.BitLen()))
			rule.Family = map[bool]int{true: netlink.FAMILY_V4, false: netlink.FAMILY_V6}[v4]
			if err := p.NL().RuleDel(rule); err != nil {
				t.Fatalf("delete the from-eth0 rule: %v", err)
			}
			if err := sentBy(t, p, "net1", 3, func() error {
				for range 5 {
					e.topo.Node.PingFrom(onRed[v4], eth0, 500*time.Millisecond) // answered or not
				}
				return nil
			}); err != nil {
				t.Errorf("without the from-eth0 rule, replies to %s should leave by net1: %v", onRed[v4], err)
			}
			if err := e.check(l, rt); err == nil || !strings.Contains(err.Error(), "rule 30000") {
				t.Errorf("CHECK without the from-eth0 rule: %v, want it missing", err)
			}
			e.mustDel(l, rt)
			e.mustDel(l, peerRT)
			e.nothingLeft(t, before, "after DEL", p, peer)
		})
	}
}

// TestOverlayDefaultNet1: the default route moved to net1 by annotation in
// overlay mode, for every family. Unbound traffic off every subnet leaves
// by net1; the node, a service stand-in and another pod are still reached
// over eth0; a request arriving on eth0 from an address main would send
// out of net1 is answered on eth0 (eth0's own table), one arriving on net1
// on net1. CHECK passes; DEL leaves nothing, the delegate's store too.
func TestOverlayDefaultNet1(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e, l := overlayEnv(t, fam, "")
			// a node address off every subnet and CIDR: main's default
			// (net1's) would carry the reply to it
			far := map[bool]netip.Addr{true: netip.MustParseAddr("198.18.99.1"), false: netip.MustParseAddr("2001:db8:ff:99::1")}
			if err := e.topo.Node.AddAddrs("lo", netip.PrefixFrom(far[true], 32), netip.PrefixFrom(far[false], 128)); err != nil {
				t.Fatal(err)
			}
			p, _ := e.topo.NewPod()
			peer, _ := e.topo.NewPod()
			before := e.snapshot(p, peer)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red", request.AnnotDefaultRouteNIC: "net1"})
			peerRT := podRT("c2", peer, nil)
			r := e.mustAdd(l, rt)
			rp := e.mustAdd(l, peerRT)
			red := e.topo.Nets[0]
			for _, v4 := range fam.versions() {
				pick := func(a, b netip.Addr) netip.Addr {
					if v4 {
						return a
					}
					return b
				}
				eth0, net1 := nicAddr(t, r, "eth0", v4), nicAddr(t, r, "net1", v4)
				remote := pick(red.Remote4, red.Remote6)
				if err := sentBy(t, p, "net1", 1, func() error { return p.Ping(remote, 5*time.Second) }); err != nil {
					t.Errorf("unbound -> %s by net1's default route: %v", remote, err)
				}
				for _, dst := range []netip.Addr{pick(netlab.NodeIP4, netlab.NodeIP6), pick(netlab.ServiceIP4, netlab.ServiceIP6), nicAddr(t, rp, "eth0", v4)} {
					if err := sentBy(t, p, "eth0", 1, func() error { return p.Ping(dst, 5*time.Second) }); err != nil {
						t.Errorf("unbound -> %s over eth0: %v", dst, err)
					}
				}
				replyLeavesBy(t, p, e.topo.Node, far[v4], eth0, "eth0", "net1")
				replyLeavesBy(t, p, red.Gateway, remote, net1, "net1", "eth0")
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			e.mustDel(l, peerRT)
			e.nothingLeft(t, before, "after DEL", p, peer)
		})
	}
}

// TestOverlayRepeatedAdd: an ADD repeated without DEL (a runtime retrying
// after losing the first one's answer) replaces the first: the delegate's
// DEL runs and its ADD makes eth0 afresh, net1 keeps its address; the pod
// works, the delegate holds one address, CHECK passes, DEL leaves nothing.
func TestOverlayRepeatedAdd(t *testing.T) {
	e, l := overlayEnv(t, dual, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red"})
	first := e.mustAdd(l, rt)
	r := e.mustAdd(l, rt)
	if a, b := nicAddr(t, first, "net1", true), nicAddr(t, r, "net1", true); a != b {
		t.Errorf("net1 %s, then %s: the ledger was not carried", a, b)
	}
	if h := e.delegateHeld(); len(h) != 2 {
		t.Errorf("the delegate holds %v, want one address of each family", h)
	}
	for _, v4 := range []bool{true, false} {
		if err := e.topo.Node.Ping(nicAddr(t, r, "eth0", v4), 5*time.Second); err != nil {
			t.Errorf("node -> eth0: %v", err)
		}
		if err := e.topo.Node.Ping(nicAddr(t, r, "net1", v4), 5*time.Second); err != nil {
			t.Errorf("node -> net1: %v", err)
		}
	}
	if err := e.check(l, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.mustDel(l, rt)
	e.nothingLeft(t, before, "after DEL", p)
}

// TestOverlayHostPort: the runtime's portMappings (a hostPort) reach the
// delegate's portmap through spinneret: a client on net1's network
// reaches the pod's port through the node's address, IPv4 and IPv6; after
// DEL (portmap's DEL, with the journaled arguments) the node's ruleset is
// as before and the port is closed.
func TestOverlayHostPort(t *testing.T) {
	e, l := overlayEnv(t, dual, "")
	p, _ := e.topo.NewPod()
	rulesBefore := nftRuleset(t, e.topo.Node)
	before := e.snapshot(p)
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red"})
	rt.CapabilityArgs["portMappings"] = []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}
	e.mustAdd(l, rt)
	var lns []net.Listener
	for _, network := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		if err := p.Do(func() (err error) { ln, err = net.Listen(network, ":80"); return }); err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("pod\n"))
				c.Close()
			}
		}()
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	client := e.topo.Nets[0].Gateway // on the node's first network
	dial := func(node netip.Addr) (string, error) {
		var got []byte
		err := client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(node, 8080).String(), 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			got, err = io.ReadAll(c)
			return err
		})
		return string(got), err
	}
	if rules := nftRuleset(t, e.topo.Node); !strings.Contains(rules, "8080") || !strings.Contains(rules, "dnat") {
		t.Errorf("portmap's rules are not in the node's ruleset:\n%s", rules)
	}
	for _, node := range []netip.Addr{netlab.NodeIP4, netlab.NodeIP6} {
		if got, err := dial(node); err != nil || got != "pod\n" {
			t.Errorf("hostPort %s:8080 -> pod:80: %q, %v", node, got, err)
		}
	}
	e.mustDel(l, rt)
	sameLearnt(t, before, e.snapshot(p))
	if after := nftRuleset(t, e.topo.Node); strings.Contains(after, "8080") || strings.Contains(after, "dnat") {
		t.Errorf("after DEL the node's ruleset still maps the port:\n%s", netlab.Diff(rulesBefore, after))
	}
	if got, err := dial(netlab.NodeIP4); err == nil {
		t.Errorf("hostPort after DEL: %q", got)
	}
}

// nftRuleset is the namespace's nftables ruleset (portmap's DEL leaves
// its tables and chains, empty, as it does on every node).
func nftRuleset(t *testing.T, ns *netlab.NS) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset in %s: %v: %s", ns.Name, err, out)
	}
	return string(out)
}

// TestOverlayGC: GC runs the delegate's GC too. c1's journal is lost (the
// state of its ADD gone), so spinneret's GC cannot undo it: the delegate's
// (libcni's DEL of the attachment its cache still has) removes c1's eth0
// and its address. c3's lock is held (its ADD in flight): GC leaves it, and
// removes it once the lock is free. c2, valid, keeps everything.
func TestOverlayGC(t *testing.T) {
	e, l := overlayEnv(t, v4, "")
	var rts []*libcni.RuntimeConf
	hostVeth := map[string]string{}
	for i := range 3 {
		p, _ := e.topo.NewPod()
		id := fmt.Sprintf("c%d", i+1)
		rt := podRT(id, p, map[string]string{request.AnnotNetworks: "red"})
		r := e.mustAdd(l, rt)
		for _, ifc := range r.Interfaces {
			if ifc.Sandbox == "" {
				hostVeth[id] = ifc.Name
			}
		}
		if hostVeth[id] == "" {
			t.Fatalf("%s: no node-side interface in the result %v", id, r.Interfaces)
		}
		rts = append(rts, rt)
	}
	held := func() int { return len(e.delegateHeld()) }
	onNode := func(id string) bool {
		_, err := e.topo.Node.NL().LinkByName(hostVeth[id])
		return err == nil
	}
	if err := os.Remove(txn.JournalPath(e.stateDir(), "multi", "c1", "eth0")); err != nil {
		t.Fatal(err)
	}
	lk, err := fileutil.TryLockFile(statedir.AttachmentLock(e.stateDir(), txn.Key("c3", "eth0")))
	if err != nil {
		t.Fatal(err)
	}
	valid := types.GCAttachment{ContainerID: "c2", IfName: "eth0"}
	// spinneret's GC alone: a runtime's libcni would first run DEL for the
	// attachments its own cache has (c3's would wait for the lock)
	gc := func() error {
		c := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
		return e.topo.Node.Do(func() error {
			return c.GCNetworkList(e.ctx, l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{valid}})
		})
	}
	if err := gc(); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if onNode("c1") || !onNode("c2") || !onNode("c3") || held() != 2 {
		t.Errorf("after GC with c3 in flight: host veths c1 %v c2 %v c3 %v (want false true true), the delegate holds %d addresses (want 2)", onNode("c1"), onNode("c2"), onNode("c3"), held())
	}
	lk.Unlock()
	if err := gc(); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if !onNode("c2") || onNode("c3") || held() != 1 {
		t.Errorf("after GC: host veths c2 %v c3 %v (want true false), the delegate holds %d addresses (want 1)", onNode("c2"), onNode("c3"), held())
	}
	if err := e.check(l, rts[1]); err != nil {
		t.Errorf("CHECK c2: %v", err)
	}
	e.mustDel(l, rts[1])
	if held() != 0 {
		t.Errorf("after DEL the delegate holds %d addresses", held())
	}
}

// TestOverlayVersions: the delegate's result, of its conflist's CNI
// version, is eth0 in spinneret's, of the version the runtime asked for:
// a CNI 0.4.0 runtime over a 1.0.0 delegate, a 1.1.0 runtime over a 0.3.1
// one (which has no CHECK: spinneret's CHECK checks its own part). ADD,
// CHECK and DEL, and nothing is left.
func TestOverlayVersions(t *testing.T) {
	for _, c := range []struct{ runtime, delegate string }{{"0.4.0", "1.0.0"}, {"1.1.0", "0.3.1"}} {
		t.Run(c.runtime+"/"+c.delegate, func(t *testing.T) {
			e, l := overlayEnv(t, dual, "")
			file := filepath.Join(e.dir, "10-ptp.conflist")
			b := strings.Replace(ptpConflistFam(e.dir, dual), `"cniVersion":"1.0.0"`, fmt.Sprintf(`"cniVersion":%q`, c.delegate), 1)
			if err := os.WriteFile(file, []byte(b), 0o600); err != nil {
				t.Fatal(err)
			}
			l = e.confListRaw(strings.Replace(string(l.Bytes), `"cniVersion":"1.1.0"`, fmt.Sprintf(`"cniVersion":%q`, c.runtime), 1))
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red"})
			res, err := e.add(l, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != c.runtime {
				t.Errorf("result version %s, want %s", res.Version(), c.runtime)
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			for _, v4 := range []bool{true, false} {
				if a := nicAddr(t, r, "eth0", v4); !podCIDR4.Contains(a) && !podCIDR6.Contains(a) {
					t.Errorf("eth0 %s is not the delegate's", a)
				}
				nicAddr(t, r, "net1", v4)
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			e.nothingLeft(t, before, "after DEL", p)
		})
	}
}

// TestOverlayFailures: in overlay mode with eth0 from the delegate and
// net1, net2 from spinneret, an ADD that fails leaves nothing in the node,
// the pod or the delegate's address store: the delegate failing (ptp
// refuses its MTU after taking an address), and net2 failing after the
// delegate made eth0 and net1 was planned (its static address outside its
// pools).
func TestOverlayFailures(t *testing.T) {
	e, l := overlayEnv(t, dual, "")
	file := filepath.Join(e.dir, "10-ptp.conflist")
	good, _ := os.ReadFile(file)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)

	if err := os.WriteFile(file, []byte(strings.Replace(string(good), `"mtu":1400`, `"mtu":70000`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "red, blue"})
	if _, err := e.add(l, rt); err == nil || !strings.Contains(err.Error(), "delegate k8s-pod-network") {
		t.Errorf("ADD with the delegate failing: %v, want its error", err)
	}
	e.nothingLeft(t, before, "after the delegate failed", p)

	if err := os.WriteFile(file, good, 0o600); err != nil {
		t.Fatal(err)
	}
	rt = podRT("c2", p, map[string]string{request.AnnotNetworks: `[{"name":"red"},{"name":"blue","ips":["192.0.2.77"]}]`})
	if _, err := e.add(l, rt); err == nil || !strings.Contains(err.Error(), "192.0.2.77") || !strings.Contains(err.Error(), "rolled back") {
		t.Errorf("ADD with net2's static address outside its pools: %v, want it rolled back (the delegate ran)", err)
	}
	e.nothingLeft(t, before, "after net2 failed", p)
}

// TestOverlayCrash: an overlay ADD (eth0 from the delegate, net1, net2)
// killed after the delegate's ledger entry or after any step of its plan
// leaves nothing once DEL ran: not the delegate's veth or addresses, not
// spinneret's NICs, rules, routes and neighbours, in the pod or the node.
func TestOverlayCrash(t *testing.T) {
	e, l := overlayEnv(t, dual, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	e.killAtEveryStep(t, l, before, p, podRT("c1", p, map[string]string{request.AnnotNetworks: "red, blue"}))
}

// TestOverlayUnderlayPod: both modes in one cluster. The config's primary
// network is the delegate (overlay); pod a's v1.multus-cni.io/default-network
// makes its eth0 red's (underlay: a veth0 to the node), pod b keeps the
// delegate's. Each reaches the node and a service stand-in by its own
// path, and its gateway on net1; DEL leaves nothing.
func TestOverlayUnderlayPod(t *testing.T) {
	e, l := overlayEnv(t, dual, "")
	pa, _ := e.topo.NewPod()
	pb, _ := e.topo.NewPod()
	before := e.snapshot(pa, pb)
	rtA := podRT("a", pa, map[string]string{request.AnnotDefaultNetwork: "red", request.AnnotNetworks: "blue"})
	rtB := podRT("b", pb, map[string]string{request.AnnotNetworks: "blue"})
	ra, rb := e.mustAdd(l, rtA), e.mustAdd(l, rtB)
	red, blue := e.topo.Nets[0], e.topo.Nets[1]
	if _, err := pa.NL().LinkByName("veth0"); err != nil {
		t.Errorf("pod a (underlay) has no veth0: %v", err)
	}
	if _, err := pb.NL().LinkByName("veth0"); err == nil {
		t.Errorf("pod b (overlay) has a veth0")
	}
	for _, v4 := range []bool{true, false} {
		pick := func(a, b netip.Addr) netip.Addr {
			if v4 {
				return a
			}
			return b
		}
		if a := nicAddr(t, ra, "eth0", v4); !red.Subnet4.Contains(a) && !red.Subnet6.Contains(a) {
			t.Errorf("pod a's eth0 %s is not red's", a)
		}
		if a := nicAddr(t, rb, "eth0", v4); !podCIDR4.Contains(a) && !podCIDR6.Contains(a) {
			t.Errorf("pod b's eth0 %s is not the delegate's", a)
		}
		for _, c := range []struct {
			pod  *netlab.NS
			r    *current.Result
			path string // the NIC that carries node and service traffic
		}{{pa, ra, "veth0"}, {pb, rb, "eth0"}} {
			for _, dst := range []netip.Addr{pick(netlab.NodeIP4, netlab.NodeIP6), pick(netlab.ServiceIP4, netlab.ServiceIP6)} {
				if err := sentBy(t, c.pod, c.path, 1, func() error { return c.pod.Ping(dst, 5*time.Second) }); err != nil {
					t.Errorf("%s -> %s over %s: %v", c.pod.Name, dst, c.path, err)
				}
			}
			if err := e.topo.Node.Ping(nicAddr(t, c.r, "eth0", v4), 5*time.Second); err != nil {
				t.Errorf("node -> %s's eth0: %v", c.pod.Name, err)
			}
			if err := c.pod.PingFrom(nicAddr(t, c.r, "net1", v4), pick(blue.GW4, blue.GW6), 5*time.Second); err != nil {
				t.Errorf("%s's net1 -> its gateway: %v", c.pod.Name, err)
			}
		}
	}
	e.mustDel(l, rtA)
	e.mustDel(l, rtB)
	e.nothingLeft(t, before, "after DEL", pa, pb)
}
