package tests

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/request"
)

// raPrefix is what the rogue router advertises: off every pool.
var raPrefix = netip.MustParsePrefix("2001:db8:ab::/64")

// sendRAs has the gateway of the topology's network i advertise raPrefix
// for SLAAC and itself as a default router, n times, on the switch.
func sendRAs(t *testing.T, e *env, i, n int) {
	t.Helper()
	gw := e.topo.Nets[i].Gateway
	err := gw.Do(func() error {
		ifi, err := net.InterfaceByName("gw0")
		if err != nil {
			return err
		}
		// the advertisement needs the gateway's link-local address
		var c *ndp.Conn
		for deadline := time.Now().Add(5 * time.Second); ; {
			if c, _, err = ndp.Listen(ifi, ndp.LinkLocal); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		defer c.Close()
		ra := &ndp.RouterAdvertisement{CurrentHopLimit: 64, RouterLifetime: 30 * time.Minute, Options: []ndp.Option{
			&ndp.PrefixInformation{PrefixLength: 64, OnLink: true, AutonomousAddressConfiguration: true,
				ValidLifetime: time.Hour, PreferredLifetime: time.Hour, Prefix: raPrefix.Addr()},
			&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: ifi.HardwareAddr},
		}}
		for k := 0; k < n; k++ {
			if err := c.WriteTo(ra, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("router advertisements from the gateway: %v", err)
	}
}

// raState is what the RAs left on the pod's NIC: SLAAC addresses in
// raPrefix, and default routes via a link-local router (any table).
func raState(t *testing.T, p interface {
	NL() *netlink.Handle
}, link string) (slaac, routes int) {
	t.Helper()
	ln, err := p.NL().LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := p.NL().AddrList(ln, netlink.FAMILY_V6)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && raPrefix.Contains(ip) {
			slaac++
		}
	}
	rs, _ := p.NL().RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: ln.Attrs().Index, Table: unixRTTableUnspec}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	for _, r := range rs {
		if r.Gw != nil && r.Gw.IsLinkLocalUnicast() {
			routes++
		}
	}
	return slaac, routes
}

// unixRTTableUnspec lists routes of every table.
const unixRTTableUnspec = 0

// TestRouterAdvertisements: a router advertising a SLAAC prefix and
// itself as default router on the underlay adds neither an address nor a
// route to a pod's NICs: the plan sets accept_ra and autoconf off on each
// before it is up. The same RAs, once the NIC accepts them again, do add
// both: they reached it.
func TestRouterAdvertisements(t *testing.T) {
	e := multiEnv(t)
	l := e.multiConf(dual, "")
	p, _ := e.topo.NewPod()
	rt := podRT("c1", p, map[string]string{request.AnnotNetworks: "blue"})
	e.mustAdd(l, rt)
	for _, k := range []string{"accept_ra", "autoconf"} {
		var got []byte
		p.Do(func() error {
			var err error
			got, err = os.ReadFile("/proc/sys/net/ipv6/conf/net1/" + k)
			return err
		})
		if string(got) != "0\n" {
			t.Errorf("net1 %s = %q, want 0", k, got)
		}
	}
	sendRAs(t, e, 1, 5)
	if s, r := raState(t, p, "net1"); s != 0 || r != 0 {
		t.Errorf("after RAs: %d SLAAC address(es) in %s and %d route(s) via a link-local router on net1", s, raPrefix, r)
	}
	// the control: net1 accepting RAs again gets both from the same RAs
	p.Do(func() error {
		os.WriteFile("/proc/sys/net/ipv6/conf/net1/accept_ra", []byte("2"), 0)
		return os.WriteFile("/proc/sys/net/ipv6/conf/net1/autoconf", []byte("1"), 0)
	})
	var s, r int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		sendRAs(t, e, 1, 2)
		if s, r = raState(t, p, "net1"); s > 0 && r > 0 {
			break
		}
	}
	if s == 0 || r == 0 {
		t.Fatalf("control: with accept_ra on, the RAs gave %d SLAAC address(es) and %d route(s): they never reached net1, so the test proves nothing", s, r)
	}
	e.mustDel(l, rt)
}
