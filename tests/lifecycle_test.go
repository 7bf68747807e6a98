package tests

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/netlab"
)

func addrOf(t *testing.T, r *current.Result, v4 bool) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a = a.Unmap(); a.Is4() == v4 {
			return a
		}
	}
	t.Fatalf("result has no IPv%d address: %v", map[bool]int{true: 4, false: 6}[v4], r)
	return netip.Addr{}
}

func (f family) has4() bool { return f != v6 }
func (f family) has6() bool { return f != v4 }

// TestLifecycle drives the binary through libcni for every CNI version and
// address family: two pods get addresses, talk to each other and to the
// gateway, pass CHECK, GC and STATUS, and DEL leaves the node, the pods and
// the pool exactly as they were.
func TestLifecycle(t *testing.T) {
	for _, ver := range conf.SupportedVersions {
		for _, fam := range families {
			t.Run(ver+"/"+string(fam), func(t *testing.T) {
				e := newEnv(t)
				l := e.confList(ver, fam, "")
				p1, _ := e.topo.NewPod()
				p2, _ := e.topo.NewPod()
				before := e.snapshot(p1, p2)
				rt1, rt2 := rtConf("c1", p1), rtConf("c2", p2)

				raw1, err := e.add(l, rt1)
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				if raw1.Version() != ver {
					t.Fatalf("result version %s, want the config's %s", raw1.Version(), ver)
				}
				r1, _ := current.NewResultFromResult(raw1)
				r2 := e.mustAdd(l, rt2)
				verifyResult(t, r1, p1, fam)

				for _, v4 := range []bool{true, false} {
					if (v4 && !fam.has4()) || (!v4 && !fam.has6()) {
						continue
					}
					gw := netlab.Gateway6
					if v4 {
						gw = netlab.Gateway4
					}
					for _, c := range []struct {
						from *netlab.NS
						dst  netip.Addr
					}{{p1, addrOf(t, r2, v4)}, {p2, addrOf(t, r1, v4)}, {p1, gw}, {p2, gw}} {
						if err := c.from.Ping(c.dst, 5*time.Second); err != nil {
							t.Error(err)
						}
					}
				}

				if ok, _ := version.GreaterThanOrEqualTo(ver, "0.4.0"); ok {
					if err := e.check(l, rt1); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
				if ok, _ := version.GreaterThanOrEqualTo(ver, "1.1.0"); ok {
					if err := e.status(l); err != nil {
						t.Errorf("STATUS: %v", err)
					}
					// every attachment valid: GC removes nothing
					if err := e.gc(l, types.GCAttachment{ContainerID: "c1", IfName: "eth0"}, types.GCAttachment{ContainerID: "c2", IfName: "eth0"}); err != nil {
						t.Errorf("GC: %v", err)
					}
					if err := e.check(l, rt2); err != nil {
						t.Errorf("CHECK after GC: %v", err)
					}
				}
				e.mustDel(l, rt1)
				e.mustDel(l, rt2)
				e.sameAs(before, p1, p2)
				e.mustDel(l, rt1) // DEL twice
				e.sameAs(before, p1, p2)
			})
		}
	}
}

// TestVersion: libcni's VERSION call reports every supported spec version.
func TestVersion(t *testing.T) {
	e := newEnv(t)
	info, err := e.cni.GetVersionInfo(e.ctx, "spinneret")
	if err != nil {
		t.Fatal(err)
	}
	got := info.SupportedVersions()
	if strings.Join(got, ",") != strings.Join(conf.SupportedVersions, ",") {
		t.Fatalf("VERSION = %v, want %v", got, conf.SupportedVersions)
	}
}

// verifyResult checks the result against the pod's kernel state: the
// interface with its sandbox and MAC, addresses with interface index and
// gateway, routes, DNS; IPv6 addresses are usable at once (not tentative).
func verifyResult(t *testing.T, r *current.Result, pod *netlab.NS, fam family) {
	t.Helper()
	// eth0, then the coordinator's veth: the node end, the pod end
	if len(r.Interfaces) != 3 || r.Interfaces[0].Name != "eth0" || r.Interfaces[0].Sandbox != pod.Path() ||
		!strings.HasPrefix(r.Interfaces[1].Name, "spn") || r.Interfaces[1].Sandbox != "" ||
		r.Interfaces[2].Name != "veth0" || r.Interfaces[2].Sandbox != pod.Path() {
		t.Fatalf("interfaces = %v, want eth0 and veth0 in %s and the node's veth", r.Interfaces, pod.Path())
	}
	l, err := pod.NL().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "macvlan" || l.Attrs().HardwareAddr.String() != r.Interfaces[0].Mac {
		t.Errorf("eth0 is %s %s, result says macvlan %s", l.Type(), l.Attrs().HardwareAddr, r.Interfaces[0].Mac)
	}
	want := map[family]int{v4: 1, v6: 1, dual: 2}[fam]
	if len(r.IPs) != want {
		t.Fatalf("%d IPs, want %d: %v", len(r.IPs), want, r.IPs)
	}
	addrs, _ := pod.NL().AddrList(l, netlink.FAMILY_ALL)
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface != 0 || ip.Gateway == nil {
			t.Errorf("IP %v: want interface 0 and a gateway", ip)
		}
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == ip.Address.String() {
				found = true
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("%s is tentative: ADD must not leave addresses waiting for DAD", a.IPNet)
				}
			}
		}
		if !found {
			t.Errorf("%s not on eth0", ip.Address.String())
		}
	}
	if len(r.Routes) != 2*want { // default + the pool's extra route, per family
		t.Errorf("routes = %v", r.Routes)
	}
	if len(r.DNS.Nameservers) != 1 {
		t.Errorf("dns = %v", r.DNS)
	}
}

// cniErr extracts the plugin's CNI error.
func cniErr(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return te
}

func wantErr(t *testing.T, err error, code uint, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want code %d %q", code, substr)
	}
	te := cniErr(t, err)
	if te.Code != code || !strings.Contains(te.Msg, substr) {
		t.Fatalf("error = code %d %q, want code %d containing %q", te.Code, te.Msg, code, substr)
	}
}
