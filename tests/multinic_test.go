package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/request"
)

// multiEnv is an env with three networks (red on uplink0, blue on uplink1,
// green on uplink2) and a catalogue naming them.
func multiEnv(t *testing.T) *env {
	e := newEnv(t)
	for i := 0; i < 2; i++ {
		if _, err := e.topo.AddNet(); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

var colours = []string{"red", "blue", "green"}

// multiConf is a conflist whose catalogue has one network per topology
// network, with pools of the family; extra is spliced into the plugin entry.
func (e *env) multiConf(fam family, extra string) *libcni.NetworkConfigList {
	e.t.Helper()
	return e.multiConfWith(fam, "", extra)
}

// multiConfWith is multiConf with another network, first, ahead of the
// topology's (the primary network).
func (e *env) multiConfWith(fam family, first, extra string) *libcni.NetworkConfigList {
	e.t.Helper()
	var nets []string
	if first != "" {
		nets = append(nets, first)
	}
	for i, n := range e.topo.Nets {
		var pools []string
		if fam.has4() {
			pools = append(pools, fmt.Sprintf(`{"name":"%s-v4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
				colours[i], n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 60), n.GW4))
		}
		if fam.has6() {
			pools = append(pools, fmt.Sprintf(`{"name":"%s-v6","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}`,
				colours[i], n.Subnet6, nth(n.Subnet6, 10), nth(n.Subnet6, 60), n.GW6))
		}
		nets = append(nets, fmt.Sprintf(`{"name":%q,"master":%q,"ipam":{"pools":[%s]}}`, colours[i], n.Uplink, strings.Join(pools, ",")))
	}
	if extra != "" {
		extra = "," + extra
	}
	return e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"multi","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
		"capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":true,"bandwidth":true},"networks":[%s]%s}]}`, e.dir, strings.Join(nets, ","), extra))
}

func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// podRT is a runtime conf carrying pod annotations, as containerd passes them.
func podRT(id string, pod *netlab.NS, ann map[string]string) *libcni.RuntimeConf {
	rt := rtConf(id, pod)
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}}
	rt.CapabilityArgs = map[string]interface{}{"io.kubernetes.cri.pod-annotations": ann}
	return rt
}

// nicAddr is the result's address of a family on the interface named ifname.
func nicAddr(t *testing.T, r *current.Result, ifname string, v4 bool) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a = a.Unmap(); ip.Interface != nil && r.Interfaces[*ip.Interface].Name == ifname && a.Is4() == v4 {
			return a
		}
	}
	t.Fatalf("no IPv%d address on %s in %v", map[bool]int{true: 4, false: 6}[v4], ifname, r.IPs)
	return netip.Addr{}
}

func (f family) versions() []bool {
	switch f {
	case v4:
		return []bool{true}
	case v6:
		return []bool{false}
	}
	return []bool{true, false}
}

// replyLeavesBy pings the pod's address on ifname from a remote address
// behind that NIC's gateway and checks, with the pod's packet counters, that
// the replies left by ifname and not by other.
func replyLeavesBy(t *testing.T, pod *netlab.NS, gwNS *netlab.NS, remote, podAddr netip.Addr, ifname, other string) {
	t.Helper()
	txIf, _ := pod.TxPackets(ifname)
	txOther, _ := pod.TxPackets(other)
	const n = 5
	for i := 0; i < n; i++ {
		if err := gwNS.PingFrom(remote, podAddr, 3*time.Second); err != nil {
			t.Fatalf("request from %s to %s (%s): %v", remote, podAddr, ifname, err)
		}
	}
	dIf, _ := pod.TxPackets(ifname)
	dOther, _ := pod.TxPackets(other)
	if dIf-txIf < n || dOther-txOther >= n {
		t.Fatalf("replies to %s: %s sent %d packets, %s sent %d; want the %d replies on %s", remote, ifname, dIf-txIf, other, dOther-txOther, n, ifname)
	}
}

// TestMultiNIC: one ADD attaches eth0 and every network the annotation
// selects, in order, with the interface names asked for; each NIC reaches
// its own gateway; a request that arrives on a NIC from off its subnet is
// answered out of that NIC; CHECK passes; DEL leaves nothing.
func TestMultiNIC(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := multiEnv(t)
			l := e.multiConf(fam, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue, default/green@data"})
			r := e.mustAdd(l, rt)
			var names []string
			for _, i := range r.Interfaces {
				names = append(names, i.Name)
			}
			if strings.Join(names[:3], ",") != "eth0,net1,data" || names[4] != "veth0" {
				t.Fatalf("interfaces %v, want eth0,net1,data, then the veth", names)
			}
			for _, v4 := range fam.versions() {
				red, blue, green := e.topo.Nets[0], e.topo.Nets[1], e.topo.Nets[2]
				gw := func(n *netlab.Net) netip.Addr { return map[bool]netip.Addr{true: n.GW4, false: n.GW6}[v4] }
				remote := func(n *netlab.Net) netip.Addr { return map[bool]netip.Addr{true: n.Remote4, false: n.Remote6}[v4] }
				// eth0 holds the default route; each other NIC's routes live
				// in its own table, used for traffic from its addresses
				for _, g := range []netip.Addr{gw(red), remote(red)} {
					if err := p.Ping(g, 5*time.Second); err != nil {
						t.Error(err)
					}
				}
				for _, c := range []struct {
					nic string
					n   *netlab.Net
				}{{"net1", blue}, {"data", green}} {
					if err := p.PingFrom(nicAddr(t, r, c.nic, v4), gw(c.n), 5*time.Second); err != nil {
						t.Errorf("%s: %v", c.nic, err)
					}
				}
				replyLeavesBy(t, p, blue.Gateway, remote(blue), nicAddr(t, r, "net1", v4), "net1", "eth0")
				replyLeavesBy(t, p, green.Gateway, remote(green), nicAddr(t, r, "data", v4), "data", "eth0")
				replyLeavesBy(t, p, red.Gateway, remote(red), nicAddr(t, r, "eth0", v4), "eth0", "net1")
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			e.sameAs(before, p)
		})
	}
}

// TestDefaultRouteNIC: spinneret.io/default-route-nic (and the JSON form's
// default-route) moves the default route to that NIC; eth0's routes move to
// its own table, so replies from eth0's address still leave by eth0.
func TestDefaultRouteNIC(t *testing.T) {
	for _, c := range []struct{ name, networks, defaultNIC string }{
		{"annotation", "blue", "net1"},
		{"json default-route", `[{"name":"blue","default-route":["198.51.100.1"]}]`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := multiEnv(t)
			l := e.multiConf(dual, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			ann := map[string]string{request.AnnotNetworks: c.networks}
			if c.defaultNIC != "" {
				ann[request.AnnotDefaultRouteNIC] = c.defaultNIC
			}
			rt := podRT("c1", p, ann)
			r := e.mustAdd(l, rt)
			red, blue := e.topo.Nets[0], e.topo.Nets[1]
			// the default route is blue's: its remote answers, red's does not
			for _, a := range []netip.Addr{blue.Remote4, blue.Remote6} {
				if err := p.Ping(a, 5*time.Second); err != nil {
					t.Errorf("default route via net1: %v", err)
				}
			}
			if err := p.Ping(red.Remote4, time.Second); err == nil {
				t.Error("red's remote answered through the default route: the default route did not move")
			}
			// but eth0's own traffic still uses eth0 (its table)
			if err := p.PingFrom(nicAddr(t, r, "eth0", true), red.Remote4, 5*time.Second); err != nil {
				t.Errorf("from eth0's address: %v", err)
			}
			replyLeavesBy(t, p, red.Gateway, red.Remote4, nicAddr(t, r, "eth0", true), "eth0", "net1")
			var defaults []string
			for _, rt := range r.Routes {
				if ones, _ := rt.Dst.Mask.Size(); ones == 0 {
					table := 0
					if rt.Table != nil {
						table = *rt.Table
					}
					defaults = append(defaults, fmt.Sprintf("%s table %d", rt.GW, table))
				}
			}
			want := "192.0.2.1 table 101,2001:db8:0:1::1 table 101,198.51.100.1 table 0,2001:db8:0:2::1 table 0"
			if strings.Join(defaults, ",") != want {
				t.Errorf("default routes in the result: %v, want %s", defaults, want)
			}
			e.mustDel(l, rt)
			e.sameAs(before, p)
		})
	}
}

// TestRefusedAfterRequest: what the request stage cannot judge alone (the
// NIC's pools and gateways are known only once its network's IPAM is) is
// refused with 104 and rolled back, never dropped: a default-route value
// that is not a gateway of its NIC, a static address of a family the
// network has no pool for.
func TestRefusedAfterRequest(t *testing.T) {
	for _, c := range []struct{ name, networks, msg string }{
		{"default-route not the NIC's gateway", `[{"name":"blue","default-route":["198.51.100.9"]}]`,
			"net1: default-route 198.51.100.9 is not a gateway of the NIC (its gateways: 198.51.100.1)"},
		{"static of a family without a pool", `[{"name":"blue","ips":["198.51.100.42","2001:db8:0:2::42"]}]`,
			"net1: static address 2001:db8:0:2::42: the network has no IPv6 pool"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := multiEnv(t)
			l := e.multiConf(v4, "")
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			_, err := e.add(l, podRT("c1", p, map[string]string{request.AnnotNetworks: c.networks}))
			wantErr(t, err, cni.ErrBadRequest, c.msg)
			e.sameAs(before, p)
		})
	}
}

// TestAddressRule: one rule for every address a pod gets: a static
// outside its pool's ranges, or inside the cluster's service CIDR, is
// refused with 104 before anything is allocated; and the service CIDR is
// skipped by dynamic allocation too (pods fill the range around it).
func TestAddressRule(t *testing.T) {
	e := multiEnv(t)
	red := e.topo.Nets[0]
	svc := netip.PrefixFrom(nth(red.Subnet4, 16), 28)                // .16-.31, inside red's range .10-.60
	svcBlue := netip.PrefixFrom(nth(e.topo.Nets[1].Subnet4, 48), 28) // .48-.63 of blue's
	l := e.multiConf(v4, fmt.Sprintf(`"coordinator":{"serviceCIDR":[%q,%q]}`, svc, svcBlue))
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	for _, c := range []struct{ ips, msg string }{
		{nth(e.topo.Nets[1].Subnet4, 100).String(), "static address " + nth(e.topo.Nets[1].Subnet4, 100).String() + " is outside the ranges of pool blue-v4"},
		{nth(e.topo.Nets[1].Subnet4, 50).String(), "static address " + nth(e.topo.Nets[1].Subnet4, 50).String() + " is inside the cluster's service CIDR " + svcBlue.String()},
		{nth(e.topo.Nets[1].Subnet4, 20).String(), ""},
	} {
		_, err := e.add(l, podRT("c1", p, map[string]string{request.AnnotNetworks: `[{"name":"blue","ips":["` + c.ips + `"]}]`}))
		if c.msg == "" {
			if err != nil {
				t.Fatalf("static %s inside the range: %v", c.ips, err)
			}
			e.mustDel(l, podRT("c1", p, nil))
			continue
		}
		wantErr(t, err, cni.ErrBadRequest, c.msg)
		e.sameAs(before, p)
	}
	// dynamic allocation from red (eth0) fills up to .15, then jumps to .32
	var got []string
	var rts []*libcni.RuntimeConf
	for i := 0; i < 8; i++ {
		q, _ := e.topo.NewPod()
		rt := podRT(fmt.Sprintf("p%d", i), q, nil)
		r := e.mustAdd(l, rt)
		rts = append(rts, rt)
		a := nicAddr(t, r, "eth0", true)
		if svc.Contains(a) {
			t.Errorf("pod %d got %s, inside the service CIDR %s", i, a, svc)
		}
		got = append(got, a.String())
	}
	var want []string // (.10 went to the static case's eth0 above, and is not reused at once)
	for _, i := range []int{11, 12, 13, 14, 15, 32, 33, 34} {
		want = append(want, nth(red.Subnet4, i).String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("addresses %v, want %v", got, want)
	}
	for _, rt := range rts {
		e.mustDel(l, rt)
	}
}

// TestAnnotationPoolsRoutesStatic: spinneret.io/ippools picks the pool of a
// NIC, spinneret.io/routes adds a route on the NIC whose subnet holds its
// gateway, and the networks annotation's ips and mac are honoured.
func TestAnnotationPoolsRoutesStatic(t *testing.T) {
	e := multiEnv(t)
	l := e.multiConf(dual, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	rt := podRT("c1", p, map[string]string{
		request.AnnotNetworks: `[{"name":"blue","interface":"net1","ips":["198.51.100.42/24"],"mac":"0a:1b:2c:3d:4e:5f"}]`,
		request.AnnotIPPools:  `[{"interface":"eth0","ipv6":["red-v6"]}]`,
		request.AnnotRoutes:   `[{"dst":"198.18.0.0/24","gw":"198.51.100.1"}]`,
	})
	r := e.mustAdd(l, rt)
	var got []string
	for _, ip := range r.IPs {
		got = append(got, r.Interfaces[*ip.Interface].Name+"="+ip.Address.String())
	}
	if strings.Join(got, " ") != "eth0=2001:db8:0:1::a/64 net1=198.51.100.42/24 net1=2001:db8:0:2::a/64" {
		t.Fatalf("addresses %v", got)
	}
	if r.Interfaces[1].Mac != "0a:1b:2c:3d:4e:5f" {
		t.Errorf("net1 mac %s", r.Interfaces[1].Mac)
	}
	// the annotation's route went to net1 (its gateway is in blue's subnet),
	// in net1's table, and carries traffic from net1's address
	found := false
	for _, rr := range r.Routes {
		if rr.Dst.String() == "198.18.0.0/24" && rr.GW.String() == "198.51.100.1" && rr.Table != nil && *rr.Table == 102 {
			found = true
		}
	}
	if !found {
		t.Errorf("annotation route not in the result as 198.18.0.0/24 via 198.51.100.1 table 102: %v", r.Routes)
	}
	if err := p.PingFrom(netip.MustParseAddr("198.51.100.42"), e.topo.Nets[1].Remote4, 5*time.Second); err != nil {
		t.Errorf("via the annotation route: %v", err)
	}
	if err := e.check(l, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.mustDel(l, rt)
	e.sameAs(before, p)
}

// TestBadRequests: a bad request fails the ADD through the real binary with
// code 104 and an error naming it, before anything is created or
// allocated. Every request error is in request's table tests (no root);
// these prove the wiring, and the errors found once the NICs' pools are
// known (a route's gateway, a static address outside every pool).
func TestBadRequests(t *testing.T) {
	e := multiEnv(t)
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	cases := []struct {
		name  string
		ann   map[string]string
		extra string
		code  uint
		msg   string
	}{
		{"unknown network", map[string]string{request.AnnotNetworks: "purple"}, "", cni.ErrBadRequest, `k8s.v1.cni.cncf.io/networks[0]: network "purple" is not defined (networks: red, blue, green)`},
		{"other namespace", map[string]string{request.AnnotNetworks: "kube-system/blue"}, "", cni.ErrBadRequest, `network "kube-system/blue" is not in the pod's namespace default`},
		{"too many NICs", map[string]string{request.AnnotNetworks: "blue, green"}, `"maxNICs":2`, cni.ErrBadRequest, "3 NICs requested, at most 2 (maxNICs)"},
		{"master not allowed", map[string]string{request.AnnotNetworks: "blue"}, "", cni.ErrBadRequest, `network blue: master: "uplink1" (interface uplink1) is not in the node's allowedMasters [uplink0 uplink2]`},
		{"route gw off every NIC", map[string]string{request.AnnotRoutes: `[{"dst":"10.10.0.0/16","gw":"10.6.0.1"}]`}, "", cni.ErrBadRequest, "spinneret.io/routes[0].gw: 10.6.0.1 is in the subnet of none of the pod's NICs"},
		{"static address outside", map[string]string{request.AnnotNetworks: `[{"name":"blue","ips":["10.1.1.1/24"]}]`}, "", cni.ErrBadRequest, "static address 10.1.1.1 is in none of the pools"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := e.sub(t)
			if c.name == "master not allowed" {
				writeNodeConf(t, e.dir, "debug")
				b, _ := json.Marshal([]string{"uplink0", "uplink2"})
				appendFile(t, e.dir+"/node.yaml", "allowedMasters: "+string(b)+"\n")
				defer writeNodeConf(t, e.dir, "debug")
			}
			_, err := e.add(e.multiConf(dual, c.extra), podRT("c1", p, c.ann))
			wantErr(t, err, c.code, c.msg)
			e.sameAs(before, p)
		})
	}
}

// TestSubnetRouteInMain: a socket bound to no NIC reaches a peer on net1's
// subnet (its gateway's address stands in for a storage target) out of
// net1, as with Multus: net1's subnet route is in main as well as in its
// table. With coordinator.strictRouteTables the same packets leave by
// eth0's default route (the control). IPv4 and IPv6.
func TestSubnetRouteInMain(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			e := multiEnv(t)
			l := e.multiConf(dual, fmt.Sprintf(`"coordinator":{"strictRouteTables":%v}`, strict))
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue"})
			e.mustAdd(l, rt)
			n := e.topo.Nets[1]
			for _, peer := range []netip.Addr{n.GW4, n.GW6} {
				out, other := "net1", "eth0"
				if strict {
					out, other = "eth0", "net1"
				}
				// ten echo requests (each answered, or a timeout's worth
				// when strict); the NIC they leave by sends them all, the
				// other at most a link's own noise (IPv6 DAD, MLD)
				outBefore, _ := p.TxPackets(out)
				otherBefore, _ := p.TxPackets(other)
				for range 10 {
					err := p.Ping(peer, 350*time.Millisecond)
					if err != nil && !strict {
						t.Errorf("unbound ping of %s (on net1's subnet): %v", peer, err)
						break
					}
				}
				outAfter, _ := p.TxPackets(out)
				otherAfter, _ := p.TxPackets(other)
				if sent, noise := outAfter-outBefore, otherAfter-otherBefore; sent < 10 || noise > sent/2 {
					t.Errorf("unbound pings of %s: %s sent %d packets, %s %d; want them out of %s", peer, out, sent, other, noise, out)
				}
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
			e.sameAs(before, p)
		})
	}
}

// TestDefaultNetworkAnnotation: v1.multus-cni.io/default-network gives one
// pod's eth0 another network of the catalogue (blue instead of the primary
// red), beside a pod of the same config on the primary network; the
// pod's networks annotation adds red as net1. Traffic flows on each, and
// DEL leaves both pods and the node as before.
func TestDefaultNetworkAnnotation(t *testing.T) {
	e := multiEnv(t)
	l := e.multiConf(dual, "")
	n := e.topo.Nets
	pa, _ := e.topo.NewPod()
	pb, _ := e.topo.NewPod()
	before := e.snapshot(pa, pb)
	rtA := podRT("a", pa, map[string]string{request.AnnotDefaultNetwork: "blue", request.AnnotNetworks: "red"})
	rtB := podRT("b", pb, nil)
	ra, rb := e.mustAdd(l, rtA), e.mustAdd(l, rtB)
	for _, v4 := range []bool{true, false} {
		sub := map[bool]func(netlab.Net) netip.Prefix{true: func(x netlab.Net) netip.Prefix { return x.Subnet4 }, false: func(x netlab.Net) netip.Prefix { return x.Subnet6 }}[v4]
		gw := map[bool]func(netlab.Net) netip.Addr{true: func(x netlab.Net) netip.Addr { return x.GW4 }, false: func(x netlab.Net) netip.Addr { return x.GW6 }}[v4]
		for _, c := range []struct {
			pod *netlab.NS
			r   *current.Result
			nic string
			net int
		}{{pa, ra, "eth0", 1}, {pa, ra, "net1", 0}, {pb, rb, "eth0", 0}} {
			a := nicAddr(t, c.r, c.nic, v4)
			if !sub(*n[c.net]).Contains(a) {
				t.Errorf("%s's %s: %s, want one of %s", c.pod.Name, c.nic, a, sub(*n[c.net]))
			}
			if err := c.pod.PingFrom(a, gw(*n[c.net]), 5*time.Second); err != nil {
				t.Errorf("%s's %s -> its gateway: %v", c.pod.Name, c.nic, err)
			}
		}
		// pod a's default route (main) is eth0's, via blue's gateway
		fam := map[bool]int{true: netlink.FAMILY_V4, false: netlink.FAMILY_V6}[v4]
		rs, _ := pa.NL().RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		found := false
		for _, r := range rs {
			isDefault := r.Dst == nil
			if r.Dst != nil {
				ones, _ := r.Dst.Mask.Size()
				isDefault = ones == 0
			}
			found = found || isDefault && r.Gw.Equal(gw(*n[1]).AsSlice())
		}
		if !found {
			t.Errorf("pod a's main table has no default route via blue's gateway %s: %v", gw(*n[1]), rs)
		}
	}
	e.mustDel(l, rtA)
	e.mustDel(l, rtB)
	e.sameAs(before, pa, pb)
}
