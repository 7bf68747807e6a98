package cni

import (
	"context"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/ipam"
)

// cmdStatus reports whether ADDs can be served: the state dir is writable,
// each address family of the network has a pool with a free address, and,
// when the primary network's addresses come from the kubernetes backend,
// the API server answers.
func cmdStatus(args *skel.CmdArgs) error {
	p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	defer p.close()
	if err := os.MkdirAll(p.node.StateDir, 0o700); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("state dir %s: %v", p.node.StateDir, err), "")
	}
	f, err := os.CreateTemp(p.node.StateDir, ".status-*")
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("state dir %s is not writable: %v", p.node.StateDir, err), "")
	}
	f.Close()
	os.Remove(f.Name())
	if p.cfg.Network.KubeIPAM {
		c, err := p.kubeClient()
		if err == nil && c == nil {
			err = fmt.Errorf("the node conf names no kubeconfig")
		}
		if err == nil {
			err = c.Get(context.Background(), "/readyz", nil)
		}
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("network %s takes its addresses from the kubernetes backend: %v", p.cfg.Network.Name, err), "")
		}
	}
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
