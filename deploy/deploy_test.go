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
