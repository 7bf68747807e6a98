package plan

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/request"
)

var update = flag.Bool("update", false, "rewrite the golden plans in testdata/")

// TestPlanGolden compares plans, as data, with golden files for
// representative configs. Run `go test ./plan -update` to accept a change.
func TestPlanGolden(t *testing.T) {
	cases := []struct {
		name, config string
		mac          string
		addrs        []string // pool=address/len
		defaultNIC   string   // the NIC the pod moves the default route to
	}{
		{"ipv4", `{"cniVersion":"1.0.0","name":"n","type":"spinneret","master":"ens192",
			"ipam":{"pools":[{"name":"v4","subnet":"10.6.0.0/16","gateway":"10.6.0.1"}]}}`,
			"", []string{"v4=10.6.212.100/16"}, ""},
		{"ipv6-private-mtu", `{"cniVersion":"1.0.0","name":"n","type":"spinneret","master":"ens192","mode":"private","mtu":1400,
			"ipam":{"pools":[{"name":"v6","subnet":"fd00:6::/64","gateway":"fd00:6::1","routes":[{"dst":"fd00:99::/48","gw":"fd00:6::fe"}]}]}}`,
			"", []string{"v6=fd00:6::100/64"}, ""},
		{"dual-mac-routes", `{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"bond0","mode":"vepa","mac":"0a:1b:00:00:00:01",
			"ipam":{"pools":[
				{"name":"v4","subnet":"10.6.0.0/16","gateway":"10.6.0.1","routes":[{"dst":"10.10.0.0/16"}]},
				{"name":"v6","subnet":"fd00:6::/64","gateway":"fd00:6::1"}]}}`,
			"0a:1b:00:00:00:01", []string{"v4=10.6.0.7/16", "v6=fd00:6::7/64"}, ""},
		{"no-gateway-explicit-default", `{"cniVersion":"0.3.1","name":"n","type":"spinneret","master":"eth1","mode":"passthru",
			"ipam":{"pools":[
				{"name":"ongw","subnet":"192.0.2.0/24","gateway":"192.0.2.1","routes":[{"dst":"0.0.0.0/0","gw":"192.0.2.254"}]},
				{"name":"onlink","subnet":"fd00:7::/64","routes":[{"dst":"fd00:8::/64"}]}]}}`,
			"", []string{"ongw=192.0.2.9/24", "onlink=fd00:7::9/64"}, ""},
		// three NICs: the subnets of net1 and net2 and net1's storage route
		// are in main too; the route both claim is in their tables alone
		{"three-nics", `{"cniVersion":"1.1.0","name":"n","type":"spinneret","networks":[
			{"name":"front","master":"ens192","ipam":{"pools":[{"name":"f","subnet":"10.6.0.0/16","gateway":"10.6.0.1"}]}},
			{"name":"storage","master":"ens224","ipam":{"pools":[{"name":"s","subnet":"172.20.0.0/24","gateway":"172.20.0.1","routes":[{"dst":"172.30.0.0/16"},{"dst":"10.99.0.0/16"}]}]}},
			{"name":"backup","master":"ens256","ipam":{"pools":[{"name":"b","subnet":"172.21.0.0/24","gateway":"172.21.0.1","routes":[{"dst":"10.99.0.0/16"}]},
				{"name":"b6","subnet":"fd00:21::/64","gateway":"fd00:21::1"}]}}]}`,
			"", []string{"f=10.6.0.5/16", "s=172.20.0.5/24", "b=172.21.0.6/24", "b6=fd00:21::5/64"}, ""},
		{"three-nics-strict", `{"cniVersion":"1.1.0","name":"n","type":"spinneret","coordinator":{"strictRouteTables":true},"networks":[
			{"name":"front","master":"ens192","ipam":{"pools":[{"name":"f","subnet":"10.6.0.0/16","gateway":"10.6.0.1"}]}},
			{"name":"storage","master":"ens224","ipam":{"pools":[{"name":"s","subnet":"172.20.0.0/24","gateway":"172.20.0.1","routes":[{"dst":"172.30.0.0/16"}]}]}}]}`,
			"", []string{"f=10.6.0.5/16", "s=172.20.0.5/24"}, ""},
		// overlay: eth0 from the delegate (ptp-shaped, dual stack), two
		// underlay NICs; then the default route moved to net1
		{"overlay", overlayConf, "", []string{"s=172.20.0.5/24", "b=172.21.0.6/24", "b6=fd00:21::5/64"}, ""},
		{"overlay-default-net1", overlayConf, "", []string{"s=172.20.0.5/24", "b=172.21.0.6/24", "b6=fd00:21::5/64"}, "net1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := conf.Parse([]byte(c.config))
			if err != nil {
				t.Fatal(err)
			}
			// one NIC per network of the catalogue that has an address
			var nics []NIC
			for i, nw := range cfg.Networks {
				nic := NIC{NIC: request.NIC{IfName: "eth0", Network: nw}}
				if i == 0 {
					nic.MAC = c.mac
				} else {
					nic.IfName = fmt.Sprintf("net%d", i)
				}
				for _, a := range c.addrs {
					pool, addr, _ := strings.Cut(a, "=")
					p := nic.pool(pool)
					if p == nil {
						continue
					}
					nic.Addrs = append(nic.Addrs, ipam.Allocation{Pool: pool, Address: netip.MustParsePrefix(addr), Gateway: p.Gateway})
				}
				if nw.Delegate != nil {
					nic.UseDelegated(delegateResult)
				}
				nic.DefaultRoute = c.defaultNIC == nic.IfName
				if len(nic.Addrs) > 0 {
					nics = append(nics, nic)
				}
			}
			in := Input{ContainerID: "0123456789abcdef", NICs: nics,
				NodeIPs: []netip.Addr{netip.MustParseAddr("10.6.212.101"), netip.MustParseAddr("fd00:6::101")}}
			if nics[0].Network.Delegate != nil {
				in.Overlay = delegateEth0
			}
			got, err := json.MarshalIndent(txn.Steps(New(in).Ops), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "plan-"+c.name+".json")
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Fatalf("plan differs from %s:\n%s", golden, got)
			}
			// a plan survives the journal: decode it and encode it again
			var back []txn.Step
			if err := json.Unmarshal(got, &back); err != nil {
				t.Fatal(err)
			}
			again, _ := json.MarshalIndent(back, "", "  ")
			if string(again)+"\n" != string(got) {
				t.Fatalf("plan does not round-trip through JSON:\n%s", again)
			}
		})
	}
}

// overlayConf has a delegate primary network and two underlay networks,
// with the cluster's CIDRs.
const overlayConf = `{"cniVersion":"1.1.0","name":"n","type":"spinneret",
	"coordinator":{"serviceCIDR":["10.96.0.0/12","fd00:96::/108"],"podCIDR":["10.244.0.0/16","fd00:244::/56"]},"networks":[
	{"name":"pods","delegate":{"conflist":"/etc/cni/net.d/10-calico.conflist"}},
	{"name":"storage","master":"ens224","ipam":{"pools":[{"name":"s","subnet":"172.20.0.0/24","gateway":"172.20.0.1","routes":[{"dst":"172.30.0.0/16"}]}]}},
	{"name":"backup","master":"ens256","ipam":{"pools":[{"name":"b","subnet":"172.21.0.0/24","gateway":"172.21.0.1"},
		{"name":"b6","subnet":"fd00:21::/64","gateway":"fd00:21::1"}]}}]}`

// delegateResult and delegateEth0 are eth0 as a ptp-shaped delegate
// makes it: its result, and its link and routes as the ADD reads them.
var (
	delegateResult = &current.Result{
		Interfaces: []*current.Interface{{Name: "veth1a2b3c4d", Mac: "ee:ee:ee:ee:ee:ee"}, {Name: "eth0", Mac: "0a:58:0a:f4:01:05", Sandbox: "/var/run/netns/p"}},
		IPs: []*current.IPConfig{
			{Interface: current.Int(1), Address: net.IPNet{IP: net.ParseIP("10.244.1.5").To4(), Mask: net.CIDRMask(24, 32)}, Gateway: net.ParseIP("10.244.1.1")},
			{Interface: current.Int(1), Address: net.IPNet{IP: net.ParseIP("fd00:244:1::5"), Mask: net.CIDRMask(64, 128)}, Gateway: net.ParseIP("fd00:244:1::1")}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}, {Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}},
	}
	delegateEth0 = &coordinator.Overlay{Link: "eth0", MAC: "0a:58:0a:f4:01:05", HostVeth: "veth1a2b3c4d", HostMAC: "ee:ee:ee:ee:ee:ee",
		Routes: []coordinator.DelegateRoute{
			{Dst: netip.MustParsePrefix("10.244.1.1/32"), Src: netip.MustParseAddr("10.244.1.5")},
			{Dst: netip.MustParsePrefix("10.244.1.0/24"), GW: netip.MustParseAddr("10.244.1.1"), Src: netip.MustParseAddr("10.244.1.5")},
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.244.1.1")},
			{Dst: netip.MustParsePrefix("fd00:244:1::/64"), GW: netip.MustParseAddr("fd00:244:1::1"), Metric: 1024},
			{Dst: netip.MustParsePrefix("::/0"), GW: netip.MustParseAddr("fd00:244:1::1"), Metric: 1024, MTU: 1400}}}
)

// TestLayoutClaims: a subnet two NICs share, a route both claim, and a
// route whose gateway is on such a subnet stay in the NICs' tables alone;
// a NIC's own subnet and routes are in main too.
func TestLayoutClaims(t *testing.T) {
	cfg, err := conf.Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","networks":[
		{"name":"a","master":"m0","ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24","gateway":"10.0.0.1"}]}},
		{"name":"b","master":"m1","ipam":{"pools":[{"name":"b","subnet":"10.1.0.0/24","gateway":"10.1.0.1","routes":[{"dst":"10.9.0.0/16"},{"dst":"10.8.0.0/16"}]}]}},
		{"name":"c","master":"m2","ipam":{"pools":[{"name":"c","subnet":"10.1.0.0/24","gateway":"10.1.0.1","routes":[{"dst":"10.9.0.0/16"}]},
			{"name":"c6","subnet":"fd00:1::/64","gateway":"fd00:1::1","routes":[{"dst":"fd00:9::/48"}]}]}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	addrs := [][]string{{"a=10.0.0.5/24"}, {"b=10.1.0.5/24"}, {"c=10.1.0.6/24", "c6=fd00:1::6/64"}}
	var nics []NIC
	for i, nw := range cfg.Networks {
		n := NIC{NIC: request.NIC{IfName: fmt.Sprintf("net%d", i), Network: nw}}
		for _, a := range addrs[i] {
			pool, addr, _ := strings.Cut(a, "=")
			n.Addrs = append(n.Addrs, ipam.Allocation{Pool: pool, Address: netip.MustParsePrefix(addr), Gateway: n.pool(pool).Gateway})
		}
		nics = append(nics, n)
	}
	// a pod whose NICs are all userspace VFs has no netdev NICs to lay out
	if l := layout([]NIC{}); len(l) != 0 {
		t.Errorf("layout of no NICs: %v", l)
	}
	l := layout(nics)
	str := func(rs []Route) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Dst.String())
		}
		return strings.Join(out, " ")
	}
	for i, want := range []struct {
		table         int
		main, subnets string
	}{{0, "", ""}, {FirstTable + 1, "", ""}, {FirstTable + 2, "fd00:9::/48", "fd00:1::/64"}} {
		var subs []string
		for _, p := range l[i].MainSubnets {
			subs = append(subs, p.String())
		}
		if l[i].Table != want.table {
			t.Errorf("NIC %d table %d", i, l[i].Table)
		}
		if got := str(l[i].Main); got != want.main {
			t.Errorf("NIC %d routes in main too: %q, want %q", i, got, want.main)
		}
		if got := strings.Join(subs, " "); got != want.subnets {
			t.Errorf("NIC %d subnets in main: %q, want %q", i, got, want.subnets)
		}
	}
}
