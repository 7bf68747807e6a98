package tests

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/cni" // also registers every op kind
	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/request"
)

// scenario is a pod request the step tests replay: one NIC per family, and
// three NICs (eth0, net1, net2 on three networks) in dual stack.
type scenario struct {
	name    string
	network string
	setup   func(t *testing.T) (*env, *libcni.NetworkConfigList)
	rt      func(id string, p *netlab.NS) *libcni.RuntimeConf
}

func scenarios() []scenario {
	var out []scenario
	for _, fam := range families {
		out = append(out, scenario{name: string(fam), network: "underlay",
			setup: func(t *testing.T) (*env, *libcni.NetworkConfigList) {
				e := newEnv(t)
				return e, e.confList("1.1.0", fam, "")
			},
			rt: func(id string, p *netlab.NS) *libcni.RuntimeConf { return rtConf(id, p) }})
	}
	return append(out, scenario{name: "3nics-dual", network: "multi",
		setup: func(t *testing.T) (*env, *libcni.NetworkConfigList) {
			e := multiEnv(t)
			return e, e.multiConf(dual, "")
		},
		rt: func(id string, p *netlab.NS) *libcni.RuntimeConf {
			return podRT(id, p, map[string]string{request.AnnotNetworks: "blue, green"})
		}})
}

// planSteps runs one ADD and DEL to learn the plan's length.
func (sc scenario) planSteps(t *testing.T, e *env, l *libcni.NetworkConfigList) int {
	t.Helper()
	p, _ := e.topo.NewPod()
	e.mustAdd(l, sc.rt("probe", p))
	j, err := txn.LoadJournal(txn.JournalPath(e.stateDir(), sc.network, "probe", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	e.mustDel(l, sc.rt("probe", p))
	e.topo.RemovePod(p)
	return len(j.Plan())
}

// eachStep sets up each scenario, learns the plan's length n, and runs one
// ADD per step (0..n, n meaning after the last step) with envVar set to the
// step. after checks the ADD's outcome and cleans up if it must; then the
// node, the pod and the pool must be exactly as before, and stay so after a
// further DEL.
func eachStep(t *testing.T, envVar string, after func(e *env, sc scenario, l *libcni.NetworkConfigList, p *netlab.NS, step, n int, err error)) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			e, l := sc.setup(t)
			n := sc.planSteps(t, e, l)
			p, _ := e.topo.NewPod()
			before := e.snapshot(p)
			for step := 0; step <= n; step++ {
				t.Setenv(envVar, strconv.Itoa(step))
				_, err := e.add(l, sc.rt("c1", p))
				os.Unsetenv(envVar)
				after(e, sc, l, p, step, n, err)
				e.sameAs(before, p)
				e.mustDel(l, sc.rt("c1", p)) // a (further) DEL finds nothing to do
				e.sameAs(before, p)
			}
			e.mustAdd(l, sc.rt("c1", p)) // and the pool still serves
			e.mustDel(l, sc.rt("c1", p))
		})
	}
}

// TestRollback fails the ADD at each step of the plan in turn (and once
// after the last): the ADD reports the step, and the node, the pod and the
// pool are exactly as before, with no DEL.
func TestRollback(t *testing.T) {
	eachStep(t, "SPINNERET_TEST_FAIL_STEP", func(e *env, _ scenario, _ *libcni.NetworkConfigList, _ *netlab.NS, step, n int, err error) {
		wantErr(e.t, err, cni.ErrStepFailed, fmt.Sprintf("step %d/%d", min(step, n-1)+1, n))
		if !strings.Contains(err.Error(), "injected fault") || !strings.Contains(err.Error(), "rolled back") {
			e.t.Fatalf("step %d: error %q does not name the cause and the rollback", step, err)
		}
	})
}

// TestCrash SIGKILLs the binary after each journal step in turn (and after
// the last step, before the result): the journal holds the step that was
// about to run, and a following DEL leaves the node, the pod and the pool
// exactly as before.
func TestCrash(t *testing.T) {
	eachStep(t, "SPINNERET_TEST_KILL_STEP", func(e *env, sc scenario, l *libcni.NetworkConfigList, p *netlab.NS, step, n int, err error) {
		if err == nil || !strings.Contains(err.Error(), "signal: killed") {
			e.t.Fatalf("kill at step %d: ADD returned %v, want the process killed", step, err)
		}
		j, err := txn.LoadJournal(txn.JournalPath(e.stateDir(), sc.network, "c1", "eth0"))
		if err != nil {
			e.t.Fatalf("kill at step %d: the journal must survive the crash: %v", step, err)
		}
		// the whole plan is recorded before its first step runs, after the
		// ledger entry of the addresses it uses
		if len(j.Plan()) != n {
			e.t.Fatalf("kill at step %d: journal has %d steps, want the whole plan's %d", step, len(j.Plan()), n)
		}
		if l := j.Ledger(); len(l) != 1 || l[0].Op.Kind() != "ipam.local" {
			e.t.Fatalf("kill at step %d: ledger %v, want the local store's entry", step, l)
		}
		e.mustDel(l, sc.rt("c1", p))
	})
}

// TestCrashInIPAM SIGKILLs the binary inside the IPAM store: between the
// owner record and the claim, after the claim, after the pool state, and in
// DEL between queueing a released address and dropping its claim. After a
// DEL the pool is as before, and every address can still be handed out,
// once.
func TestCrashInIPAM(t *testing.T) {
	e := newEnv(t)
	l := e.confListRaw(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"spinneret","nodeConf":"` + e.dir + `/node.yaml","master":"uplink","ipam":{"pools":[` +
		`{"name":"small","subnet":"192.0.2.0/24","ranges":[{"start":"192.0.2.10","end":"192.0.2.11"}]},` +
		`{"name":"small6","subnet":"2001:db8:0:1::/64","ranges":[{"start":"2001:db8:0:1::10","end":"2001:db8:0:1::11"}]}]}}]}`)
	p1, _ := e.topo.NewPod()
	p2, _ := e.topo.NewPod()
	before := e.snapshot(p1, p2)
	// both addresses of each pool are usable, by two pods at once, once
	fillAndEmpty := func(point string) {
		t.Helper()
		r1 := e.mustAdd(l, rtConf("f1", p1))
		r2 := e.mustAdd(l, rtConf("f2", p2))
		for i := range r1.IPs {
			if r1.IPs[i].Address.String() == r2.IPs[i].Address.String() {
				t.Fatalf("after a kill at %s, %s was handed out twice", point, r1.IPs[i].Address.String())
			}
		}
		e.mustDel(l, rtConf("f1", p1))
		e.mustDel(l, rtConf("f2", p2))
		e.sameAs(before, p1, p2)
	}
	for _, point := range []string{"ipam-owner-written", "ipam-claimed", "ipam-state-saved"} {
		t.Setenv("SPINNERET_TEST_KILL_AT", point)
		if _, err := e.add(l, rtConf("c1", p1)); err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("kill at %s: ADD returned %v", point, err)
		}
		os.Unsetenv("SPINNERET_TEST_KILL_AT")
		e.mustDel(l, rtConf("c1", p1))
		e.sameAs(before, p1, p2)
		fillAndEmpty(point)
	}
	for _, point := range []string{"ipam-release-queued", "ipam-release-unclaimed"} {
		e.mustAdd(l, rtConf("c1", p1))
		t.Setenv("SPINNERET_TEST_KILL_AT", point)
		if err := e.del(l, rtConf("c1", p1)); err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("kill at %s: DEL returned %v", point, err)
		}
		os.Unsetenv("SPINNERET_TEST_KILL_AT")
		e.mustDel(l, rtConf("c1", p1))
		e.sameAs(before, p1, p2)
		fillAndEmpty(point)
	}
}
