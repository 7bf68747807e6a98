package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/request"
)

func cmdCheck(args *skel.CmdArgs) (err error) {
	p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	defer func(t time.Time) { p.done("CHECK", args, t, err) }(time.Now())
	p.args, _ = request.ParseArgs(args.Args) // for the log line alone
	j, err := txn.LoadJournal(p.journalPath(args.ContainerID, args.IfName))
	if errors.Is(err, os.ErrNotExist) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no attachment %s/%s in network %s", args.ContainerID, args.IfName, p.cfg.Name), "")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if j.State != txn.StateCommitted {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("attachment %s/%s: ADD did not complete (state %s)", args.ContainerID, args.IfName, j.State), "")
	}
	p.sum.fromJournal(j)
	env := p.envFor(j)
	defer env.Close()
	drift := []error{txn.Check(env, j), checkInterfaces(env, j.Result)}
	drift = append(drift, comparePrevResult(p.cfg.CNIVersion, p.cfg.PrevResult, j.Result)...)
	if err := errors.Join(drift...); err != nil {
		return types.NewError(types.ErrInternal, "drift: "+err.Error(), "")
	}
	return nil
}

// comparePrevResult reports what the runtime's prevResult claims that the
// attachment does not have: interfaces and addresses.
func comparePrevResult(cniVersion string, prev, recorded json.RawMessage) []error {
	if len(prev) == 0 {
		return nil // nothing claimed; the journal is checked against the kernel
	}
	pr, err := parseResult(cniVersion, prev)
	if err != nil {
		return []error{fmt.Errorf("prevResult: %w", err)}
	}
	rec, err := parseResult(current.ImplementedSpecVersion, recorded)
	if err != nil {
		return []error{fmt.Errorf("journal result: %w", err)}
	}
	var names, addrs []string
	for _, i := range rec.Interfaces {
		names = append(names, i.Name)
	}
	for _, ip := range rec.IPs {
		addrs = append(addrs, ip.Address.String())
	}
	var errs []error
	for _, i := range pr.Interfaces {
		if i.Sandbox != "" && !slices.Contains(names, i.Name) {
			errs = append(errs, fmt.Errorf("prevResult: interface %s is not part of the attachment", i.Name))
		}
	}
	for _, ip := range pr.IPs {
		if !slices.Contains(addrs, ip.Address.String()) {
			errs = append(errs, fmt.Errorf("prevResult: address %s is not part of the attachment", ip.Address.String()))
		}
	}
	return errs
}

// checkInterfaces compares the MAC and MTU each pod interface had when ADD
// returned with what it has now.
func checkInterfaces(env *txn.Env, recorded json.RawMessage) error {
	rec, err := parseResult(current.ImplementedSpecVersion, recorded)
	if err != nil {
		return fmt.Errorf("journal result: %w", err)
	}
	var errs []error
	for _, i := range rec.Interfaces {
		if i.Sandbox == "" {
			continue
		}
		_, l, err := netops.Link(env, txn.Pod, i.Name)
		if err != nil {
			continue // reported by the step that created it
		}
		if mac := l.Attrs().HardwareAddr.String(); mac != i.Mac {
			errs = append(errs, fmt.Errorf("%s: mac %s, was %s at ADD", i.Name, mac, i.Mac))
		}
		if i.Mtu != 0 && l.Attrs().MTU != i.Mtu {
			errs = append(errs, fmt.Errorf("%s: mtu %d, was %d at ADD", i.Name, l.Attrs().MTU, i.Mtu))
		}
	}
	return errors.Join(errs...)
}

func parseResult(cniVersion string, b []byte) (*current.Result, error) {
	r, err := version.NewResult(cniVersion, b)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}
