package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/facts"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/plan"
	"github.com/spinneret-cni/spinneret/request"
)

func cmdAdd(args *skel.CmdArgs) (err error) {
	p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	defer func(t time.Time) { p.done("ADD", args, t, err) }(time.Now())
	if p.args, err = request.ParseArgs(args.Args); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+err.Error(), "")
	}
	defer func() {
		if err != nil {
			p.reportFailure(args, err)
		}
	}()
	return p.add(args)
}

// add runs the stages of an ADD in turn: the request (every user error),
// what of it needs the node or the cluster, the node facts, the
// addresses (one IPAM front, its ledger in the journal), the plan, its
// application as one transaction, and the report. Every failure after the
// first address is taken ends in abort.
func (p *plugin) add(args *skel.CmdArgs) error {
	if err := conf.PodIfNameError(args.IfName, true); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: "+err.Error(), "")
	}
	lk, err := p.attachmentLock(args.ContainerID, args.IfName, true)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer lk.Unlock()
	req, err := p.request(args)
	if err != nil {
		return requestError(err)
	}
	// before the node or the cluster is asked anything: never the node's
	// own namespace
	ino, err := txn.PodNetNSInode(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	nics, err := p.nicsFor(req)
	if err != nil {
		return requestError(err)
	}
	p.coord = nics[0].Network.Coordinator
	if ign := ignoredCapabilities(p.cfg.DelegateArgs); len(ign) > 0 && nics[0].Network.Delegate == nil {
		p.log.Warn("the runtime's "+strings.Join(ign, ", ")+" ignored: only a delegate primary network's CNI acts on them, and this pod's "+args.IfName+" is network "+nics[0].Network.Name+"'s",
			"container", args.ContainerID, "pod", req.Pod.String())
	}
	env := p.newEnv(args.Netns, ino)
	defer env.Close()
	j := txn.NewJournal(p.node.StateDir, p.cfg.Name, args.ContainerID, args.IfName, args.Netns, ino)
	if req.Pod != nil {
		j.Pod, j.PodUID = req.Pod.String(), req.Pod.UID
	}
	if err := p.replaceEarlier(j); err != nil {
		return err
	}
	if err := facts.Precheck(env, nics); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	host, err := env.Handle(txn.Host)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	cluster := p.clusterCIDRs()
	if err := facts.NodeAddrRule(host, nics, p.node.NodeIPs, p.serviceCIDRs(cluster)); err != nil {
		return types.NewError(ErrBadRequest, err.Error(), "")
	}
	p.phase("check")

	// from here on, what is taken is in the journal
	alloc := p.allocator(j, args)
	var delegated *current.Result
	if nics[0].Network.Delegate != nil {
		// eth0 first, made by its network's CNI
		if delegated, err = p.runDelegate(j, args, nics[0]); err != nil {
			return p.abort(env, j, alloc, err)
		}
	}
	got, err := alloc.Allocate(ipamNeeds(nics))
	if err != nil {
		return p.abort(env, j, alloc, err)
	}
	if delegated != nil {
		got.Delegated[nics[0].IfName] = delegated
	}
	in, err := p.planInput(env, args.ContainerID, withAddrs(nics, got), cluster)
	if err != nil {
		return p.abort(env, j, alloc, err)
	}
	p.phase("allocate")
	pl := plan.New(in)
	if err := txn.Apply(env, j, pl.Ops); err != nil {
		return p.abort(env, j, alloc, err)
	}
	p.phase("apply")
	res, err := p.commit(env, j, args, in, pl)
	if err != nil {
		return p.abort(env, j, alloc, &codedError{ErrStepFailed, fmt.Errorf("after the last step: %w", err)})
	}
	return types.PrintResult(forVersion(res, p.cfg.CNIVersion), p.cfg.CNIVersion)
}

// serviceCIDRs are the cluster's service CIDRs as the coordinator has
// them (configured, or learnt from the cluster): no pod address may be
// inside one.
func (p *plugin) serviceCIDRs(cluster plan.ClusterCIDRs) []netip.Prefix {
	return slices.Concat(p.coord.ServiceCIDR, cluster.Service)
}

// requestError is the CNI error of a request the pod or runtime got wrong.
func requestError(err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return types.NewError(te.Code, err.Error(), "") // with the entry that led to it
	}
	if errors.Is(err, request.ErrCapability) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	if c, ok := apiCode(err); ok {
		return types.NewError(c, err.Error(), "") // not the pod's doing
	}
	if errors.Is(err, kube.ErrUnreachable) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return types.NewError(ErrBadRequest, err.Error(), "")
}

// replaceEarlier readies j to replace the journal of an ADD for the same
// attachment without DEL: what that ADD did is undone, and its ledger is
// carried into j, whose allocation the idempotent backends answer with
// the same addresses. A delegate's eth0 is the exception: the delegate's
// DEL runs now (its ADD would fail on the eth0 it made before), and eth0
// is made afresh.
func (p *plugin) replaceEarlier(j *txn.Journal) error {
	old, err := txn.LoadJournal(j.Path())
	if err != nil {
		return nil // none (or unreadable: DEL and GC report it)
	}
	for _, s := range old.Steps {
		if txn.IsForeign(s.Op) {
			// replacing it would drop what only its writer can undo
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("an earlier ADD of this attachment by a newer spinneret (journal format %d, this binary %d) has a step this binary cannot undo: %s; DEL the attachment with that spinneret", old.Format, txn.Format, s.Op), "")
		}
	}
	oenv := p.envFor(old)
	defer oenv.Close()
	err = txn.RollbackPlan(oenv, old)
	p.reportAbandoned(old, nil, oenv.Abandoned)
	p.reportLeftAlone(old, oenv)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "undo earlier ADD: "+err.Error(), "")
	}
	var carry []txn.Step
	for _, s := range old.Ledger() {
		d, ok := s.Op.(*drivers.DelegateNet)
		if !ok {
			carry = append(carry, s)
			continue
		}
		// a crash from here on leaves old's entry: the DEL or GC that
		// finds it runs the delegate's DEL again, which it allows
		if err := d.Undo(oenv); err != nil {
			return types.NewError(types.ErrTryAgainLater, "undo earlier ADD: "+err.Error(), "")
		}
	}
	j.Carry(carry)
	return nil
}

// withAddrs gives each NIC what the IPAM front allocated for it.
func withAddrs(nics []plan.NIC, got *ipam.Allocated) []plan.NIC {
	for i := range nics {
		for _, a := range got.Addrs {
			if a.IfName == nics[i].IfName {
				nics[i].Addrs = append(nics[i].Addrs, a)
			}
		}
		if res := got.Delegated[nics[i].IfName]; res != nil {
			nics[i].UseDelegated(res)
		}
	}
	return nics
}

// planInput is the plan's input: the NICs with their addresses, checked
// against how the node routes each (looked up once: for the address rule
// and for the node's addresses behind veth0), and the cluster's CIDRs.
func (p *plugin) planInput(env *txn.Env, containerID string, nics []plan.NIC, cluster plan.ClusterCIDRs) (plan.Input, error) {
	in := plan.Input{ContainerID: containerID, NICs: nics, Cluster: cluster}
	host, err := env.Handle(txn.Host)
	if err != nil {
		return in, &codedError{types.ErrInternal, fmt.Errorf("learn node addresses: %w", err)}
	}
	routes := coordinator.RouteAddrs(host, facts.AllocatedAddrs(nics))
	if err := facts.CheckAllocated(nics, routes, p.serviceCIDRs(cluster)); err != nil {
		return in, err
	}
	if p.coord.Enabled() {
		in.NodeIPs = facts.NodeIPs(p.node.NodeIPs, routes)
		if len(in.NodeIPs) == 0 {
			p.log.Warn("no node address found towards the pod's networks: the pod will not reach its node through veth0 (set nodeIPs in the node conf)")
		}
	}
	if p.coord.Overlay() && nics[0].Network.Delegate != nil {
		pod, err := env.Handle(txn.Pod)
		if err != nil {
			return in, &codedError{types.ErrInternal, fmt.Errorf("read eth0 from the delegate: %w", err)}
		}
		if in.Overlay, err = coordinator.ReadOverlay(pod, host, nics[0].IfName); err != nil {
			return in, &codedError{types.ErrInvalidNetworkConfig, fmt.Errorf("network %s: coordinator mode overlay: %w", nics[0].Network.Name, err)}
		}
	}
	return in, nil
}

// commit reads the applied state back into the CNI result, commits the
// journal with it, and reports the attachment (network-status, log).
func (p *plugin) commit(env *txn.Env, j *txn.Journal, args *skel.CmdArgs, in plan.Input, pl *plan.Plan) (*current.Result, error) {
	res, err := buildResult(env, args.Netns, in, pl.Layout, p.cfg.DNS)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(res)
	if err == nil {
		err = j.Commit(b)
	}
	if err != nil {
		return nil, err
	}
	p.phase("commit")
	p.sum.fromResult(res)
	p.sum.steps = len(j.Steps)
	p.writeNetworkStatus(args, in.NICs, res)
	for _, n := range in.NICs {
		for _, a := range n.Addrs {
			p.log.Info("attached", "container", args.ContainerID, "nic", n.IfName, "network", n.Network.Name, "master", n.LinkMaster(), "pool", a.Pool, "address", a.Address)
		}
	}
	return res, nil
}

// abort is the one way a failed ADD ends, whatever failed after the first
// address was taken: an address another host answers for is quarantined
// (handing it to the next pod would fail the same way), then the journal
// is rolled back, the plan's steps and then the ledger, which releases
// every address of every backend. The journal is removed, or kept for DEL
// with what could not be undone.
func (p *plugin) abort(env *txn.Env, j *txn.Journal, front ipam.Allocator, cause error) error {
	code := errorCode(cause)
	if errors.Is(cause, kube.ErrUnreachable) {
		p.apiDown = true // no release waits out the timeout again
	}
	var conflict *coordinator.ConflictError
	if errors.As(cause, &conflict) {
		d := p.coord.Quarantine
		if err := front.Quarantine(conflict.Addr, d); err != nil {
			p.log.Error("quarantine", "address", conflict.Addr, "err", err)
		} else {
			cause = fmt.Errorf("%w; %s is quarantined for %s", cause, conflict.Addr, d)
		}
	}
	front.Failed()
	p.sum.steps = len(j.Steps) // held or done before the failure
	undoErr := txn.Rollback(env, j)
	p.reportAbandoned(j, nil, env.Abandoned)
	var se *txn.StepError
	if errors.As(cause, &se) {
		p.sum.failed, p.sum.steps = se, se.Index+1 // the plan's, Apply undid them
		se.UndoErr = undoErr                       // Apply's own undo of the plan, retried here
	} else if undoErr != nil {
		cause = fmt.Errorf("%w; rollback incomplete, journal kept for DEL: %v", cause, undoErr)
	}
	if undoErr != nil {
		if err := j.Save(); err != nil {
			p.log.Error("journal not saved", "journal", j.Path(), "err", err)
		}
		return types.NewError(ErrRollbackIncomplete, fmt.Sprintf("network %s: %v", p.cfg.Name, cause), "")
	}
	if err := j.Remove(); err != nil {
		p.log.Error("journal not removed", "journal", j.Path(), "err", err)
	}
	return types.NewError(code, fmt.Sprintf("network %s: %v (rolled back)", p.cfg.Name, cause), "")
}
