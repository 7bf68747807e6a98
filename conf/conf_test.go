package conf

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const base = `{
  "cniVersion": "1.0.0", "name": "underlay", "type": "spinneret",
  "master": "uplink",
  "ipam": {"pools": [
    {"name": "v4", "subnet": "192.0.2.0/24", "ranges": [{"start": "192.0.2.10", "end": "192.0.2.20"}],
     "exclude": ["192.0.2.15", "192.0.2.16/31"], "gateway": "192.0.2.1", "routes": [{"dst": "198.51.100.0/24"}]},
    {"name": "v6", "subnet": "2001:db8::/64", "gateway": "2001:db8::1"}
  ]}
}`

// mutate applies a JSON edit to base: path "a.b[0].c" set to value (raw
// JSON); value "" deletes the key.
func mutate(t *testing.T, path, value string) []byte {
	t.Helper()
	var m any
	json.Unmarshal([]byte(base), &m)
	parts := strings.Split(path, ".")
	cur := m
	for i, p := range parts {
		name, idx := p, -1
		if j := strings.Index(p, "["); j >= 0 {
			name = p[:j]
			idx = int(p[j+1] - '0')
		}
		obj := cur.(map[string]any)
		last := i == len(parts)-1
		if idx >= 0 {
			arr := obj[name].([]any)
			if last {
				var v any
				json.Unmarshal([]byte(value), &v)
				arr[idx] = v
				break
			}
			cur = arr[idx]
			continue
		}
		if last {
			if value == "" {
				delete(obj, name)
			} else {
				var v any
				if err := json.Unmarshal([]byte(value), &v); err != nil {
					t.Fatalf("bad test value %s: %v", value, err)
				}
				obj[name] = v
			}
			break
		}
		cur = obj[name]
	}
	b, _ := json.Marshal(m)
	return b
}

func TestParseValid(t *testing.T) {
	c, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	if n.Driver != "macvlan" || n.Mode != "bridge" || n.Master != "uplink" || len(n.Pools) != 2 {
		t.Fatalf("defaults not applied: %+v", n)
	}
	v6 := n.Pools[1]
	if v6.Ranges[0].Start.String() != "2001:db8::1" || v6.Ranges[0].End.String() != "2001:db8::ffff:ffff:ffff:ffff" {
		t.Errorf("default v6 range = %v", v6.Ranges)
	}
	v4 := n.Pools[0]
	for _, a := range []string{"192.0.2.1", "192.0.2.9", "192.0.2.15", "192.0.2.16", "192.0.2.17", "192.0.2.21"} {
		if !v4.Excluded(mustAddr(a)) {
			t.Errorf("%s should be excluded", a)
		}
	}
	for _, a := range []string{"192.0.2.10", "192.0.2.14", "192.0.2.18", "192.0.2.20"} {
		if v4.Excluded(mustAddr(a)) {
			t.Errorf("%s should be allocatable", a)
		}
	}
	if c.NodeConfPath != DefaultNodeConf || c.NodeConfExplicit {
		t.Errorf("node conf = %s %v", c.NodeConfPath, c.NodeConfExplicit)
	}
}

func TestDefaultRangeV4(t *testing.T) {
	r := DefaultRange(mustPrefix("10.1.2.0/23"))
	if r.Start.String() != "10.1.2.1" || r.End.String() != "10.1.3.254" {
		t.Fatalf("range = %v", r)
	}
}

// TestParseErrors: one case per field; each error names the field and value.
func TestParseErrors(t *testing.T) {
	cases := []struct{ path, value, want string }{
		{"cniVersion", `"0.2.0"`, `cniVersion: "0.2.0" is not supported`},
		{"name", `"Bad Name"`, `name: "Bad Name" is not a valid network name`},
		{"name", `"-net"`, `name: "-net" is not a valid network name`},
		{"type", `"macvlan"`, `type: "macvlan", want "spinneret"`},
		{"capabilities", `{"hostPorts":true}`, `capabilities.hostPorts: unknown capability`},
		{"nodeConf", `"etc/node.yaml"`, `nodeConf: "etc/node.yaml" is not an absolute path`},
		{"driver", `"bridge"`, `driver: "bridge" is not supported (supported: macvlan, ipvlan, sriov)`},
		{"flag", `"bridge"`, `flag: "bridge": flags are ipvlan's`},
		{"master", `""`, `master: "" is not a valid interface name`},
		{"master", `"a-name-longer-than-15"`, `master: "a-name-longer-than-15" is not a valid interface name`},
		{"mode", `"bridgy"`, `mode: "bridgy" is not a macvlan mode`},
		{"mtu", `42`, `mtu: 42 is out of range`},
		{"mtu", `1000`, `mtu: 1000 is below IPv6's minimum 1280 but pool "v6" is IPv6`},
		{"mtu", `"big"`, `mtu: value of type string where int is expected`},
		{"mac", `"zz:zz"`, `mac: "zz:zz" is not a MAC address`},
		{"mac", `"01:00:5e:00:00:01"`, `mac: "01:00:5e:00:00:01" is a multicast MAC address`},
		{"runtimeConfig", `{"mac":"0a:00:00:00:00:01"}`, `runtimeConfig.mac: the mac capability is not declared in capabilities`},
		{"runtimeConfig", `{"portMappings":[]}`, `runtimeConfig.portMappings: the portMappings capability is not declared in capabilities`},
		{"runtimeConfig", `{"hostPorts":[]}`, `runtimeConfig.hostPorts: unknown capability`},
		{"runtimeConfig", `{"deviceID":"0000:01:10.0"}`, `runtimeConfig.deviceID: the deviceID capability is not declared in capabilities`},
		{"runtimeConfig", `{"io.kubernetes.cri.pod-annotations":{}}`, `runtimeConfig.io.kubernetes.cri.pod-annotations: the io.kubernetes.cri.pod-annotations capability is not declared`},
		{"ipam.type", `"host-local"`, `ipam.type: "host-local" is not supported`},
		{"ipam.pools", `[]`, `ipam.pools: at least one pool is required`},
		{"ipam.backend", `"etcd"`, `ipam.backend: "etcd" is not an IPAM backend (local, kubernetes)`},
		{"ipam.backend", `"kubernetes"`, `ipam.pools: the kubernetes backend takes IPPool names in ipam.ippools, not pools`},
		{"ipam.ippools", `["Not_A_Name"]`, `ipam.ippools[0]: "Not_A_Name" is not a valid IPPool name`},
		{"ipam.subnet", `"x"`, `ipam.subnet: unknown field (value "x")`},
		{"ipam.pools[0].name", `"V4!"`, `ipam.pools[0].name: "V4!" is not a valid pool name`},
		{"ipam.pools[1]", `{"name":"v4","subnet":"192.0.3.0/24"}`, `ipam.pools[1].name: "v4" is used twice`},
		{"ipam.pools[1]", `{"name":"v4b","subnet":"192.0.2.0/25","ranges":[{"start":"192.0.2.20","end":"192.0.2.30"}]}`, `ipam.pools[1]: ranges of "v4b" overlap pool "v4"`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/33"}`, `ipam.pools[0].subnet: "192.0.2.0/33" is not a CIDR`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.7/24"}`, `ipam.pools[0].subnet: "192.0.2.7/24" has host bits set (did you mean 192.0.2.0/24?)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/31"}`, `ipam.pools[0].subnet: "192.0.2.0/31" is too small`},
		{"ipam.pools[0]", `{"name":"a","subnet":"127.0.0.0/24"}`, `ipam.pools[0].subnet: 127.0.0.0/24 overlaps 127.0.0.0/8 (loopback): no pod may have such an address`},
		{"ipam.pools[0]", `{"name":"a","subnet":"224.0.1.0/24"}`, `ipam.pools[0].subnet: 224.0.1.0/24 overlaps 224.0.0.0/4 (multicast)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"169.254.3.0/24"}`, `ipam.pools[0].subnet: 169.254.3.0/24 overlaps 169.254.0.0/16 (link-local)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"0.0.0.0/0"}`, `ipam.pools[0].subnet: 0.0.0.0/0 overlaps 0.0.0.0/8 (this network)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"255.255.255.0/24"}`, `(reserved, and the broadcast address)`},
		{"ipam.pools[1]", `{"name":"a","subnet":"fe80::/64"}`, `ipam.pools[1].subnet: fe80::/64 overlaps fe80::/10 (link-local)`},
		{"ipam.pools[1]", `{"name":"a","subnet":"ff02::/64"}`, `ipam.pools[1].subnet: ff02::/64 overlaps ff00::/8 (multicast)`},
		{"ipam.pools[1]", `{"name":"a","subnet":"::ffff:0:0/104"}`, `ipam.pools[1].subnet: ::ffff:0.0.0.0/104 overlaps ::ffff:0.0.0.0/96 (IPv4-mapped)`},
		{"ipam.pools[1]", `{"name":"a","subnet":"::/64"}`, `ipam.pools[1].subnet: ::/64 overlaps ::/128 (the unspecified address)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","gateway":"192.0.3.1"}`, `ipam.pools[0].gateway: 192.0.3.1 is outside subnet 192.0.2.0/24`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","gateway":"192.0.2.0"}`, `ipam.pools[0].gateway: 192.0.2.0 is the subnet's network address`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","gateway":"gw"}`, `ipam.pools[0].gateway: "gw" is not an IP address`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.9","end":"192.0.2.5"}]}`, `ipam.pools[0].ranges[0]: end 192.0.2.5 is before start 192.0.2.9`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.9","end":"192.0.3.5"}]}`, `ipam.pools[0].ranges[0].end: 192.0.3.5 is outside subnet`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.1","end":"192.0.2.9"},{"start":"192.0.2.5","end":"192.0.2.20"}]}`, `ipam.pools[0].ranges[1]: 192.0.2.5-192.0.2.20 overlaps ranges[0]`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.1","end":"192.0.2.9","step":2}]}`, `ipam.pools[0].ranges[0].step: unknown field (value 2)`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","exclude":["192.0.9.1"]}`, `ipam.pools[0].exclude[0]: 192.0.9.1 is outside subnet`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","exclude":["nope"]}`, `ipam.pools[0].exclude[0]: "nope" is not an IP address or CIDR`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","routes":[{"dst":"2001:db8::/32"}]}`, `ipam.pools[0].routes[0].dst: 2001:db8::/32 is not of the pool's address family`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","routes":[{"dst":"10.0.0.0/8","gw":"2001:db8::1"}]}`, `ipam.pools[0].routes[0].gw: "2001:db8::1" is not an address of the pool's family`},
		{"ipam.pools[0]", `{"name":"a","subnet":"192.0.2.0/24","routes":[{"dst":"x"}]}`, `ipam.pools[0].routes[0].dst: "x" is not a CIDR`},
		{"dns", `{"nameserver":["1.1.1.1"]}`, `dns.nameserver: unknown field (value ["1.1.1.1"])`},
		{"colour", `"blue"`, `colour: unknown field (value "blue")`},
		{"coordinator", `{"mode":"sideways"}`, `coordinator.mode: "sideways" is not one of auto, underlay, overlay, disable`},
		{"coordinator", `{"mode":"overlay"}`, `coordinator.mode: overlay needs eth0 from the cluster's CNI (a network with delegate)`},
		{"coordinator", `{"podDefaultRouteNic":"a/b"}`, `coordinator.podDefaultRouteNic: "a/b" is not a valid interface name`},
		{"coordinator", `{"serviceCIDR":["10.96.0.0/33"]}`, `coordinator.serviceCIDR[0]: "10.96.0.0/33" is not a CIDR or an address`},
		{"coordinator", `{"podCIDR":["x"]}`, `coordinator.podCIDR[0]: "x" is not a CIDR or an address`},
		{"coordinator", `{"hijackCIDR":["169.254.0.0/16","y"]}`, `coordinator.hijackCIDR[1]: "y" is not a CIDR or an address`},
		{"coordinator", `{"hostRuleTable":254}`, `coordinator.hostRuleTable: 254 is reserved or out of range`},
		{"coordinator", `{"hostRuleTable":101}`, `coordinator.hostRuleTable: 101 is reserved or out of range`},
		{"coordinator", `{"podRPFilter":3}`, `coordinator.podRPFilter: 3 is not -1 (leave), 0, 1 or 2`},
		{"coordinator", `{"txQueueLen":-5}`, `coordinator.txQueueLen: -5 is out of range (0-1000000)`},
		{"coordinator", `{"txQueueLen":4294967296}`, `coordinator.txQueueLen: 4294967296 is out of range (0-1000000)`},
		{"coordinator", `{"vethMTU":500}`, `coordinator.vethMTU: 500 is out of range (1280-65535)`},
		{"coordinator", `{"podMACPrefix":"0b:1b"}`, `coordinator.podMACPrefix: "0b:1b" has the multicast bit set`},
		{"coordinator", `{"podMACPrefix":"0a1b"}`, `coordinator.podMACPrefix: "0a1b" is not two bytes`},
		{"coordinator", `{"detectOptions":{"retries":0}}`, `coordinator.detectOptions.retries: 0 is out of range (1-100)`},
		{"coordinator", `{"detectOptions":{"interval":"soon"}}`, `coordinator.detectOptions.interval: "soon" is not a duration`},
		{"coordinator", `{"detectOptions":{"timeout":"1h"}}`, `coordinator.detectOptions.timeout: "1h" is not a duration`},
		{"coordinator", `{"detectGateway":"yes"}`, `coordinator.detectGateway: value of type string where bool is expected`},
		{"coordinator", `{"tunePodRoute":true}`, `coordinator.tunePodRoute: unknown field (value true)`},
		{"maxNICs", `40`, `maxNICs: 40 is out of range (1-32)`},
		{"primary", `"storage"`, `primary: "storage" is not a network of the catalogue`},
		{"networks", `[{"name":"x","master":"eth1","ipam":{"pools":[{"name":"x4","subnet":"10.0.0.0/24"}]}}]`, `networks: give either networks or a single network's master/ipam at the top level, not both`},
	}
	for _, c := range cases {
		t.Run(c.path+"="+c.value, func(t *testing.T) {
			_, err := Parse(mutate(t, c.path, c.value))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want %q", err, c.want)
			}
		})
	}
}

func TestParseFileConflist(t *testing.T) {
	list := `{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"tuning"},` +
		strings.Replace(strings.Replace(base, `"cniVersion": "1.0.0", "name": "underlay",`, "", 1), `"master": "uplink"`, `"master": "uplink", "mode": "vepa"`, 1) + `]}`
	c, err := ParseFile([]byte(list))
	if err != nil {
		t.Fatal(err)
	}
	if c.CNIVersion != "1.1.0" || c.Name != "underlay" || c.Network.Mode != "vepa" {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := ParseFile([]byte(`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"tuning"}]}`)); err == nil || !strings.Contains(err.Error(), `no entry of type "spinneret"`) {
		t.Fatalf("conflist without spinneret: %v", err)
	}
	if _, err := ParseFile([]byte(`{"cniVersion":"1.1.0","name":"x","plugin":[]}`)); err == nil || !strings.Contains(err.Error(), "plugin: unknown field") {
		t.Fatalf("typo in a single config: %v", err)
	}
	// CNI 1.1's way to offer several versions: the highest is what a 1.1
	// runtime sends; each must be one spinneret speaks
	offered := strings.Replace(list, `{"cniVersion":"1.1.0",`, `{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0"],`, 1)
	if c, err := ParseFile([]byte(offered)); err != nil || c.CNIVersion != "1.1.0" {
		t.Fatalf("cniVersions: %+v, %v", c, err)
	}
	unknown := strings.Replace(list, `{"cniVersion":"1.1.0",`, `{"cniVersion":"1.0.0","cniVersions":["1.0.0","9.9.9"],`, 1)
	if _, err := ParseFile([]byte(unknown)); err == nil || !strings.Contains(err.Error(), `cniVersions[1]: "9.9.9" is not supported`) {
		t.Fatalf("unsupported cniVersions entry: %v", err)
	}
	bad := strings.Replace(list, `"mode": "vepa"`, `"mode": "nope"`, 1)
	if _, err := ParseFile([]byte(bad)); err == nil || !strings.Contains(err.Error(), `plugins[1].mode: "nope"`) {
		t.Fatalf("error inside a conflist = %v", err)
	}
}

func writeNode(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNodeDefaultsAndEnv(t *testing.T) {
	n, err := LoadNode(filepath.Join(t.TempDir(), "absent.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if n.StateDir != "/var/lib/spinneret" || n.LogLevel != "info" || n.LogFile != DefaultLogFile || n.LogStderr() ||
		n.LogMaxSizeMB != 10 || n.LogMaxBackups != 5 {
		t.Fatalf("defaults = %+v", n)
	}
	if _, err := LoadNode(filepath.Join(t.TempDir(), "absent.yaml"), true); err == nil {
		t.Fatal("a node conf named by the CNI config must exist")
	}
	p := writeNode(t, "stateDir: /srv/state\nlogLevel: warn\nmasters:\n  Uplink: ens192\nallowedMasters: [ens192]\n")
	n, err = LoadNode(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := n.ResolveMaster("uplink"); err != nil || m != "ens192" {
		t.Fatalf("ResolveMaster = %q %v", m, err)
	}
	if _, err := n.ResolveMaster("ens224"); err == nil || !strings.Contains(err.Error(), `master: "ens224" (interface ens224) is not in the node's allowedMasters [ens192]`) {
		t.Fatalf("allow-list: %v", err)
	}
	t.Setenv("SPINNERET_STATE_DIR", "/run/spn")
	t.Setenv("SPINNERET_LOG_LEVEL", "debug")
	t.Setenv("SPINNERET_MASTERS", "uplink=ens224, data=ens256")
	t.Setenv("SPINNERET_ALLOWED_MASTERS", "ens224,ens256")
	t.Setenv("SPINNERET_NODE_IPS", "fd00::1, 10.6.212.101")
	t.Setenv("SPINNERET_LOG_FILE", "stderr")
	t.Setenv("SPINNERET_LOG_MAX_SIZE_MB", "50")
	n, err = LoadNode(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n.NodeIPs) != "[10.6.212.101 fd00::1]" {
		t.Fatalf("nodeIPs %v, want IPv4 first", n.NodeIPs)
	}
	if n.StateDir != "/run/spn" || n.LogLevel != "debug" || n.Masters["data"] != "ens256" || len(n.AllowedMasters) != 2 ||
		!n.LogStderr() || n.LogMaxSizeMB != 50 {
		t.Fatalf("env overrides not applied: %+v", n)
	}
}

func TestNodeErrors(t *testing.T) {
	cases := []struct{ body, env, want string }{
		{"stateDir: relative/dir\n", "", `stateDir: "relative/dir" is not an absolute path`},
		{"logFile: spinneret.log\n", "", `logFile: "spinneret.log" is neither an absolute path nor "stderr"`},
		{"logMaxSizeMB: 0\n", "", `logMaxSizeMB: 0 is not between 1 and 1024`},
		{"logMaxBackups: 0\n", "", `logMaxBackups: 0 is not between 1 and 100`},
		{"logMaxBackups: many\n", "", `logMaxBackups`},
		{"", "SPINNERET_LOG_MAX_SIZE_MB=big", `SPINNERET_LOG_MAX_SIZE_MB: "big" is not a whole number`},
		{"logLevel: loud\n", "", `logLevel: "loud" is not one of`},
		{"masters:\n  uplink: 'has space'\n", "", `masters.uplink: "has space" is not a valid interface name`},
		{"allowedMasters: ['a/b']\n", "", `allowedMasters[0]: "a/b" is not a valid interface name`},
		{"colour: blue\n", "", `colour: unknown field (value blue)`},
		{"nodeIPs: [nope]\n", "", `nodeIPs[0]: "nope" is not a unicast address`},
		{"kubeconfig: kube.conf\n", "", `kubeconfig: "kube.conf" is not an absolute path`},
		{"apiTimeout: forever\n", "", `apiTimeout: "forever" is not a duration between 0 and 1m`},
		{"", "SPINNERET_API_TIMEOUT=2m", `apiTimeout: "2m" is not a duration between 0 and 1m`},
		{"", "SPINNERET_NODE_IPS=10.0.0.1,ff02::1", `nodeIPs[1]: "ff02::1" is not a unicast address`},
		{"stateDir: [1, 2]\n", "", `stateDir`},
		{"", "SPINNERET_MASTERS=uplink", `SPINNERET_MASTERS: "uplink" is not name=interface`},
		{"", "SPINNERET_LOG_LEVEL=verbose", `logLevel: "verbose" is not one of`},
		{"{{", "", "node conf"},
	}
	for _, c := range cases {
		t.Run(c.want, func(t *testing.T) {
			if k, v, ok := strings.Cut(c.env, "="); ok {
				t.Setenv(k, v)
			}
			_, err := LoadNode(writeNode(t, c.body), true)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want %q", err, c.want)
			}
		})
	}
}

// TestCatalogue: networks with per-network coordinator overrides, the
// primary network, and the catalogue's own errors.
func TestCatalogue(t *testing.T) {
	cfg := `{"cniVersion":"1.1.0","name":"pods","type":"spinneret","primary":"blue",
		"coordinator":{"serviceCIDR":["10.96.0.0/12"],"podMACPrefix":"0a:1b","txQueueLen":1000},
		"networks":[
			{"name":"red","master":"eth1","ipam":{"pools":[{"name":"red4","subnet":"10.1.0.0/24"}]}},
			{"name":"blue","master":"eth2","mode":"private","coordinator":{"podMACPrefix":"","txQueueLen":2000},
			 "ipam":{"pools":[{"name":"blue4","subnet":"10.2.0.0/24"}]}}]}`
	c, err := Parse([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if c.Network.Name != "blue" || len(c.Networks) != 2 {
		t.Fatalf("primary %s, %d networks", c.Network.Name, len(c.Networks))
	}
	red, _ := c.Lookup("red")
	if !red.Coordinator.HasMACPrefix || red.Coordinator.TxQueueLen != 1000 || len(red.Coordinator.ServiceCIDR) != 1 {
		t.Errorf("red inherits the config's coordinator: %+v", red.Coordinator)
	}
	if c.Network.Coordinator.HasMACPrefix || c.Network.Coordinator.TxQueueLen != 2000 || len(c.Network.Coordinator.ServiceCIDR) != 1 {
		t.Errorf("blue's overrides: %+v", c.Network.Coordinator)
	}
	for _, bad := range []struct{ edit, want string }{
		{`"name":"blue","master"`, `networks[1].name: "red" is used twice`},
		{`{"name":"blue4"`, `networks[1].ipam.pools[0].name: pool "red4" is also defined by network "red"`},
		{`"mode":"private"`, `networks[1].mode: "nope" is not a macvlan mode`},
	} {
		var s string
		switch {
		case strings.Contains(bad.want, "is used twice"):
			s = strings.Replace(cfg, bad.edit, `"name":"red","master"`, 1)
			s = strings.Replace(s, `"primary":"blue",`, "", 1)
		case strings.Contains(bad.want, "also defined"):
			s = strings.Replace(cfg, bad.edit, `{"name":"red4"`, 1)
		default:
			s = strings.Replace(cfg, bad.edit, `"mode":"nope"`, 1)
		}
		if _, err := Parse([]byte(s)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("error = %v, want %q", err, bad.want)
		}
	}
}

// A NAD config without a name (Multus' quickstart) is named after the NAD,
// as Multus names it: the IPAM plugin it runs needs one.
func TestNADWithoutName(t *testing.T) {
	c, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	c.NADAnySubnet = true
	n, err := c.NADNetwork("spin", "macvlan-conf", []byte(`{"cniVersion":"0.3.0","type":"macvlan","master":"eth0","ipam":{"type":"host-local","subnet":"192.168.1.0/24"}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Name string }
	if json.Unmarshal(n.DelegateIPAM.Conf, &m); m.Name != "macvlan-conf" {
		t.Fatalf("delegated config %s", n.DelegateIPAM.Conf)
	}
}

// TestNADNetwork: a NAD's macvlan entry becomes a network (single config or
// conflist), a coordinator entry overrides the config's settings, unknown
// fields are ignored, and what spinneret cannot run natively is an error.
func TestNADNetwork(t *testing.T) {
	c, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	c.NADAnySubnet = true
	n, err := c.NADNetwork("team-a", "storage", []byte(`{"cniVersion":"0.3.1","name":"storage","plugins":[
		{"type":"macvlan","master":"eth2","mode":"private","mtu":1400,"somethingElse":true,
		 "ipam":{"type":"spinneret","pools":[{"name":"v4","subnet":"10.7.0.0/16","gateway":"10.7.0.1"}]}},
		{"type":"tuning","sysctl":{}},
		{"type":"coordinator","podMACPrefix":"0a:1b","ipam":{},"dns":{}}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "team-a/storage" || n.Master != "eth2" || n.Mode != "private" || n.MTU != 1400 || !n.Coordinator.HasMACPrefix {
		t.Fatalf("network %+v", n)
	}
	if len(n.Pools) != 1 || n.Pools[0].Name != "team-a.storage.v4" {
		t.Fatalf("pools %+v: NAD pools are named per namespace and NAD", n.Pools)
	}
	wa, err := c.NADNetwork("ns", "wa", []byte(`{"cniVersion":"0.3.1","name":"wa","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.9.0.0/24"}}`), "")
	if err != nil || wa.DelegateIPAM == nil || wa.DelegateIPAM.Type != "whereabouts" || len(wa.Pools) != 0 ||
		!strings.Contains(string(wa.DelegateIPAM.Conf), `"range":"10.9.0.0/24"`) || !strings.Contains(string(wa.DelegateIPAM.Conf), `"name":"wa"`) {
		t.Fatalf("delegated IPAM: %+v, %v", wa, err)
	}
	single, err := c.NADNetwork("ns", "one", []byte(`{"cniVersion":"1.0.0","name":"one","type":"macvlan","master":"eth1","ipam":{"pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}`), "")
	if err != nil || single.Mode != "bridge" {
		t.Fatalf("single config: %+v, %v", single, err)
	}
	for _, bad := range []struct{ cfg, want string }{
		{`{"type":"macvlan","master":"eth1","ipam":{"type":"../bin/evil"}}`, `ipam type "../bin/evil" is not a plugin name`},
		{`{"type":"bridge","bridge":"cni0"}`, "no macvlan, ipvlan or sriov entry"},
		{`{"type":"macvlan","master":"eth1","mode":"sideways","ipam":{"pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}`, `NetworkAttachmentDefinition ns/bad.mode: "sideways" is not a macvlan mode`},
		{`{"plugins":[{"type":"macvlan","master":"eth1","ipam":{"pools":[{"name":"p","subnet":"10.8.0.0/24"}]}},{"type":"coordinator","mode":"overlay"}]}`, "ns/bad.coordinator.mode: overlay needs eth0 from the cluster's CNI"},
		{`nope`, "config is not JSON"},
	} {
		if _, err := c.NADNetwork("ns", "bad", []byte(bad.cfg), ""); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("NAD %s: %v, want %q", bad.cfg, err, bad.want)
		}
	}
}

// TestIpvlanNetworks: ipvlan's modes and flags, and what does not apply to
// it (a MAC, podMACPrefix, ARP/NDP detection in l3/l3s).
func TestIpvlanNetworks(t *testing.T) {
	conf := func(net string) []byte {
		return []byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","networks":[` + net + `]}`)
	}
	const pools = `"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}`
	c, err := Parse(conf(`{"name":"iv","driver":"ipvlan","master":"eth1",` + pools + `}`))
	if err != nil || c.Network.Mode != "l2" || c.Network.Flag != "bridge" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	for net, want := range map[string]string{
		`"mode":"l4"`:                                                                            `networks[0].mode: "l4" is not an ipvlan mode (l2, l3, l3s)`,
		`"flag":"loud"`:                                                                          `networks[0].flag: "loud" is not an ipvlan flag (bridge, private, vepa)`,
		`"mac":"0a:00:00:00:00:01"`:                                                              `networks[0].mac: "0a:00:00:00:00:01": an ipvlan link has its master's MAC`,
		`"coordinator":{"podMACPrefix":"0a:1b"}`:                                                 `podMACPrefix does not apply to ipvlan`,
		`"mode":"l3","coordinator":{"detectGateway":true}`:                                       `ipvlan l3 links do not carry ARP/NDP`,
		`"mode":"l3s","coordinator":{"detectIPConflict":true}`:                                   `ipvlan l3s links do not carry ARP/NDP`,
		`"vlan":4095`:                                                                            `networks[0].vlan: 4095 is out of range (1-4094)`,
		`"bond":{"name":"b0","mode":"fast","slaves":["eth2"]}`:                                   `networks[0].bond.mode: "fast" is not a bond mode`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":[]}`:                                      `networks[0].bond.slaves: a bond needs at least one slave`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":["eth2","eth2"]}`:                         `networks[0].bond.slaves[1]: "eth2" is not a valid interface name, or is listed twice`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":["eth2"],"options":{"mii":"1"}}`:          `networks[0].bond.options.mii: unknown bond option`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":["eth2"],"options":{"lacp_rate":"warp"}}`: `networks[0].bond.options.lacp_rate: "warp" is not slow or fast`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":["eth2"],"options":{"miimon":"-1"}}`:      `networks[0].bond.options.miimon: "-1" is not a non-negative number`,
		`"bond":{"name":"b0","mode":"802.3ad","slaves":["eth2"]},"master":"eth1"`:                `networks[0].master: "eth1": with a bond, the master is the bond (b0)`,
	} {
		_, err := Parse(conf(`{"name":"iv","driver":"ipvlan","master":"eth1",` + net + `,` + pools + `}`))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", net, err, want)
		}
	}
}

// TestSriovNetworks: an sriov network's fields and what does not apply to it.
func TestSriovNetworks(t *testing.T) {
	conf := func(net string) []byte {
		return []byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","networks":[{"name":"sr","driver":"sriov",` + net +
			`,"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}]}`)
	}
	c, err := Parse(conf(`"resourceName":"intel.com/sriov","vlan":100,"spoofchk":"off","trust":"on","max_tx_rate":100,"link_state":"enable"`))
	if err != nil || c.Network.SRIOV == nil || *c.Network.SRIOV.SpoofChk || !*c.Network.SRIOV.Trust || c.Network.VLAN != 100 || *c.Network.SRIOV.MaxTxRate != 100 {
		t.Fatalf("parsed %+v %v", c, err)
	}
	for net, want := range map[string]string{
		`"deviceID":"01:10.0"`:                `networks[0].deviceID: "01:10.0" is not a PCI address`,
		`"master":"eth1"`:                     `networks[0].master: "eth1": an sriov network's VFs come from deviceID or resourceName`,
		`"mode":"l2"`:                         `an sriov network has no mode, flag or bond`,
		`"spoofchk":"maybe"`:                  `networks[0].spoofchk: "maybe" is not on or off`,
		`"link_state":"up"`:                   `networks[0].link_state: "up" is not one of auto, enable, disable`,
		`"vlanQoS":9`:                         `networks[0].vlanQoS: 9 is out of range (0-7)`,
		`"min_tx_rate":200,"max_tx_rate":100`: `networks[0].min_tx_rate: 200 is above max_tx_rate 100`,
	} {
		if _, err := Parse(conf(net)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", net, err, want)
		}
	}
	if _, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","deviceID":"0000:01:10.0","ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`)); err == nil ||
		!strings.Contains(err.Error(), "deviceID, resourceName and VF settings are for sriov networks") {
		t.Errorf("deviceID on macvlan: %v", err)
	}
}

// TestNADSriov: an sriov-cni NAD is interpreted natively: its VF settings,
// and its resourceName (the NAD's annotation) when it names no deviceID.
func TestNADSriov(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":["10.8.0.0/16"],"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.NADNetwork("ns", "sriov-net", []byte(`{"cniVersion":"0.3.1","name":"sriov-net","type":"sriov","vlan":10,"spoofchk":"off","trust":"on",
		"max_tx_rate":1000,"link_state":"auto","ipam":{"type":"spinneret","pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}`), "intel.com/intel_sriov_netdevice")
	if err != nil || n.Driver != "sriov" || n.SRIOV.ResourceName != "intel.com/intel_sriov_netdevice" || n.VLAN != 10 || *n.SRIOV.SpoofChk || !*n.SRIOV.Trust || *n.SRIOV.MaxTxRate != 1000 {
		t.Fatalf("%+v %+v %v", n, n.SRIOV, err)
	}
}

// TestNADAddressSpace: a NAD may always use the catalogue's networks and
// the admin's IPPools; address space of its own (inline pools, another
// IPAM plugin) only inside the config's nadSubnets, or anywhere with
// ["any"]; by default nowhere, and the refusal names the setting.
func TestNADAddressSpace(t *testing.T) {
	parse := func(subnets string) *Config {
		t.Helper()
		c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}` + subnets + `}`))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	nad := func(ipam string) []byte {
		return []byte(`{"cniVersion":"0.3.1","type":"macvlan","master":"eth1","ipam":` + ipam + `}`)
	}
	inline := func(subnet string) []byte { return nad(`{"pools":[{"name":"p","subnet":"` + subnet + `"}]}`) }
	hostLocal := nad(`{"type":"host-local","subnet":"10.7.0.0/24"}`)
	for _, c := range []struct {
		subnets string
		nad     []byte
		err     string
		space   string
	}{
		{"", inline("10.7.0.0/24"), "ipam.pools[0].subnet: 10.7.0.0/24 is not inside the address space the cluster admin allows NADs (nadSubnets in the CNI config: none; list the subnets in nadSubnets, or [\"any\"]", ""},
		{"", hostLocal, "ipam: IPAM plugin host-local hands out addresses of the NAD's own choosing; the cluster admin allows that only inside nadSubnets (CNI config), which lists none", ""},
		{"", nad(`{"ippools":["admin-pool"]}`), "", ""},
		{"", nad(`{"backend":"kubernetes"}`), "", ""},
		{`,"nadSubnets":["10.7.0.0/16","fd00:7::/48"]`, inline("10.7.1.0/24"), "", ""},
		{`,"nadSubnets":["10.7.0.0/16","fd00:7::/48"]`, inline("fd00:7:0:1::/64"), "", ""},
		{`,"nadSubnets":["10.7.0.0/16"]`, inline("10.8.0.0/24"), "10.8.0.0/24 is not inside the address space the cluster admin allows NADs (nadSubnets in the CNI config: 10.7.0.0/16;", ""},
		{`,"nadSubnets":["10.7.0.0/16"]`, inline("10.0.0.0/8"), "10.0.0.0/8 is not inside", ""},
		{`,"nadSubnets":["10.7.0.0/16"]`, hostLocal, "", "[10.7.0.0/16]"},
		{`,"nadSubnets":["any"]`, inline("10.8.0.0/24"), "", ""},
		{`,"nadSubnets":["any"]`, hostLocal, "", "[]"},
	} {
		n, err := parse(c.subnets).NADNetwork("ns", "x", c.nad, "")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("nadSubnets %s, NAD %s: %v, want %q", c.subnets, c.nad, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("nadSubnets %s, NAD %s: %v", c.subnets, c.nad, err)
			continue
		}
		if c.space != "" && fmt.Sprint(n.AddressSpace) != c.space {
			t.Errorf("nadSubnets %s, NAD %s: address space %v, want %s", c.subnets, c.nad, n.AddressSpace, c.space)
		}
	}
	for _, bad := range []struct{ v, want string }{
		{`["any","10.0.0.0/8"]`, `nadSubnets[0]: "any" stands alone`},
		{`["10.0.0.1/8"]`, `nadSubnets[0]: "10.0.0.1/8" is not a CIDR without host bits`},
		{`["127.0.0.0/8"]`, `nadSubnets[0]: 127.0.0.0/8 overlaps 127.0.0.0/8 (loopback)`},
	} {
		if _, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":` + bad.v + `,"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("nadSubnets %s: %v, want %q", bad.v, err, bad.want)
		}
	}
}

// TestNADEntries: every entry of a NAD's conflist is honoured or refused:
// tuning's sysctl, mac and mtu natively (IFNAME kept for the NIC's name),
// its promisc and allmulti refused, and any kind spinneret does not run
// (sbr, portmap, bandwidth, vrf, ...) refused naming it.
func TestNADEntries(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":["any"],"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	list := func(extra string) []byte {
		return []byte(`{"cniVersion":"0.3.1","name":"x","plugins":[{"type":"macvlan","master":"eth1","mtu":1400,"ipam":{"pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}` + extra + `]}`)
	}
	n, err := c.NADNetwork("ns", "x", list(`,{"type":"tuning","mac":"0a:00:00:00:00:07","mtu":1300,"sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net.core.somaxconn":"500"}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if n.MAC != "0a:00:00:00:00:07" || n.MTU != 1300 || fmt.Sprint(n.Sysctls) != "[{net.core.somaxconn 500} {net.ipv4.conf.IFNAME.arp_filter 1}]" {
		t.Fatalf("tuning: mac %s mtu %d sysctls %v", n.MAC, n.MTU, n.Sysctls)
	}
	if p := n.Sysctls[1].Path("eth0.100"); p != "net/ipv4/conf/eth0.100/arp_filter" {
		t.Fatalf("path %s", p)
	}
	for _, bad := range []struct{ extra, want string }{
		{`,{"type":"sbr"}`, `plugins[1]: plugin "sbr" is not run by spinneret`},
		{`,{"type":"tuning"},{"type":"portmap","capabilities":{"portMappings":true}}`, `plugins[2]: plugin "portmap" is not run by spinneret`},
		{`,{"type":"bandwidth"}`, `plugin "bandwidth" is not run`},
		{`,{"type":"tuning","promisc":true}`, "tuning's promisc and allmulti are not implemented"},
		{`,{"type":"tuning","sysctl":{"kernel.core_pattern":"|/evil"}}`, `tuning sysctl "kernel.core_pattern" is not a net.* sysctl`},
		{`,{"type":"tuning","sysctl":{"net.ipv4.conf.IFNAME/../../../kernel.x":"1"}}`, "is not a net.* sysctl"},
		{`,{"type":"tuning","sysctl":{"net.core.somaxconn":"1\n2"}}`, "is not one line"},
		{`,{"type":"tuning"},{"type":"tuning"}`, "plugins[2]: a second tuning entry"},
	} {
		if _, err := c.NADNetwork("ns", "x", list(bad.extra), ""); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("NAD entries %s: %v, want %q", bad.extra, err, bad.want)
		}
	}
}

// TestNADLongName: a NAD's name may be as long as Kubernetes allows (253);
// its pools' local names stay short and distinct.
func TestNADLongName(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"spinneret","master":"eth1","nadSubnets":["any"],"ipam":{"pools":[{"name":"a","subnet":"10.0.0.0/24"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := []byte(`{"cniVersion":"0.3.1","type":"macvlan","master":"eth1","ipam":{"pools":[{"name":"p","subnet":"10.8.0.0/24"}]}}`)
	long := strings.Repeat("a", 252)
	var names []string
	for _, name := range []string{long + "b", long + "c"} {
		n, err := c.NADNetwork("team-a", name, cfg, "")
		if err != nil {
			t.Fatalf("NAD of %d characters: %v", len(name), err)
		}
		if n.Name != "team-a/"+name || len(n.Pools[0].Name) > 63+2 {
			t.Fatalf("network %s, pool %s", n.Name, n.Pools[0].Name)
		}
		names = append(names, n.Pools[0].Name)
	}
	if names[0] == names[1] {
		t.Fatalf("two long NAD names share pool %s", names[0])
	}
	if n, _ := c.NADNetwork("team-a", "storage", cfg, ""); n.Pools[0].Name != "team-a.storage.p" {
		t.Fatalf("a short NAD's pool is %s, want team-a.storage.p (as before)", n.Pools[0].Name)
	}
}

func TestPoolRefusal(t *testing.T) {
	p4, err := (&rawPool{Name: "p", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Exclude: []string{"10.0.0.8/30"}, Ranges: []rawRange{{"10.0.0.0", "10.0.0.255"}}}).validate("p")
	if err != nil {
		t.Fatal(err)
	}
	p4.NodeAddrs = []netip.Addr{netip.MustParseAddr("10.0.0.5")}
	p6, _ := (&rawPool{Name: "q", Subnet: "fd00::/64"}).validate("q")
	p6.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::100/120")}
	pr, _ := (&rawPool{Name: "r", Subnet: "10.1.0.0/24", Ranges: []rawRange{{"10.1.0.10", "10.1.0.20"}, {"10.1.0.100", "10.1.0.110"}}}).validate("r")
	for _, c := range []struct {
		p    *Pool
		a, w string
	}{
		{p4, "10.0.0.1", "is the gateway of pool p"},
		{p4, "10.0.0.0", "is the network address of subnet 10.0.0.0/24"},
		{p4, "10.0.0.255", "is the broadcast address of subnet 10.0.0.0/24"},
		{p4, "10.0.0.9", "is excluded from pool p (10.0.0.8/30)"},
		{p4, "10.0.0.5", "is an address of the node"},
		{p4, "10.0.0.6", ""},
		{p6, "fd00::", "is the subnet-router anycast address of subnet fd00::/64"},
		{p6, "fd00::ffff:ffff:ffff:ffff", ""},
		{p6, "fd00::1a0", "is inside the cluster's service CIDR fd00::100/120"},
		{pr, "10.1.0.50", "is outside the ranges of pool r (10.1.0.10-10.1.0.20, 10.1.0.100-10.1.0.110)"},
		{pr, "10.1.0.105", ""},
	} {
		a := netip.MustParseAddr(c.a)
		if got := c.p.Refusal(a); got != c.w || c.p.Excluded(a) != (c.w != "") {
			t.Errorf("%s: Refusal %q (excluded %v), want %q", c.a, got, c.p.Excluded(a), c.w)
		}
	}
	if end, ok := p6.ExcludedBlock(netip.MustParseAddr("fd00::150")); !ok || end.String() != "fd00::1ff" {
		t.Errorf("a scan does not jump the service CIDR: %s %v", end, ok)
	}
}

// A node conf broken after ADD still tells DEL where the journals are.
func TestLoadNodeForDel(t *testing.T) {
	n, known, err := LoadNodeForDel(writeNode(t, "stateDir: /srv/spin\nlogFile: /var/log/s.log\ncolour: blue\n"), true)
	if err == nil || !known || n.StateDir != "/srv/spin" || n.LogFile != "/var/log/s.log" {
		t.Fatalf("unknown field: %+v, %v, %v", n, known, err)
	}
	if _, known, _ := LoadNodeForDel(writeNode(t, "stateDir: relative\n"), true); known {
		t.Fatal("a relative stateDir is not where the journals are")
	}
	if _, known, _ := LoadNodeForDel(writeNode(t, "\t: [\nstateDir: /srv/spin\n"), true); known {
		t.Fatal("no YAML but naming a stateDir: where the journals are is unknown")
	}
	if n, known, err := LoadNodeForDel(writeNode(t, "logLevel: loud\n"), true); err == nil || !known || n.StateDir != "/var/lib/spinneret" {
		t.Fatalf("no stateDir named: the default: %+v, %v, %v", n, known, err)
	}
}

// TestRangesSorted: a pool's ranges are kept in address order whatever
// the config's order (the allocators walk them as one ascending
// sequence; listed high then low, the walk of a small IPPool never ended).
func TestRangesSorted(t *testing.T) {
	p, err := PoolFromSpec("p", []byte(`{"subnet":"10.0.0.0/24","ranges":[{"start":"10.0.0.200","end":"10.0.0.210"},{"start":"10.0.0.10","end":"10.0.0.20"},{"start":"10.0.0.100","end":"10.0.0.100"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(p.Ranges); got != "[{10.0.0.10 10.0.0.20} {10.0.0.100 10.0.0.100} {10.0.0.200 10.0.0.210}]" {
		t.Fatalf("ranges %s", got)
	}
}

// TestDelegateNetworkConf: a delegate network names absolute clean paths,
// has nothing of a link or of addresses, and takes coordinator mode
// overlay (what auto means for it: underlay for the other networks) or
// disable, never underlay.
func TestDelegateNetworkConf(t *testing.T) {
	conf := func(net, coord string) string {
		return `{"cniVersion":"1.1.0","name":"n","type":"spinneret","coordinator":{"mode":"` + coord + `"},"networks":[` + net +
			`,{"name":"under","master":"eth1","ipam":{"pools":[{"name":"p","subnet":"10.1.0.0/24"}]}}]}`
	}
	good := `{"name":"pods","delegate":{"conflist":"/etc/cni/net.d/10-calico.conflist","readinessIndicatorFile":"/run/calico/ready"}}`
	c, err := Parse([]byte(conf(good, "disable")))
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Network.Delegate; d == nil || d.Conflist != "/etc/cni/net.d/10-calico.conflist" || d.ReadinessIndicatorFile != "/run/calico/ready" || c.Network.Driver != "delegate" {
		t.Errorf("primary %+v", c.Network)
	}
	for _, mode := range []string{"auto", ""} {
		cfg := conf(good, mode)
		if mode == "" {
			cfg = strings.Replace(cfg, `"coordinator":{"mode":""},`, "", 1)
		}
		c, err := Parse([]byte(cfg))
		if err != nil {
			t.Fatalf("mode %q: %v", mode, err)
		}
		if got, under := c.Network.Coordinator.Mode, c.Networks[1].Coordinator.Mode; got != "overlay" || under != "underlay" {
			t.Errorf("mode %q: the delegate network's mode is %q (want overlay), the other's %q (want underlay)", mode, got, under)
		}
	}
	for _, tc := range []struct{ net, coord, want string }{
		{`{"name":"pods","delegate":{"conflist":"10-calico.conflist"}}`, "disable", `networks[0].delegate.conflist: "10-calico.conflist" is not a clean absolute path`},
		{`{"name":"pods","delegate":{"conflist":"/etc/cni/../x"}}`, "disable", `is not a clean absolute path`},
		{`{"name":"pods","delegate":{"conflist":"/etc/cni/net.d/c","readinessIndicatorFile":"ready"}}`, "disable", `networks[0].delegate.readinessIndicatorFile: "ready" is not a clean absolute path`},
		{`{"name":"pods","master":"eth0","delegate":{"conflist":"/etc/cni/net.d/c"}}`, "disable", `networks[0].delegate: a delegate network is its CNI's`},
		{`{"name":"pods","delegate":{"conflist":"/etc/cni/net.d/c"}}`, "underlay", `networks[0].coordinator.mode: underlay makes its own veth0 beside eth0`},
		{`{"name":"pods","delegate":{"conflist":"/etc/cni/net.d/c"}}`, "overlay", `networks[1].coordinator.mode: overlay needs eth0 from the cluster's CNI`},
	} {
		if _, err := Parse([]byte(conf(tc.net, tc.coord))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.net, err, tc.want)
		}
	}
}

// TestRuntimeConfig: the runtime's capability arguments, declared: mac and
// deviceID are spinneret's (and a delegate's), the pod annotations
// spinneret's alone, the conventions' others (portMappings, bandwidth, ...)
// kept as given for a delegate; a value of the wrong type names the field.
func TestRuntimeConfig(t *testing.T) {
	in := strings.Replace(base, `"master": "uplink",`, `"master": "uplink",
	  "capabilities": {"mac": true, "portMappings": true, "bandwidth": true, "io.kubernetes.cri.pod-annotations": true},
	  "runtimeConfig": {"mac": "0a:00:00:00:00:01", "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
	    "bandwidth": {"ingressRate": 1000000, "ingressBurst": 1000000}, "io.kubernetes.cri.pod-annotations": {"a": "b"}},`, 1)
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if c.RuntimeMAC != "0a:00:00:00:00:01" || c.PodAnnotations["a"] != "b" {
		t.Errorf("mac %q, annotations %v", c.RuntimeMAC, c.PodAnnotations)
	}
	keys := slices.Sorted(maps.Keys(c.DelegateArgs))
	if !slices.Equal(keys, []string{"bandwidth", "mac", "portMappings"}) || string(c.DelegateArgs["portMappings"]) != `[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]` {
		t.Errorf("delegate args %v: %s", keys, c.DelegateArgs["portMappings"])
	}
	bad := strings.Replace(in, `"mac": "0a:00:00:00:00:01"`, `"mac": 5`, 1)
	if _, err := Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), "runtimeConfig.mac: value of type number where string is expected") {
		t.Errorf("mac 5: %v", err)
	}
}
