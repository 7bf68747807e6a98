package request

import (
	"encoding/json"
	"reflect"
	"testing"
)

// seedAnnotations adds every annotation of the bad-request table (and a
// few good ones) to f's corpus, for key.
func seedAnnotations(f *testing.F, key string) {
	f.Helper()
	for _, c := range badRequests(f) {
		if v, ok := c.Annotations[key]; ok {
			f.Add(v)
		}
	}
	for _, v := range []string{"", "blue", "blue@net5, spin/green", `[{"name":"blue","interface":"net1","ips":["198.51.100.5/24"],"mac":"0a:1b:2c:3d:4e:5f","default-route":["198.51.100.1"]}]`,
		`[{"interface":"eth0","ipv4":["red-v4"],"ipv6":["red-v6"]}]`, `[{"dst":"198.18.0.0/24","gw":"198.51.100.1"}]`, "net1"} {
		f.Add(v)
	}
}

// FuzzNetworksAnnotation: any networks annotation (short or JSON form)
// parses or is refused, never panics; what parses re-encodes (as the JSON
// form) and re-parses to the same selections (the same encoding).
func FuzzNetworksAnnotation(f *testing.F) {
	seedAnnotations(f, AnnotNetworks)
	f.Fuzz(func(t *testing.T, s string) {
		sels, err := parseNetworks(s)
		if err != nil || len(sels) == 0 {
			return
		}
		b, err := json.Marshal(sels)
		if err != nil {
			t.Fatalf("re-encode %q: %v", s, err)
		}
		again, err := parseNetworks(string(b))
		b2, _ := json.Marshal(again)
		if err != nil || string(b) != string(b2) {
			t.Fatalf("%q parsed to %+v, re-encoded %s, re-parsed %+v (%v)", s, sels, b, again, err)
		}
	})
}

// FuzzRoutesAnnotation: spinneret.io/routes parses or is refused; what
// parses re-encodes and re-parses to the same routes.
func FuzzRoutesAnnotation(f *testing.F) {
	seedAnnotations(f, AnnotRoutes)
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := parseRoutes(s)
		if err != nil || len(rs) == 0 {
			return
		}
		var entries []routeEntry
		for _, r := range rs {
			entries = append(entries, routeEntry{Dst: r.Dst.String(), GW: r.GW.String()})
		}
		b, _ := json.Marshal(entries)
		again, err := parseRoutes(string(b))
		if err != nil || !reflect.DeepEqual(rs, again) {
			t.Fatalf("%q parsed to %+v, re-encoded %s, re-parsed %+v (%v)", s, rs, b, again, err)
		}
	})
}

// FuzzResolve: a whole request from any four annotations (networks,
// ippools, routes, default-route-nic) against the test catalogue, its NADs
// and node: resolved or refused, never a panic; resolving again gives the
// same request.
func FuzzResolve(f *testing.F) {
	for _, c := range badRequests(f) {
		a := c.Annotations
		f.Add(a[AnnotNetworks], a[AnnotIPPools], a[AnnotRoutes], a[AnnotDefaultRouteNIC])
	}
	f.Add("blue@net5, green", `[{"interface":"eth0","ipv4":["red-v4"]}]`, `[{"dst":"198.18.0.0/24","gw":"198.51.100.1"}]`, "net5")
	cfg, node := setup(f, "masters: {logical-green: uplink2}\n")
	f.Fuzz(func(t *testing.T, networks, ippools, routes, defaultNIC string) {
		ann := map[string]string{AnnotNetworks: networks, AnnotIPPools: ippools, AnnotRoutes: routes}
		if defaultNIC != "" {
			ann[AnnotDefaultRouteNIC] = defaultNIC
		}
		r1, err1 := Resolve(input(cfg, node, ann))
		r2, err2 := Resolve(input(cfg, node, ann))
		if (err1 == nil) != (err2 == nil) || err1 == nil && !reflect.DeepEqual(r1, r2) {
			t.Fatalf("not deterministic: %v / %v", err1, err2)
		}
	})
}
