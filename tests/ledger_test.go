package tests

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

// TestLedgerCrashMatrix: one pod takes addresses from all three kinds of
// IPAM at once: eth0 from the local store, net1 from an IPPool (kubernetes
// backend), net2 from host-local (the IPAM plugin its NAD names). The ADD
// is SIGKILLed at every point where one of them takes effect or is
// recorded, and after every plan step; then a DEL (and, separately, a GC
// that lists no attachment) must leave nothing: no link, route or rule on
// the node or in the pod, no local claim, no IPAllocation, no host-local
// lease, no journal.
func TestLedgerCrashMatrix(t *testing.T) {
	k := newKubeEnv(t)
	if code := apiRequest(t, k.a, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", nadCRD, nil); code != http.StatusCreated {
		t.Fatalf("NAD CRD: %d", code)
	}
	k.pools()
	n := k.topo.Nets
	hlData := filepath.Join(k.dir, "host-local")
	ns := "spin"
	uid := k.pod(ns, "mixed", nil, map[string]string{"k8s.v1.cni.cncf.io/networks": "blue, hl-nad"}, "")
	createNAD(t, k.a, ns, "hl-nad", fmt.Sprintf(`{"cniVersion":"0.3.1","name":"hl-nad","type":"macvlan","master":%q,"mode":"bridge",
		"ipam":{"type":"host-local","subnet":%q,"rangeStart":%q,"rangeEnd":%q,"gateway":%q,"dataDir":%q}}`,
		n[2].Uplink, n[2].Subnet4.String(), nth(n[2].Subnet4, 80).String(), nth(n[2].Subnet4, 89).String(), n[2].GW4.String(), hlData))
	l := k.confListRaw(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"mixed","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml","nadSubnets":["any"],"networks":[
		{"name":"red","master":%q,"ipam":{"pools":[{"name":"red-v4","subnet":%q,"gateway":%q,"ranges":[{"start":%q,"end":%q}]}]}},
		{"name":"blue","master":%q,"ipam":{"ippools":["blue-v4"]}}]}]}`,
		k.dir, n[0].Uplink, n[0].Subnet4.String(), n[0].GW4.String(), nth(n[0].Subnet4, 10).String(), nth(n[0].Subnet4, 20).String(), n[1].Uplink))
	p, _ := k.topo.NewPod()
	before := k.snapshot(p)
	nothingLeft := func(how string) {
		t.Helper()
		k.sameAs(before, p)
		if al := k.allocations(); len(al) != 0 {
			t.Fatalf("%s: IPAllocations left: %s", how, allocSummary(al))
		}
		if h := hostLocalHeld(hlData, "hl-nad"); len(h) != 0 {
			t.Fatalf("%s: host-local still holds %v", how, h)
		}
		if js, _ := txn.ListJournals(k.stateDir(), "mixed"); len(js) != 0 {
			t.Fatalf("%s: %d journal(s) left", how, len(js))
		}
	}
	// the plan's length, and that the pod really has all three kinds
	rt := kubeRT("probe", p, ns, "mixed", uid)
	r := k.mustAdd(l, rt)
	for _, nic := range []string{"eth0", "net1", "net2"} {
		nicAddr(t, r, nic, true) // fails the test if the NIC has none

	}
	j, err := txn.LoadJournal(txn.JournalPath(k.stateDir(), "mixed", "probe", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, s := range j.Ledger() {
		kinds = append(kinds, s.Op.Kind())
	}
	if got := strings.Join(kinds, ","); got != "ipam.local,ipam.kube,ipam.delegate" {
		t.Fatalf("ledger %s, want the local store's, the kubernetes backend's and host-local's entries", got)
	}
	steps := len(j.Plan())
	k.mustDel(l, rt)
	nothingLeft("probe")

	type kill struct{ env, at string }
	var kills []kill
	for _, at := range []string{"ledger-local", "ipam-owner-written", "ipam-claimed", "ledger-kube", "kube-created", "ledger-kube-objects", "ledger-delegated"} {
		kills = append(kills, kill{"SPINNERET_TEST_KILL_AT", at})
	}
	for i := 0; i <= steps; i++ {
		kills = append(kills, kill{"SPINNERET_TEST_KILL_STEP", strconv.Itoa(i)})
	}
	t.Logf("%d kill points (a plan of %d steps), each then DEL, and then GC", len(kills), steps)
	for _, then := range []string{"DEL", "GC"} {
		for i, kl := range kills {
			how := fmt.Sprintf("killed at %s=%s, then %s", kl.env, kl.at, then)
			rt := kubeRT(fmt.Sprintf("c%s%d", then, i), p, ns, "mixed", uid)
			t.Setenv(kl.env, kl.at)
			_, err := k.add(l, rt)
			os.Unsetenv(kl.env)
			if err == nil || !strings.Contains(err.Error(), "signal: killed") {
				t.Fatalf("%s: ADD returned %v, want the process killed", how, err)
			}
			if then == "DEL" {
				k.mustDel(l, rt)
			} else if err := k.gc(l); err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			nothingLeft(how)
		}
	}
	// and the pool still serves
	k.mustAdd(l, kubeRT("last", p, ns, "mixed", uid))
	k.mustDel(l, kubeRT("last", p, ns, "mixed", uid))
	nothingLeft("last")
}
