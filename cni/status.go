package cni

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/ipam"

	"github.com/spinneret-cni/spinneret/internal/cniexec"
)

// cmdStatus reports whether ADDs can be served: the state dir is writable,
// each address family of the network has a pool with a free address, and,
// when the primary network's addresses come from the kubernetes backend,
// the API server answers, and when it is a delegate network, its CNI is
// ready (conflist, readiness file) and its own STATUS passes.
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
	if d := p.cfg.Network.Delegate; d != nil {
		if err := delegateStatus(p.cfg.Network.Name, d, args.Path); err != nil {
			return err
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

// delegateStatus is a delegate network's readiness and its CNI's STATUS
// (for a conflist of CNI 1.1 or later; libcni skips older ones).
func delegateStatus(name string, d *conf.Delegate, cniPath string) error {
	_, l, notReady, err := delegateConflist(d)
	switch {
	case notReady != "":
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("network %s: its CNI is not ready: %s", name, notReady), "")
	case err != nil:
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("network %s: %v", name, err), "")
	}
	if err := libcni.NewCNIConfig(filepath.SplitList(cniPath), cniexec.Exec).GetStatusNetworkList(context.Background(), l); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("network %s: its CNI (%s) reports: %v", name, d.Conflist, err), "")
	}
	return nil
}
