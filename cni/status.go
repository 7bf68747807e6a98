package cni

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/ipam"
)

// cmdStatus reports whether ADDs can be served: the state dir is writable
// and each address family of the network has a pool with a free address.
func cmdStatus(args *skel.CmdArgs) error {
	p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	defer p.close()
	if err := os.MkdirAll(p.node.StateDir, 0o755); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("state dir %s: %v", p.node.StateDir, err), "")
	}
	f, err := os.CreateTemp(p.node.StateDir, ".status-*")
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("state dir %s is not writable: %v", p.node.StateDir, err), "")
	}
	f.Close()
	os.Remove(f.Name())
	for _, fam := range ipam.Families(p.cfg.Network.Pools) {
		var names []string
		for _, pool := range fam {
			ex, err := p.store.Exhausted(pool)
			if err != nil {
				return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
			}
			if !ex {
				names = nil
				break
			}
			names = append(names, pool.Name)
		}
		if names != nil {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("network %s: pools %v are exhausted", p.cfg.Name, names), "")
		}
	}
	return nil
}
