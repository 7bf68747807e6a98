package tests

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
)

// TestMACAndMTU: the MAC comes from the runtime's "mac" capability, else
// CNI_ARGS MAC, else the config; the MTU from the config.
func TestMACAndMTU(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, extra, wantMAC string
		rt                   func(id string) map[string]interface{}
		args                 [][2]string
		wantMTU              int
	}{
		{"config", `"mac":"0A:1B:00:00:00:01","mtu":1400`, "0a:1b:00:00:00:01", nil, nil, 1400},
		{"cni args", `"mac":"0a:1b:00:00:00:01"`, "0a:1b:00:00:00:02", nil, [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "0a:1b:00:00:00:02"}}, 1500},
		{"capability", `"mac":"0a:1b:00:00:00:01"`, "0a:1b:00:00:00:03", func(string) map[string]interface{} {
			return map[string]interface{}{"mac": "0a:1b:00:00:00:03"}
		}, [][2]string{{"MAC", "0a:1b:00:00:00:02"}}, 1500},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, _ := e.topo.NewPod()
			l := e.confList("1.0.0", dual, c.extra)
			rt := rtConf("c-"+strings.ReplaceAll(c.name, " ", "-"), p)
			rt.Args = c.args
			if c.rt != nil {
				rt.CapabilityArgs = c.rt(rt.ContainerID)
			}
			r := e.mustAdd(l, rt)
			link, err := p.NL().LinkByName("eth0")
			if err != nil {
				t.Fatal(err)
			}
			if link.Attrs().HardwareAddr.String() != c.wantMAC || r.Interfaces[0].Mac != c.wantMAC {
				t.Errorf("mac = %s (result %s), want %s", link.Attrs().HardwareAddr, r.Interfaces[0].Mac, c.wantMAC)
			}
			if link.Attrs().MTU != c.wantMTU || r.Interfaces[0].Mtu != c.wantMTU {
				t.Errorf("mtu = %d (result %d), want %d", link.Attrs().MTU, r.Interfaces[0].Mtu, c.wantMTU)
			}
			if err := e.check(l, rt); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.mustDel(l, rt)
		})
	}
	p, _ := e.topo.NewPod()
	rt := rtConf("bad-mac", p)
	rt.Args = [][2]string{{"MAC", "01:00:5e:00:00:01"}}
	_, err := e.add(e.confList("1.0.0", v4, ""), rt)
	wantErr(t, err, types.ErrInvalidEnvironmentVariables, `CNI_ARGS MAC: "01:00:5e:00:00:01" is not a unicast MAC address`)
}

// TestCheckReportsDrift: CHECK names what changed in the pod since ADD.
func TestCheckReportsDrift(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	p, _ := e.topo.NewPod()
	rt := rtConf("c1", p)
	e.mustAdd(l, rt)
	h := p.NL()
	eth0, _ := h.LinkByName("eth0")
	routes, _ := h.RouteList(eth0, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Gw != nil {
			h.RouteDel(&r) // the default route
		}
	}
	addrs, _ := h.AddrList(eth0, netlink.FAMILY_V6)
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() {
			h.AddrDel(eth0, &a)
		}
	}
	err := e.check(l, rt)
	if err == nil {
		t.Fatal("CHECK passed after the pod's route and address were removed")
	}
	for _, want := range []string{"eth0: route 0.0.0.0/0 via 192.0.2.1 dev eth0 in pod missing", "eth0: address 2001:db8:0:1::10/64 missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK error %q does not report %q", err, want)
		}
	}
	h.LinkSetDown(eth0)
	h.LinkSetMTU(eth0, 1400)
	h.LinkSetHardwareAddr(eth0, []byte{0x0a, 0x1b, 0, 0, 0, 9})
	err = e.check(l, rt)
	for _, want := range []string{"eth0: link is down", "eth0: mtu 1400, was 1500 at ADD", "eth0: mac 0a:1b:00:00:00:09, was "} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK after changing eth0: %v, want %q", err, want)
		}
	}
	e.mustDel(l, rt)
	if err := e.check(l, rt); err == nil {
		t.Error("CHECK passed for a deleted attachment")
	}
}
