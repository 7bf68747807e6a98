package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/internal/netops"
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
	// before anything: never the node's own namespace
	ino, err := txn.PodNetNSInode(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	if !conf.ValidIfName(args.IfName) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME: %q is not a valid interface name", args.IfName), "")
	}
	lk, err := p.attachmentLock(args.ContainerID, args.IfName, true)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer lk.Unlock()
	nics, err := p.resolveNICs(args)
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return te
		}
		return types.NewError(ErrBadRequest, err.Error(), "")
	}
	env := txn.NewEnv(args.Netns, ino)
	env.Log, env.StateDir = p.log, p.node.StateDir
	defer env.Close()
	// an ADD without DEL for the same attachment: undo what the earlier one
	// left (its addresses are kept and handed back by the idempotent IPAM)
	if old, lerr := txn.LoadJournal(p.journalPath(args.ContainerID, args.IfName)); lerr == nil {
		oenv := p.envFor(old)
		rerr := txn.Rollback(oenv, old)
		p.reportAbandoned(old, nil, oenv.Abandoned)
		oenv.Close()
		if rerr != nil {
			return types.NewError(types.ErrTryAgainLater, "undo earlier ADD: "+rerr.Error(), "")
		}
	}
	if err := p.precheck(env, nics); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if err := p.nodeAddrRule(env, nics); err != nil {
		return types.NewError(ErrBadRequest, err.Error(), "")
	}
	cluster := p.clusterCIDRs()
	p.phase("check")

	// the journal is first written with the first step: a process killed
	// before that holds only addresses, which DEL and GC release by owner
	j := txn.NewJournal(p.node.StateDir, p.cfg.Name, args.ContainerID, args.IfName, args.Netns, ino)
	allocs, err := p.allocate(args, nics)
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return te
		}
		switch {
		case errors.Is(err, ipam.ErrExhausted):
			return types.NewError(ErrPoolExhausted, fmt.Sprintf("network %s: %v", p.cfg.Name, err), "")
		case errors.Is(err, ipam.ErrStaticTaken), errors.Is(err, ipam.ErrStaticOutside), errors.Is(err, ipam.ErrStaticRefused):
			return types.NewError(ErrBadRequest, err.Error(), "")
		}
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	var refs []ipam.KubeRef
	for i := range nics {
		for _, a := range allocs {
			if a.IfName == nics[i].IfName {
				nics[i].Addrs = append(nics[i].Addrs, a)
			}
			if a.Object != nil && a.IfName == nics[i].IfName {
				refs = append(refs, *a.Object)
			}
		}
	}
	if len(refs) > 0 {
		j.IPAM, _ = json.Marshal(refs)
	}
	// NICs of NADs whose IPAM is another plugin: each run is journaled
	// before it happens, so a rollback, DEL or GC releases it
	for i := range nics {
		if d := nics[i].Network.DelegateIPAM; d != nil {
			op := &ipam.Delegated{Type: d.Type, Conf: d.Conf, Path: args.Path, ContainerID: args.ContainerID, NetNS: args.Netns, IfName: nics[i].IfName, Args: args.Args}
			if err := j.Append(txn.Step{Op: op}); err != nil {
				return p.abort(j, &earlyError{types.ErrIOFailure, err})
			}
			res, err := op.Add(context.Background())
			if err != nil {
				return p.abort(j, &earlyError{ErrStepFailed, err})
			}
			nics[i].UseDelegated(res)
		}
	}
	// how the node routes each allocated address, looked up once: for the
	// address rule and for the node's addresses behind veth0
	host, err := env.Handle(txn.Host)
	if err != nil {
		// released like any failure after allocating: the local and
		// kubernetes addresses, and the delegated IPAM's journaled runs
		return p.abort(j, &earlyError{types.ErrInternal, fmt.Errorf("learn node addresses: %w", err)})
	}
	routes := coordinator.RouteAddrs(host, allocatedAddrs(nics))
	if err := checkAllocated(nics, routes); err != nil {
		return p.abort(j, err)
	}
	in := plan.Input{ContainerID: args.ContainerID, NICs: nics, Cluster: cluster}
	if p.cfg.Network.Coordinator.Underlay() {
		in.NodeIPs = p.nodeIPs(routes)
		if len(in.NodeIPs) == 0 {
			p.log.Warn("no node address found towards the pod's networks: the pod will not reach its node through veth0 (set nodeIPs in the node conf)")
		}
	}
	p.phase("allocate")
	pl := plan.New(in)
	if aerr := txn.Apply(env, j, pl.Ops); aerr != nil {
		p.reportAbandoned(j, nil, env.Abandoned)
		return p.abort(j, aerr)
	}
	p.phase("apply")
	res, err := buildResult(env, args.Netns, in, pl.Layout, p.cfg.DNS)
	if err == nil {
		var b []byte
		if b, err = json.Marshal(res); err == nil {
			err = j.Commit(b)
		}
	}
	if err != nil {
		return p.abort(j, err)
	}
	p.phase("commit")
	p.writeNetworkStatus(args, nics, res)
	for _, n := range nics {
		for _, a := range n.Addrs {
			p.log.Info("attached", "container", args.ContainerID, "nic", n.IfName, "network", n.Network.Name, "master", n.LinkMaster(), "pool", a.Pool, "address", a.Address)
		}
	}
	return types.PrintResult(forVersion(res, p.cfg.CNIVersion), p.cfg.CNIVersion)
}

// abort finishes a failed ADD. Apply has already undone what it could when a
// step failed; a failure after Apply (reading the result back, committing
// the journal) is undone here. Then the addresses are released and the
// journal removed, or the journal is kept for DEL if the undo was partial.
func (p *plugin) abort(j *txn.Journal, cause error) error {
	var undoErr error
	var se *txn.StepError
	var early *earlyError
	if errors.As(cause, &se) {
		undoErr = se.UndoErr
	} else {
		// before the plan (earlyError) only the delegated IPAM steps are
		// journaled; after it, all of them
		env := p.envFor(j)
		undoErr = txn.Rollback(env, j)
		p.reportAbandoned(j, nil, env.Abandoned)
		env.Close()
		if !errors.As(cause, &early) {
			cause = fmt.Errorf("after the last step: %w", cause)
			if undoErr != nil {
				cause = fmt.Errorf("%w; rollback incomplete, journal kept for DEL: %v", cause, undoErr)
			}
		}
	}
	if undoErr != nil {
		j.Save()
		return types.NewError(ErrRollbackIncomplete, fmt.Sprintf("network %s: %v", p.cfg.Name, cause), "")
	}
	code := ErrStepFailed
	if early != nil {
		code = early.code
	}
	var conflict *coordinator.ConflictError
	if errors.As(cause, &conflict) {
		// not released: another host uses it, and handing it to the next pod
		// would fail the same way
		code = ErrIPConflict
		d := p.cfg.Network.Coordinator.Quarantine
		owner := ipam.Owner{ContainerID: j.ContainerID, IfName: j.IfName, Network: p.cfg.Name}
		if err := p.quarantine(owner, conflict.Addr, d); err != nil {
			p.log.Error("quarantine", "address", conflict.Addr, "err", err)
		} else {
			cause = fmt.Errorf("%w; %s is quarantined for %s", cause, conflict.Addr, d)
		}
	}
	if errors.Is(cause, coordinator.ErrGatewayUnreachable) {
		code = ErrGatewayUnreachable
	}
	if err := p.releaseAll(j.ContainerID, j.IfName); err != nil {
		j.Save()
		return types.NewError(ErrRollbackIncomplete, fmt.Sprintf("network %s: %v; release addresses: %v", p.cfg.Name, cause, err), "")
	}
	j.Remove()
	return types.NewError(code, fmt.Sprintf("network %s: %v (rolled back)", p.cfg.Name, cause), "")
}

// earlyError is a failure after the addresses were allocated and before
// the plan ran (an address the request may not have, found in a delegated
// IPAM plugin's result; the node's addresses not readable): ADD fails with
// code once everything allocated is released.
type earlyError struct {
	code uint
	error
}

func (e *earlyError) Unwrap() error { return e.error }

// nodeAddrRule keeps the node's own addresses from the pod, before
// anything is allocated: the node routes every pod address into the pod
// (table 500), so a pod holding the node's address, or its gateway, would
// take the node's own traffic. The NICs' pools learn the node's addresses
// inside their subnets (never handed out), and a static address that is
// the node's, the gateway, a network or broadcast address, or excluded is
// refused, naming the annotation entry.
func (p *plugin) nodeAddrRule(env *txn.Env, nics []plan.NIC) error {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	var subnets []netip.Prefix
	for _, n := range nics {
		for _, pl := range n.Network.Pools {
			subnets = append(subnets, pl.Subnet)
		}
	}
	if len(subnets) == 0 {
		return nil
	}
	addrs := append(coordinator.NodeAddrsIn(host, subnets), p.node.NodeIPs...)
	for i := range nics {
		pools := slices.Clone(nics[i].Network.Pools) // the catalogue's own stay as configured
		for k := range pools {
			pools[k].NodeAddrs = nil
			for _, a := range addrs {
				if pools[k].Subnet.Contains(a) && !slices.Contains(pools[k].NodeAddrs, a) {
					pools[k].NodeAddrs = append(pools[k].NodeAddrs, a)
				}
			}
		}
		nics[i].Network.Pools = pools
		for _, a := range nics[i].Static {
			field := fmt.Sprintf("%s[%d].ips", request.AnnotNetworks, i-1)
			if coordinator.IsNodeAddr(host, a) {
				return fmt.Errorf("%s: %s: static address %s is an address of the node", field, nics[i].IfName, a)
			}
			if k := slices.IndexFunc(pools, func(pl conf.Pool) bool { return pl.Subnet.Contains(a) }); k >= 0 {
				if why := pools[k].Refusal(a); why != "" {
					return fmt.Errorf("%s: %s: static address %s %s", field, nics[i].IfName, a, why)
				}
			}
		}
	}
	return nil
}

// allocatedAddrs are the NICs' addresses, in order.
func allocatedAddrs(nics []plan.NIC) []netip.Addr {
	var out []netip.Addr
	for _, n := range nics {
		for _, a := range n.Addrs {
			out = append(out, a.Address.Addr())
		}
	}
	return out
}

// checkAllocated refuses an allocated address that the node has (on an
// interface nodeAddrRule did not read; routes are allocatedAddrs' routes)
// and, from a delegated IPAM plugin (whose pools spinneret does not know),
// one that is its own gateway or its subnet's IPv4 network or broadcast
// address.
func checkAllocated(nics []plan.NIC, routes []coordinator.AddrRoute) error {
	i := 0
	for _, n := range nics {
		for _, al := range n.Addrs {
			a, local := al.Address.Addr(), routes[i].Local
			i++
			from := "pool " + al.Pool
			if d := n.Network.DelegateIPAM; d != nil {
				from = "IPAM plugin " + d.Type
			}
			why := ""
			switch sub := al.Address.Masked(); {
			case local:
				why = "an address of the node"
			case n.Network.DelegateIPAM == nil:
			case a == al.Gateway:
				why = "its own gateway"
			case a.Is4() && sub.Bits() <= 30 && (a == sub.Addr() || a == conf.LastAddr(sub)):
				why = "the network or broadcast address of " + sub.String()
			}
			if why != "" {
				return &earlyError{ErrBadRequest, fmt.Errorf("%s: %s gave %s, %s (exclude it there)", n.IfName, from, a, why)}
			}
		}
	}
	return nil
}

// nodeIPs are the node's addresses the pod reaches through its veth: the
// node conf's nodeIPs, or else those coordinator.NodeIPs finds from the
// routes to the pod's addresses.
func (p *plugin) nodeIPs(routes []coordinator.AddrRoute) []netip.Addr {
	if len(p.node.NodeIPs) > 0 {
		return p.node.NodeIPs
	}
	return coordinator.NodeIPs(routes)
}

// checkParents checks what a NIC hangs off before anything is created: the
// master (with its MTU), or, for parents the ifacer ensures, what they are
// made of (a VLAN's parent, a bond's slaves) and that the VLAN link's name
// fits.
func (p *plugin) checkParents(host *netlink.Handle, n *plan.NIC) error {
	nw := &n.Network
	if nw.VLAN != 0 {
		if name := n.LinkMaster(); len(name) > 15 {
			return fmt.Errorf("%s: VLAN link %s is longer than an interface name may be (15)", n.IfName, name)
		}
	}
	if nw.Bond != nil {
		for _, s := range nw.Bond.Slaves {
			if _, err := host.LinkByName(s); err != nil {
				return fmt.Errorf("%s: bond %s: slave %q not found", n.IfName, nw.Bond.Name, s)
			}
		}
		return nil
	}
	if nw.VLAN != 0 {
		return drivers.CheckMaster(host, "VLAN "+strconv.Itoa(nw.VLAN)+" for "+nw.Driver, n.IfName, nw.Master, nw.MTU)
	}
	return drivers.CheckMaster(host, nw.Driver, n.IfName, nw.Master, nw.MTU)
}

// precheck validates the NICs against the host and the pod before anything
// is allocated or created.
func (p *plugin) precheck(env *txn.Env, nics []plan.NIC) error {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	pod, err := env.Handle(txn.Pod)
	if err != nil {
		return fmt.Errorf("pod netns %s: %w", env.PodNetNS, err)
	}
	kinds := map[string]string{} // master -> the driver of the pod's first NIC on it
	for i := range nics {
		n := nics[i]
		if n.VF != nil {
			// the VF's settings before this ADD: journaled with the plan
			st, err := drivers.ReadVFState(host, n.VF)
			if err != nil {
				return err
			}
			nics[i].VFOrig = st
			if n.Userspace() {
				continue
			}
		} else if err := p.checkParents(host, &n); err != nil {
			return err
		}
		if m := n.LinkMaster(); n.VF == nil {
			if d, ok := kinds[m]; ok && d != n.Network.Driver {
				return fmt.Errorf("%s: %s and %s links cannot share master %s (the kernel gives a master one kind of child)", n.IfName, d, n.Network.Driver, m)
			}
			kinds[m] = n.Network.Driver
		}
		if n.Network.Driver == vocab.Ipvlan && n.PodMAC {
			return fmt.Errorf("%s: an ipvlan link has its master's MAC; the requested MAC %s cannot apply", n.IfName, n.MAC)
		}
		if _, err := pod.LinkByName(n.IfName); err == nil {
			return fmt.Errorf("interface %s already exists in pod netns %s", n.IfName, env.PodNetNS)
		} else if !netops.Gone(err) {
			return err
		}
	}
	return nil
}
