package tests

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/internal/netlab"
)

// TestConcurrentAdds runs ADDs for many pods at once (separate processes, as
// a runtime does): every pod gets distinct addresses, each pod reaches the
// gateway, and concurrent DELs leave everything as before.
func TestConcurrentAdds(t *testing.T) {
	const n = 16
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	pods := make([]*netlab.NS, n)
	for i := range pods {
		pods[i], _ = e.topo.NewPod()
	}
	before := e.snapshot(pods...)
	addrs := make([][]netip.Addr, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := e.add(l, rtConf(fmt.Sprintf("c%d", i), pods[i]))
			if err != nil {
				errs <- fmt.Errorf("ADD c%d: %w", i, err)
				return
			}
			addrs[i] = resultAddrs(res)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	distinctAddrs(t, addrs)
	// the node's "from all lookup 500" rule exists once per family, however
	// many ADDs raced to create it
	oneHostRule(t, e, fmt.Sprintf("after %d concurrent ADDs", n))
	for _, p := range []*netlab.NS{pods[0], pods[n-1]} {
		for _, gw := range []netip.Addr{netlab.Gateway4, netlab.Gateway6} {
			if err := p.Ping(gw, 5e9); err != nil {
				t.Error(err)
			}
		}
	}
	errs = make(chan error, n)
	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := e.del(l, rtConf(fmt.Sprintf("c%d", i), pods[i])); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.sameAs(before, pods...)
}

// resultAddrs are the addresses of an ADD's result.
func resultAddrs(res types.Result) []netip.Addr {
	r, _ := currentResult(res)
	var out []netip.Addr
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		out = append(out, a.Unmap())
	}
	return out
}

// distinctAddrs fails unless every pod got two addresses (IPv4 and IPv6)
// and no address went to two pods.
func distinctAddrs(t *testing.T, addrs [][]netip.Addr) {
	t.Helper()
	seen := map[netip.Addr]int{}
	for i, as := range addrs {
		if len(as) != 2 {
			t.Fatalf("pod %d got %v", i, as)
		}
		for _, a := range as {
			if j, dup := seen[a]; dup {
				t.Fatalf("%s given to pods %d and %d", a, j, i)
			}
			seen[a] = i
		}
	}
}

// oneHostRule fails unless the node's "from all lookup 500" rule exists
// exactly once per family (when: what the test just did).
func oneHostRule(t *testing.T, e *env, when string) {
	t.Helper()
	for _, fam := range []int{2, 10} {
		rules, _ := e.topo.Node.NL().RuleList(fam)
		count := 0
		for _, r := range rules {
			if r.Table == 500 {
				count++
			}
		}
		if count != 1 {
			t.Errorf("family %d: %d host rules %s, want 1", fam, count, when)
		}
	}
}

// TestRepeatedAdd: an ADD for an attachment that already exists (no DEL in
// between) replaces it in place and keeps its addresses.
func TestRepeatedAdd(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.0.0", dual, "")
	p, _ := e.topo.NewPod()
	before := e.snapshot(p)
	r1 := e.mustAdd(l, rtConf("c1", p))
	// the runtime lost track and adds again; eth0 exists, which the plugin
	// refuses for a foreign link but must not for its own attachment
	_, err := e.add(l, rtConf("c1", p))
	if err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	r2 := e.mustAdd(l, rtConf("c1", p))
	if r1.IPs[0].Address.String() != r2.IPs[0].Address.String() {
		t.Fatalf("addresses changed: %v -> %v", r1.IPs, r2.IPs)
	}
	if err := p.Ping(netlab.Gateway4, 5e9); err != nil {
		t.Fatal(err)
	}
	e.mustDel(l, rtConf("c1", p))
	e.sameAs(before, p)
}

// TestConcurrentAddDelPairs: 200 pods at once, each an ADD (a process of
// its own, as a runtime runs them), half of them followed at once by
// their DEL, all racing: no address is given twice (no immediate reuse:
// the pool has never-used addresses left), the node's shared host rule
// exists once per family while any pod is up, and the concurrent DELs of
// the rest leave the node and every pod as before.
func TestConcurrentAddDelPairs(t *testing.T) {
	const n = 200
	e := newEnv(t)
	l := e.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","master":"uplink","ipam":{"pools":[
		{"name":"c-v4","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.10","end":"192.0.2.250"}],"gateway":"192.0.2.1"},
		{"name":"c-v6","subnet":"2001:db8:0:1::/64","ranges":[{"start":"2001:db8:0:1::10","end":"2001:db8:0:1::ff"}],"gateway":"2001:db8:0:1::1"}]}}]}`, e.dir))
	pods := make([]*netlab.NS, n)
	for i := range pods {
		pods[i], _ = e.topo.NewPod()
	}
	before := e.snapshot(pods...)
	addrs := make([][]netip.Addr, n)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rt := rtConf(fmt.Sprintf("c%d", i), pods[i])
			res, err := e.add(l, rt)
			if err != nil {
				errs <- fmt.Errorf("ADD c%d: %w", i, err)
				return
			}
			addrs[i] = resultAddrs(res)
			if i%2 == 0 {
				if err := e.del(l, rt); err != nil {
					errs <- fmt.Errorf("DEL c%d: %w", i, err)
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	distinctAddrs(t, addrs)
	oneHostRule(t, e, fmt.Sprintf("with %d pods up", n/2))
	errs = make(chan error, n)
	for i := 1; i < n; i += 2 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := e.del(l, rtConf(fmt.Sprintf("c%d", i), pods[i])); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.sameAs(before, pods...)
}
