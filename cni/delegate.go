package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/testhook"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/plan"

	"github.com/spinneret-cni/spinneret/internal/cniexec"
)

// maxDelegateConflist bounds the delegate's conflist as spinneret's own
// config is bounded.
const maxDelegateConflist = 1 << 20

// runDelegate makes eth0 with its delegate network's CNI: once the
// delegate is ready (its conflist there, its readiness file if it names
// one: else a retryable error, nothing taken), its conflist is read (now:
// its installer may have upgraded it), journaled with the runtime's
// arguments (the ledger entry whose release is the delegate's DEL), and
// its ADD run through libcni. Its result is eth0's addresses and routes.
func (p *plugin) runDelegate(j *txn.Journal, args *skel.CmdArgs, n plan.NIC) (*current.Result, error) {
	d := n.Network.Delegate
	b, _, notReady, err := delegateConflist(d)
	switch {
	case notReady != "":
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("network %s for %s: its CNI is not ready: %s", n.Network.Name, n.IfName, notReady), "")
	case errors.As(err, new(*fs.PathError)): // there, but not readable
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("network %s: %v", n.Network.Name, err), "")
	case err != nil:
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network %s: %v", n.Network.Name, err), "")
	}
	op := &drivers.DelegateNet{File: d.Conflist, Conflist: b, CNIPath: args.Path, CacheDir: statedir.Delegate(p.node.StateDir),
		ContainerID: args.ContainerID, NetNS: args.Netns, IfName: n.IfName, Args: argPairs(args.Args), CapabilityArgs: capabilityArgs(p.cfg.DelegateArgs)}
	if err := j.Hold(op); err != nil {
		return nil, err
	}
	testhook.Point("ledger-delegate")
	res, err := op.Add(context.Background())
	if err != nil {
		return nil, &ipam.DelegateError{Err: err}
	}
	p.phase("delegate")
	return res, nil
}

// delegateConflist reads a delegate network's conflist once its CNI is
// ready, as bytes (to journal) and parsed: notReady says why it is not (its readiness file or its conflist
// not there yet: its installer has not run); err is a conflist that is
// there but cannot be read, is too large, or is no conflist.
func delegateConflist(d *conf.Delegate) (b []byte, l *libcni.NetworkConfigList, notReady string, err error) {
	if f := d.ReadinessIndicatorFile; f != "" {
		if _, err := os.Stat(f); err != nil {
			return nil, nil, fmt.Sprintf("readiness indicator file %s: %v", f, errors.Unwrap(err)), nil
		}
	}
	b, err = os.ReadFile(d.Conflist)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil, fmt.Sprintf("no conflist %s yet", d.Conflist), nil
	case err != nil:
		return nil, nil, "", fmt.Errorf("conflist %s: %w", d.Conflist, err)
	case len(b) > maxDelegateConflist:
		return nil, nil, "", fmt.Errorf("conflist %s: %d bytes, at most %d", d.Conflist, len(b), maxDelegateConflist)
	}
	if l, err = libcni.ConfListFromBytes(b); err != nil {
		return nil, nil, "", fmt.Errorf("conflist %s: %w", d.Conflist, err)
	}
	return b, l, "", nil
}

// capabilityArgs is the runtime's capability arguments as libcni takes
// them; the delegate's plugins get those they declare.
func capabilityArgs(args map[string]json.RawMessage) map[string]any {
	if len(args) == 0 {
		return nil
	}
	out := make(map[string]any, len(args))
	for k, v := range args {
		out[k] = v
	}
	return out
}

// ignoredCapabilities names the runtime's capability arguments with a
// value that nothing of the pod acts on: those only a delegate would take
// (portMappings, bandwidth, ...) when eth0 is not a delegate's. As with
// Multus and a delegate that does not declare them, the pod is made
// without them; the log says so.
func ignoredCapabilities(args map[string]json.RawMessage) []string {
	var out []string
	for _, k := range conf.DelegateCapabilities {
		switch v := strings.TrimSpace(string(args[k])); v {
		case "", "null", "[]", "{}", `""`:
		default:
			out = append(out, k)
		}
	}
	return out
}

// argPairs is CNI_ARGS as libcni passes it on: "K=V;K2=V2" as pairs.
func argPairs(s string) [][2]string {
	var out [][2]string
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

// gcDelegates runs each delegate network's GC through libcni, after
// spinneret's own (whose journals' teardown ran the delegate's DEL of
// every attachment it knew): libcni runs the DEL of each attachment of
// the delegate its cache still has and the runtime does not list (one
// whose journal was lost), then, for a conflist of CNI 1.1, the plugins'
// own GC with the valid attachments (host-local releases what no valid
// attachment holds). An attachment whose lock is held (an ADD or DEL in
// flight) is valid for this GC; the others' locks are held while it runs,
// so no ADD of theirs starts under it. A delegate that is not ready is
// left: nothing of it can be read.
func (p *plugin) gcDelegates(cniPath string) error {
	var errs []error
	done := map[string]bool{}
	for _, n := range p.cfg.Networks {
		if d := n.Delegate; d != nil && !done[d.Conflist] {
			done[d.Conflist] = true
			if err := p.gcDelegate(n.Name, d, cniPath); err != nil {
				errs = append(errs, fmt.Errorf("network %s: %w", n.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (p *plugin) gcDelegate(name string, d *conf.Delegate, cniPath string) error {
	_, l, notReady, err := delegateConflist(d)
	if notReady != "" {
		p.log.Info("gc: delegate not ready, left", "network", name, "why", notReady)
		return nil
	}
	if err != nil {
		return err
	}
	c := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(cniPath), statedir.Delegate(p.node.StateDir), cniexec.Exec)
	cached, err := c.GetCachedAttachments("")
	if err != nil {
		return fmt.Errorf("delegate cache: %w", err)
	}
	valid := slices.Clone(p.cfg.ValidAttachments)
	isValid := func(id, ifname string) bool {
		return slices.ContainsFunc(valid, func(a types.GCAttachment) bool { return a.ContainerID == id && a.IfName == ifname })
	}
	held := map[string]*fileutil.Lock{}
	defer func() {
		for _, lk := range held {
			lk.Unlock()
		}
	}()
	if err := os.MkdirAll(statedir.Locks(p.node.StateDir), 0o700); err != nil {
		return err
	}
	stale := 0
	for _, a := range cached {
		if a.Network != l.Name || isValid(a.ContainerID, a.IfName) {
			continue
		}
		path := statedir.AttachmentLock(p.node.StateDir, txn.Key(a.ContainerID, a.IfName))
		if held[path] == nil {
			lk, err := fileutil.TryLockFile(path)
			if errors.Is(err, fileutil.ErrLocked) {
				valid = append(valid, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
				continue
			}
			if err != nil {
				return err
			}
			held[path] = lk
		}
		stale++
	}
	if err := c.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fmt.Errorf("its CNI (%s) GC: %w", d.Conflist, err)
	}
	p.log.Info("gc: delegate", "network", name, "conflist", d.Conflist, "stale", stale)
	return nil
}
