package tests

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/ipam"
)

// boot makes the plugin (a test build) run as in the node's boot id.
func boot(t *testing.T, id string) { t.Setenv("SPINNERET_TEST_BOOT_ID", id) }

// keepState copies the state dir; the function it returns puts the copy
// back. With a DEL between the two, it is a reboot as the node sees it:
// the kernel objects of the attachments are gone (the DEL removed them),
// their journals, addresses and records are still on disk.
func (e *env) keepState() func() {
	e.t.Helper()
	saved := filepath.Join(e.t.TempDir(), "state")
	if out, err := exec.Command("cp", "-a", e.stateDir(), saved).CombinedOutput(); err != nil {
		e.t.Fatalf("keep the state dir: %v %s", err, out)
	}
	return func() {
		e.t.Helper()
		if err := os.RemoveAll(e.stateDir()); err != nil {
			e.t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-a", saved, e.stateDir()).CombinedOutput(); err != nil {
			e.t.Fatalf("restore the state dir: %v %s", err, out)
		}
	}
}

// kernel dumps the namespaces' kernel state only (links, addresses,
// routes, rules, neighbours).
func kernel(t *testing.T, nss ...*netlab.NS) string {
	t.Helper()
	var parts []string
	for _, ns := range nss {
		d, err := ns.Dump()
		if err != nil {
			t.Fatalf("dump %s: %v", ns.Name, err)
		}
		parts = append(parts, "## "+ns.Name+"\n"+d)
	}
	return strings.Join(parts, "\n")
}

// TestRebootLateDEL: after a reboot (the kernel's objects gone, the state
// dir kept), a late DEL of a sandbox of the earlier boot releases its
// addresses and its journal and changes nothing in the kernel: not the
// node's links, routes (table 500, the shared rule), neighbours, nor the
// pod of this boot that now runs there. It says so in the log. CHECK of
// the old sandbox reports what is gone; GC of it converges the same way.
func TestRebootLateDEL(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", dual, "")
	boot(t, "boot-1")
	pA, _ := e.topo.NewPod()
	pA2, _ := e.topo.NewPod()
	e.mustAdd(l, rtConf("old", pA))
	e.mustAdd(l, rtConf("old-gc", pA2))
	restore := e.keepState()
	e.mustDel(l, rtConf("old", pA))
	e.mustDel(l, rtConf("old-gc", pA2))
	pA.Close()
	pA2.Close()
	restore()

	boot(t, "boot-2")
	pB, _ := e.topo.NewPod()
	rB := e.mustAdd(l, rtConf("new", pB))
	owners := func() map[string]bool {
		all, err := ipam.NewLocal(e.stateDir()).Owners()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, o := range all {
			m[o.ContainerID] = true
		}
		return m
	}
	if o := owners(); !o["old"] || !o["old-gc"] || !o["new"] {
		t.Fatalf("addresses held after the reboot: %v, want old, old-gc and new", o)
	}
	k := kernel(t, e.topo.Node, pB)
	if err := e.check(l, rtConf("old", pA)); err == nil {
		t.Errorf("CHECK of the earlier boot's sandbox passed")
	}
	e.mustDel(l, rtConf("old", pA))
	if err := e.gc(l, types.GCAttachment{ContainerID: "new", IfName: "eth0"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if after := kernel(t, e.topo.Node, pB); after != k {
		t.Fatalf("the earlier boot's DEL and GC changed the kernel:\n%s", netlab.Diff(k, after))
	}
	if o := owners(); o["old"] || o["old-gc"] || !o["new"] {
		t.Errorf("addresses held after the late DEL and GC: %v, want new's only", o)
	}
	journals, _ := filepath.Glob(filepath.Join(e.stateDir(), "journal", "*", "*.journal"))
	if len(journals) != 1 || !strings.Contains(journals[0], "new:eth0") {
		t.Errorf("journals left: %v", journals)
	}
	log, _ := os.ReadFile(filepath.Join(e.dir, "spinneret.log"))
	for _, c := range []string{"old", "old-gc"} {
		re := regexp.MustCompile(`(?m)^.*level=WARN msg="attachment of an earlier boot: .*left alone" pid=\d+ container=` + c +
			` ifname=eth0 journal-boot=boot-1 boot=boot-2 left-alone="step \d+ .*; step \d+ \(create macvlan eth0 .*; step \d+ \(add node route .*$`)
		if !re.Match(log) {
			t.Errorf("no report of what the late DEL or GC of %s left alone in the log", c)
		}
	}
	if err := pB.PingFrom(addrOf(t, rB, true), netip.MustParseAddr("192.0.2.1"), 5*time.Second); err != nil {
		t.Errorf("the pod of this boot after the late DEL: %v", err)
	}
	e.mustDel(l, rtConf("new", pB))
}
