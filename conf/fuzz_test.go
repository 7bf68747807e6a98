package conf

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// seedConfigs are configs of the table tests: the base, the README's
// examples (deploy), and each bad case's mutation.
func seedConfigs(f *testing.F) {
	f.Helper()
	f.Add([]byte(base))
	for _, p := range []string{"../deploy/00-spinneret.conflist", "../deploy/10-drivers-example.conflist", "../request/testdata/catalogue.json"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	for _, v := range []string{`{"mac":"0a:00:00:00:00:01"}`, `{"txQueueLen":4294967296}`, `{"name":"a","subnet":"127.0.0.0/24"}`, `["any"]`, `["10.0.0.0/8"]`} {
		f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":` + v + `,"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	}
}

// FuzzParse: any CNI config (single or conflist) is accepted or refused
// with an error, never a panic; parsing is deterministic.
func FuzzParse(f *testing.F) {
	seedConfigs(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		c1, err1 := Parse(b)
		c2, err2 := Parse(b)
		if (err1 == nil) != (err2 == nil) || err1 == nil && !reflect.DeepEqual(c1, c2) {
			t.Fatalf("not deterministic: %v / %v", err1, err2)
		}
		if err1 == nil {
			for _, n := range c1.Networks {
				for _, p := range n.Pools {
					if _, what := specialOverlap(p.Subnet); what != "" {
						t.Fatalf("accepted pool %s overlaps %s", p.Subnet, what)
					}
				}
			}
		}
	})
}

// FuzzNADNetwork: any NAD config, against a config that allows every
// subnet and one that allows none: interpreted or refused, never a panic;
// without nadSubnets no NAD network has address space of its own.
func FuzzNADNetwork(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"0.3.1","name":"storage","plugins":[{"type":"macvlan","master":"eth2","mode":"private","mtu":1400,"ipam":{"type":"spinneret","pools":[{"name":"v4","subnet":"10.7.0.0/16","gateway":"10.7.0.1"}]}},{"type":"tuning","sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1"}},{"type":"coordinator","podMACPrefix":"0a:1b"}]}`,
		`{"cniVersion":"0.3.0","type":"macvlan","master":"eth0","ipam":{"type":"host-local","subnet":"192.168.1.0/24"}}`,
		`{"cniVersion":"0.3.1","name":"sriov-net","type":"sriov","vlan":10,"spoofchk":"off","trust":"on","max_tx_rate":1000,"ipam":{"type":"spinneret","pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}`,
		`{"type":"macvlan","master":"eth1","ipam":{"ippools":["a"]}}`,
		`{"plugins":[{"type":"macvlan","master":"eth1","ipam":{"backend":"kubernetes"}},{"type":"sbr"}]}`,
	} {
		f.Add("team-a", "storage", []byte(s))
	}
	open, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":["any"],"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	if err != nil {
		f.Fatal(err)
	}
	closed, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ns, name string, b []byte) {
		open.NADNetwork(ns, name, b, "intel.com/sriov")
		n, err := closed.NADNetwork(ns, name, b, "intel.com/sriov")
		if err == nil && (len(n.Pools) > 0 || n.DelegateIPAM != nil) {
			t.Fatalf("without nadSubnets a NAD got address space of its own: %+v", n)
		}
	})
}

// FuzzLoadNode: any node conf file is loaded or refused, never a panic.
func FuzzLoadNode(f *testing.F) {
	for _, p := range []string{"../deploy/node.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("masters: {logical-green: uplink2}\nallowedMasters: [uplink0]\napiTimeout: 2s\npoolCacheTTL: 0s\nnodeIPs: [192.0.2.1]\n"))
	f.Add([]byte("stateDir: /tmp/x\nlogLevel: debug\nkubeconfig: relative\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "node.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		LoadNode(p, true)
		LoadNodeForDel(p, true)
	})
}
