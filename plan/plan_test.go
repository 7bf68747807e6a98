package plan

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spinneret-cni/spinneret/conf"
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
	}{
		{"ipv4", `{"cniVersion":"1.0.0","name":"n","type":"spinneret","master":"ens192",
			"ipam":{"pools":[{"name":"v4","subnet":"10.6.0.0/16","gateway":"10.6.0.1"}]}}`,
			"", []string{"v4=10.6.212.100/16"}},
		{"ipv6-private-mtu", `{"cniVersion":"1.0.0","name":"n","type":"spinneret","master":"ens192","mode":"private","mtu":1400,
			"ipam":{"pools":[{"name":"v6","subnet":"fd00:6::/64","gateway":"fd00:6::1","routes":[{"dst":"fd00:99::/48","gw":"fd00:6::fe"}]}]}}`,
			"", []string{"v6=fd00:6::100/64"}},
		{"dual-mac-routes", `{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"bond0","mode":"vepa","mac":"0a:1b:00:00:00:01",
			"ipam":{"pools":[
				{"name":"v4","subnet":"10.6.0.0/16","gateway":"10.6.0.1","routes":[{"dst":"10.10.0.0/16"}]},
				{"name":"v6","subnet":"fd00:6::/64","gateway":"fd00:6::1"}]}}`,
			"0a:1b:00:00:00:01", []string{"v4=10.6.0.7/16", "v6=fd00:6::7/64"}},
		{"no-gateway-explicit-default", `{"cniVersion":"0.3.1","name":"n","type":"spinneret","master":"eth1","mode":"passthru",
			"ipam":{"pools":[
				{"name":"ongw","subnet":"192.0.2.0/24","gateway":"192.0.2.1","routes":[{"dst":"0.0.0.0/0","gw":"192.0.2.254"}]},
				{"name":"onlink","subnet":"fd00:7::/64","routes":[{"dst":"fd00:8::/64"}]}]}}`,
			"", []string{"ongw=192.0.2.9/24", "onlink=fd00:7::9/64"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := conf.Parse([]byte(c.config))
			if err != nil {
				t.Fatal(err)
			}
			nic := NIC{NIC: request.NIC{IfName: "eth0", Network: cfg.Network, MAC: c.mac}}
			for _, a := range c.addrs {
				var pool, addr string
				for i := range a {
					if a[i] == '=' {
						pool, addr = a[:i], a[i+1:]
					}
				}
				al := ipam.Allocation{Pool: pool, Address: netip.MustParsePrefix(addr)}
				if p := nic.pool(pool); p != nil {
					al.Gateway = p.Gateway
				}
				nic.Addrs = append(nic.Addrs, al)
			}
			in := Input{ContainerID: "0123456789abcdef", NICs: []NIC{nic},
				NodeIPs: []netip.Addr{netip.MustParseAddr("10.6.212.101"), netip.MustParseAddr("fd00:6::101")}}
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
