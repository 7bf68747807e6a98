package drivers

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/internal/txn"

	"github.com/spinneret-cni/spinneret/internal/cniexec"
)

func init() {
	txn.Register("delegate.net", func() txn.Op { return &DelegateNet{} })
}

// DelegateNet is a pod NIC another CNI makes: the conflist of the
// cluster's existing CNI (Calico, Cilium, ...) run through libcni for eth0,
// as Multus runs its "clusterNetwork". It is a ledger entry (txn.Held):
// journaled with everything its DEL needs before its ADD runs, whose
// result (eth0's addresses and routes) is an input of the plan, and it is
// released last, once every other step of the pod is undone, by the
// conflist's DEL, with the same conflist (as read at ADD: the file may
// have changed or gone since) and the same runtime arguments.
type DelegateNet struct {
	// File is the conflist's path; Conflist its bytes as read at ADD.
	File     string          `json:"file"`
	Conflist json.RawMessage `json:"conflist"`
	// CNIPath is where its plugins are (CNI_PATH); CacheDir is libcni's
	// result cache, under spinneret's state dir.
	CNIPath     string `json:"cniPath"`
	CacheDir    string `json:"cacheDir"`
	ContainerID string `json:"containerID"`
	NetNS       string `json:"netns"`
	IfName      string `json:"ifname"`
	// Args are CNI_ARGS as pairs; CapabilityArgs the runtime's
	// capability arguments, passed to the delegate's plugins that declare
	// them (libcni filters them).
	Args           [][2]string    `json:"args,omitempty"`
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
	// Failures counts the DELs the delegate failed; after
	// txn.PluginDelAttempts, Undo gives up (txn.ErrAbandoned), as for a
	// delegated IPAM plugin.
	Failures int `json:"failures,omitempty"`
}

func (o *DelegateNet) Kind() string    { return "delegate.net" }
func (o *DelegateNet) HeldKey() string { return "delegate.net/" + o.IfName }
func (o *DelegateNet) String() string {
	return fmt.Sprintf("%s from the CNI of %s", o.IfName, o.File)
}

func (o *DelegateNet) list() (*libcni.NetworkConfigList, error) {
	l, err := libcni.ConfListFromBytes(o.Conflist)
	if err != nil {
		return nil, fmt.Errorf("delegate %s: %w", o.File, err)
	}
	return l, nil
}

func (o *DelegateNet) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(filepath.SplitList(o.CNIPath), o.CacheDir, cniexec.Exec)
}

func (o *DelegateNet) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: o.ContainerID, NetNS: o.NetNS, IfName: o.IfName, Args: o.Args, CapabilityArgs: o.CapabilityArgs}
}

// Add runs the delegate's ADD and returns its result, converted to the
// current CNI version.
func (o *DelegateNet) Add(ctx context.Context) (*current.Result, error) {
	l, err := o.list()
	if err != nil {
		return nil, err
	}
	r, err := o.cni().AddNetworkList(ctx, l, o.rt())
	if err != nil {
		return nil, fmt.Errorf("delegate %s (%s) ADD for %s: %w", l.Name, o.File, o.IfName, err)
	}
	return current.NewResultFromResult(r)
}

// Do does nothing: the delegate's ADD runs before the plan (Add), and this
// step is its record.
func (o *DelegateNet) Do(*txn.Env) error { return nil }

// Undo runs the delegate's DEL (libcni gives it the cached result as
// prevResult), which succeeds when its ADD never ran or was undone
// already, as the CNI spec asks.
func (o *DelegateNet) Undo(*txn.Env) error {
	l, err := o.list()
	if err != nil {
		return txn.Abandon(err)
	}
	err = o.cni().DelNetworkList(context.Background(), l, o.rt())
	if err == nil {
		return nil
	}
	return txn.PluginDelFailed(fmt.Errorf("delegate %s (%s) DEL for %s: %w", l.Name, o.File, o.IfName, err), &o.Failures)
}

// Check runs the delegate's CHECK: its own view of its NIC. A conflist
// older than CNI 0.4.0 has no CHECK (libcni refuses it): nothing to run.
func (o *DelegateNet) Check(*txn.Env) error {
	l, err := o.list()
	if err != nil {
		return err
	}
	if ok, err := version.GreaterThanOrEqualTo(l.CNIVersion, "0.4.0"); err == nil && !ok {
		return nil
	}
	if err := o.cni().CheckNetworkList(context.Background(), l, o.rt()); err != nil {
		return fmt.Errorf("delegate %s (%s) CHECK for %s: %w", l.Name, o.File, o.IfName, err)
	}
	return nil
}
