package tests

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/ipam"
)

// podState is the node's and the pod's kernel state, without the pool.
func (e *env) podState(pods ...*netlab.NS) string {
	e.t.Helper()
	var out []string
	for _, ns := range append([]*netlab.NS{e.topo.Node}, pods...) {
		d, err := ns.Dump()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, d)
	}
	return strings.Join(out, "\n")
}

// TestIPConflict: a squatter on the L2 holds the address the pool hands out
// next. With detectIPConflict the ADD fails naming the address and the
// squatter's MAC, leaves nothing in the node or the pod, and quarantines
// the address: the next pod gets another one and succeeds.
func TestIPConflict(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := newEnv(t)
			var taken []netip.Prefix
			if fam.has4() {
				taken = append(taken, netip.MustParsePrefix("192.0.2.10/24"))
			}
			if fam.has6() {
				taken = append(taken, netip.MustParsePrefix("2001:db8:0:1::10/64"))
			}
			squatter, err := e.topo.AddHost(0, taken...)
			if err != nil {
				t.Fatal(err)
			}
			sq, _ := squatter.NL().LinkByName("eth0")
			l := e.confList("1.1.0", fam, `"coordinator":{"detectIPConflict":true,"detectOptions":{"retries":2,"timeout":"200ms","quarantine":"1h"}}`)
			p, _ := e.topo.NewPod()
			before := e.podState(p)
			_, err = e.add(l, rtConf("c1", p))
			wantErr(t, err, cni.ErrIPConflict, fmt.Sprintf("is already in use by %s", sq.Attrs().HardwareAddr))
			if !strings.Contains(err.Error(), taken[0].Addr().String()) || !strings.Contains(err.Error(), "quarantined for 1h0m0s") {
				t.Fatalf("error %q does not name the address and its quarantine", err)
			}
			if after := e.podState(p); after != before {
				t.Fatalf("the failed ADD left state:\n%s", netlab.Diff(before, after))
			}
			claims, _ := ipam.NewLocal(e.stateDir()).Claims()
			if len(claims) != 1 || !strings.HasPrefix(claims[taken[0].Addr()], "quarantine@") {
				t.Fatalf("claims after the conflict: %v, want only %s quarantined", claims, taken[0].Addr())
			}
			// the next pod does not get the quarantined address; for dual
			// stack the other family's address was released
			r := e.mustAdd(l, rtConf("c2", p))
			for _, ip := range r.IPs {
				if ip.Address.IP.Equal(taken[0].Addr().AsSlice()) {
					t.Fatalf("the quarantined address %s was handed out again", taken[0].Addr())
				}
			}
			e.mustDel(l, rtConf("c2", p))
		})
	}
}

// TestGatewayDetection: with detectGateway, a pool whose gateway does not
// answer fails the ADD (nothing left, the address released), and the real
// gateway lets it through.
func TestGatewayDetection(t *testing.T) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) {
			e := newEnv(t)
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			opts := `"coordinator":{"detectGateway":true,"detectIPConflict":true,"detectOptions":{"retries":2,"timeout":"150ms"}}`
			good := e.confList("1.1.0", fam, opts)
			var pools []string
			if fam.has4() {
				pools = append(pools, `{"name":"t-v4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.10","end":"192.0.2.60"}],"gateway":"192.0.2.254"}`)
			}
			if fam.has6() {
				pools = append(pools, `{"name":"t-v6","subnet":"2001:db8:0:1::/64","ranges":[{"start":"2001:db8:0:1::10","end":"2001:db8:0:1::60"}],"gateway":"2001:db8:0:1::fe"}`)
			}
			bad := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","master":"uplink","ipam":{"pools":[%s]},%s}]}`,
				e.dir, strings.Join(pools, ","), opts))
			_, err := e.add(bad, rtConf("c1", p))
			wantErr(t, err, cni.ErrGatewayUnreachable, "did not answer 2 probes")
			e.sameAs(before, p)
			e.mustAdd(good, rtConf("c2", p))
			e.mustDel(good, rtConf("c2", p))
			e.sameAs(before, p)
		})
	}
}
