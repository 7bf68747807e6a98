package ipam

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("ipam.delegate", func() txn.Op { return &Delegated{} })
}

// Delegated is an address allocation made by another IPAM plugin (the one
// a NetworkAttachmentDefinition names: host-local, whereabouts, ...), for
// one NIC. It is recorded in the attachment's journal before the plugin's
// ADD runs, so that a rollback, a DEL or a GC after a crash releases it
// with the plugin's DEL, run with the same arguments.
type Delegated struct {
	Type        string          `json:"type"`
	Conf        json.RawMessage `json:"conf"`
	Path        string          `json:"path"` // CNI_PATH
	ContainerID string          `json:"containerID"`
	NetNS       string          `json:"netns"`
	IfName      string          `json:"ifname"`
	Args        string          `json:"args,omitempty"` // CNI_ARGS
}

func (o *Delegated) Kind() string { return "ipam.delegate" }
func (o *Delegated) String() string {
	return fmt.Sprintf("addresses of %s from IPAM plugin %s", o.IfName, o.Type)
}

func (o *Delegated) args(command string) *invoke.Args {
	return &invoke.Args{Command: command, ContainerID: o.ContainerID, NetNS: o.NetNS, IfName: o.IfName, PluginArgsStr: o.Args, Path: o.Path}
}

func (o *Delegated) plugin() (string, error) {
	return invoke.FindInPath(o.Type, filepath.SplitList(o.Path))
}

// Add runs the plugin's ADD and returns its result.
func (o *Delegated) Add(ctx context.Context) (*current.Result, error) {
	bin, err := o.plugin()
	if err != nil {
		return nil, fmt.Errorf("IPAM plugin %s: %w", o.Type, err)
	}
	r, err := invoke.ExecPluginWithResult(ctx, bin, o.Conf, o.args("ADD"), nil)
	if err != nil {
		return nil, fmt.Errorf("IPAM plugin %s for %s: %w", o.Type, o.IfName, err)
	}
	return current.NewResultFromResult(r)
}

// Do does nothing: the plugin's ADD runs before the plan (its addresses
// are the plan's input); this step is its record.
func (o *Delegated) Do(*txn.Env) error { return nil }

// Undo runs the plugin's DEL, which releases whatever it allocated for the
// NIC (and succeeds when it allocated nothing).
func (o *Delegated) Undo(*txn.Env) error {
	bin, err := o.plugin()
	if err != nil {
		return fmt.Errorf("IPAM plugin %s: %w", o.Type, err)
	}
	return invoke.ExecPluginWithoutResult(context.Background(), bin, o.Conf, o.args("DEL"), nil)
}

// Check does nothing: the NIC's address steps report the addresses.
func (o *Delegated) Check(*txn.Env) error { return nil }
