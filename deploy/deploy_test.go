// Package deploy holds the example configs an operator starts from; the test
// keeps them valid.
package deploy

import (
	"os"
	"testing"

	"github.com/spinneret-cni/spinneret/conf"
)

func TestExamplesAreValid(t *testing.T) {
	b, err := os.ReadFile("00-spinneret.conflist")
	if err != nil {
		t.Fatal(err)
	}
	c, err := conf.ParseFile(b)
	if err != nil {
		t.Fatalf("00-spinneret.conflist: %v", err)
	}
	if len(c.Network.Pools) != 2 || len(c.Networks) != 2 || c.NodeConfPath != "/etc/spinneret/node.yaml" {
		t.Fatalf("parsed %+v", c)
	}
	storage, _ := c.Lookup("storage")
	if !storage.Coordinator.DetectIPConflict || c.Network.Coordinator.DetectIPConflict || len(storage.Coordinator.ServiceCIDR) != 1 {
		t.Fatalf("per-network coordinator overrides: %+v / %+v", storage.Coordinator, c.Network.Coordinator)
	}
	n, err := conf.LoadNode("node.yaml", true)
	if err != nil {
		t.Fatalf("node.yaml: %v", err)
	}
	if m, err := n.ResolveMaster(c.Network.Master); err != nil || m != "ens192" {
		t.Fatalf("master %q resolves to %q, %v", c.Network.Master, m, err)
	}
	if m, err := n.ResolveMaster(storage.Master); err != nil || m != "ens224" {
		t.Fatalf("master %q resolves to %q, %v", storage.Master, m, err)
	}
}

// The drivers example: VLAN on a master, macvlan on a VLAN on an LACP bond,
// ipvlan l3s with the kubernetes backend, SR-IOV from a device plugin.
func TestDriversExample(t *testing.T) {
	b, err := os.ReadFile("10-drivers-example.conflist")
	if err != nil {
		t.Fatal(err)
	}
	c, err := conf.ParseFile(b)
	if err != nil {
		t.Fatalf("10-drivers-example.conflist: %v", err)
	}
	bonded, _ := c.Lookup("bonded")
	l3, _ := c.Lookup("l3")
	fast, _ := c.Lookup("fast")
	if c.Network.VLAN != 100 || bonded.Bond == nil || bonded.Bond.Mode != "802.3ad" || bonded.VLAN != 200 ||
		l3.Driver != "ipvlan" || l3.Mode != "l3s" || !l3.KubeIPAM || fast.SRIOV == nil || fast.SRIOV.ResourceName == "" || fast.VLAN != 300 {
		t.Fatalf("parsed %+v / %+v / %+v / %+v", c.Network, bonded, l3, fast)
	}
}
