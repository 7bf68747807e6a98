package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/spinneret-cni/spinneret/internal/txn"

	"github.com/spinneret-cni/spinneret/internal/cniexec"
)

func init() {
	txn.Register("ipam.delegate", func() txn.Op { return &Delegated{} })
}

// Delegated is an address allocation made by another IPAM plugin (the one
// a NetworkAttachmentDefinition names: host-local, whereabouts, ...), for
// one NIC: a ledger entry (txn.Held), recorded in the attachment's journal
// before the plugin's ADD runs, so that a rollback, a DEL or a GC after a crash releases it
// with the plugin's DEL, run with the same arguments.
type Delegated struct {
	Type        string          `json:"type"`
	Conf        json.RawMessage `json:"conf"`
	Path        string          `json:"path"` // CNI_PATH
	ContainerID string          `json:"containerID"`
	NetNS       string          `json:"netns"`
	IfName      string          `json:"ifname"`
	Args        string          `json:"args,omitempty"` // CNI_ARGS
	// Failures counts the DELs the plugin failed; after
	// txn.PluginDelAttempts, Undo gives up (txn.ErrAbandoned).
	Failures int `json:"failures,omitempty"`
}

func (o *Delegated) Kind() string { return "ipam.delegate" }

// HeldKey names the run in the ledger: one per NIC and plugin config (an
// ADD repeated with another config keeps both, and releases both).
func (o *Delegated) HeldKey() string {
	h := fnv.New64a()
	h.Write(o.Conf)
	return fmt.Sprintf("ipam.delegate/%s/%s/%x", o.IfName, o.Type, h.Sum64())
}
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
	r, err := invoke.ExecPluginWithResult(ctx, bin, o.Conf, o.args("ADD"), cniexec.Exec)
	if err != nil {
		return nil, fmt.Errorf("IPAM plugin %s for %s: %w", o.Type, o.IfName, err)
	}
	return current.NewResultFromResult(r)
}

// Do does nothing: the plugin's ADD runs before the plan (its addresses
// are the plan's input); this step is its record.
func (o *Delegated) Do(*txn.Env) error { return nil }

// Undo runs the plugin's DEL, which releases whatever it allocated for the
// NIC (and succeeds when it allocated nothing). It gives up (ErrAbandoned)
// when no retry can help: the journaled config is not a valid CNI config
// (a journal written before NADs without a name got the NAD's), the plugin
// answers with a permanent error code, or it failed txn.PluginDelAttempts
// times.
func (o *Delegated) Undo(*txn.Env) error {
	if err := o.confError(); err != nil {
		return txn.Abandon(fmt.Errorf("IPAM plugin %s for %s: the journaled config cannot be run: %w", o.Type, o.IfName, err))
	}
	bin, err := o.plugin()
	if err == nil {
		err = invoke.ExecPluginWithoutResult(context.Background(), bin, o.Conf, o.args("DEL"), cniexec.Exec)
	}
	if err == nil {
		return nil
	}
	return txn.PluginDelFailed(fmt.Errorf("IPAM plugin %s DEL for %s: %w", o.Type, o.IfName, err), &o.Failures)
}

// confError checks the journaled config as the CNI spec asks of any: a
// JSON object with a valid network name and a string cniVersion.
func (o *Delegated) confError() error {
	var c struct {
		Name       *string `json:"name"`
		CNIVersion any     `json:"cniVersion"`
	}
	if err := json.Unmarshal(o.Conf, &c); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	if c.Name == nil {
		return errors.New("no name")
	}
	if err := utils.ValidateNetworkName(*c.Name); err != nil {
		return err
	}
	if _, ok := c.CNIVersion.(string); c.CNIVersion != nil && !ok {
		return errors.New("cniVersion is not a string")
	}
	return nil
}

// Check does nothing: the NIC's address steps report the addresses.
func (o *Delegated) Check(*txn.Env) error { return nil }
