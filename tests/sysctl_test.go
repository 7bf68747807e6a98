package tests

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// readSysctl reads /proc/sys/<key> in ns with a path walk of its own (not
// the Env's kept directories it checks).
func readSysctl(t *testing.T, ns *netlab.NS, key string) string {
	t.Helper()
	v, err := ns.SysctlValue(key)
	if err != nil {
		t.Fatalf("read %s in %s: %v", key, ns.Name, err)
	}
	return v
}

// TestSysctlsLandInTheirNamespace: the Env keeps /proc/sys/net/<x> open
// per namespace, so a value meant for the pod must never be written
// through the node's directory, nor one meant for the node through the
// pod's, whatever the order; a missing key is skipped only where the step
// says so, and the error names it; Check reports a value changed since.
func TestSysctlsLandInTheirNamespace(t *testing.T) {
	e := newEnv(t)
	pod, err := e.topo.NewPod()
	if err != nil {
		t.Fatal(err)
	}
	const key, v6key = "net/ipv4/conf/all/rp_filter", "net/ipv6/conf/lo/hop_limit"
	nodeWas := readSysctl(t, e.topo.Node, key)
	for _, k := range []string{key, v6key} {
		k, was := k, readSysctl(t, e.topo.Node, k)
		t.Cleanup(func() { e.topo.Node.Sysctl(k, was) })
	}
	env := txn.NewEnv(pod.Path(), 0)
	defer env.Close()
	set := func(ns, k, v string) error {
		return e.topo.Node.Do(func() error {
			return (&netops.Sysctls{NS: ns, Values: []netops.Sysctl{{Key: k, Value: v}}}).Do(env)
		})
	}
	steps := []struct {
		ns, key, value string
	}{
		{txn.Pod, key, "2"}, {txn.Host, key, "1"}, {txn.Pod, key, "0"}, {txn.Host, key, "2"},
		{txn.Host, v6key, "33"}, {txn.Pod, v6key, "44"}, {txn.Host, v6key, "55"},
	}
	want := map[string]string{txn.Pod + key: readSysctl(t, pod, key), txn.Host + key: nodeWas}
	for i, s := range steps {
		if err := set(s.ns, s.key, s.value); err != nil {
			t.Fatalf("step %d: set %s=%s in %s: %v", i, s.key, s.value, s.ns, err)
		}
		want[s.ns+s.key] = s.value
		for _, n := range []struct {
			name string
			ns   *netlab.NS
		}{{txn.Pod, pod}, {txn.Host, e.topo.Node}} {
			for _, k := range []string{key, v6key} {
				if w, ok := want[n.name+k]; ok {
					if got := readSysctl(t, n.ns, k); got != w {
						t.Fatalf("after step %d (%s=%s in %s): %s in %s is %s, want %s", i, s.key, s.value, s.ns, k, n.name, got, w)
					}
				}
			}
		}
	}

	missing := "net/ipv6/conf/nosuch0/accept_ra"
	err = e.topo.Node.Do(func() error {
		return (&netops.Sysctls{NS: txn.Pod, Values: []netops.Sysctl{{Key: missing, Value: "0", IfPresent: true}}}).Do(env)
	})
	if err != nil {
		t.Errorf("IfPresent key missing: %v", err)
	}
	err = set(txn.Pod, missing, "0")
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "/proc/sys/"+missing) {
		t.Errorf("missing key: got %v, want a not-exist error naming /proc/sys/%s", err, missing)
	}

	for _, bad := range []string{"net/ipv4/../../kernel/hostname", "net/ipv4//conf/all/rp_filter", "net/./ipv4/conf/all/rp_filter"} {
		if err := set(txn.Pod, bad, "x"); !errors.Is(err, unix.EINVAL) {
			t.Errorf("key %s: got %v, want EINVAL (a key names a file under /proc/sys, nothing else)", bad, err)
		}
	}

	check := &netops.Sysctls{NS: txn.Pod, Values: []netops.Sysctl{{Key: key, Value: "0"}, {Key: v6key, Value: "44"}}}
	if err := e.topo.Node.Do(func() error { return check.Check(env) }); err != nil {
		t.Errorf("check of the values set: %v", err)
	}
	if err := pod.Sysctl(key, "1"); err != nil {
		t.Fatal(err)
	}
	err = e.topo.Node.Do(func() error { return check.Check(env) })
	if err == nil || !strings.Contains(err.Error(), key+" is 1, want 0") {
		t.Errorf("check after the pod's rp_filter changed: got %v", err)
	}
}
