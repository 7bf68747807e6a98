package cni

import (
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
	"github.com/spinneret-cni/spinneret/internal/kube"
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
	env := p.newEnv(args.Netns, ino)
	defer env.Close()
	j := txn.NewJournal(p.node.StateDir, p.cfg.Name, args.ContainerID, args.IfName, args.Netns, ino)
	// an ADD without DEL for the same attachment: undo what the earlier one
	// did and keep its ledger, whose addresses the idempotent backends
	// hand back
	if old, lerr := txn.LoadJournal(p.journalPath(args.ContainerID, args.IfName)); lerr == nil {
		oenv := p.envFor(old)
		rerr := txn.RollbackPlan(oenv, old)
		p.reportAbandoned(old, nil, oenv.Abandoned)
		oenv.Close()
		if rerr != nil {
			return types.NewError(types.ErrTryAgainLater, "undo earlier ADD: "+rerr.Error(), "")
		}
		j.Carry(old.Ledger())
	}
	if err := p.precheck(env, nics); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if err := p.nodeAddrRule(env, nics); err != nil {
		return types.NewError(ErrBadRequest, err.Error(), "")
	}
	cluster := p.clusterCIDRs()
	p.phase("check")

	// from here on, what is taken is in the journal, and every failure
	// ends in abort
	front := p.front(j, args)
	got, err := front.Allocate(ipamNeeds(nics))
	if err != nil {
		return p.abort(env, j, front, err)
	}
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
	// how the node routes each allocated address, looked up once: for the
	// address rule and for the node's addresses behind veth0
	host, err := env.Handle(txn.Host)
	if err != nil {
		return p.abort(env, j, front, &codedError{types.ErrInternal, fmt.Errorf("learn node addresses: %w", err)})
	}
	routes := coordinator.RouteAddrs(host, allocatedAddrs(nics))
	if err := checkAllocated(nics, routes); err != nil {
		return p.abort(env, j, front, err)
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
	if err := txn.Apply(env, j, pl.Ops); err != nil {
		return p.abort(env, j, front, err)
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
		return p.abort(env, j, front, &codedError{ErrStepFailed, fmt.Errorf("after the last step: %w", err)})
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
		d := p.cfg.Network.Coordinator.Quarantine
		if err := front.Quarantine(conflict.Addr, d); err != nil {
			p.log.Error("quarantine", "address", conflict.Addr, "err", err)
		} else {
			cause = fmt.Errorf("%w; %s is quarantined for %s", cause, conflict.Addr, d)
		}
	}
	front.Failed()
	undoErr := txn.Rollback(env, j)
	p.reportAbandoned(j, nil, env.Abandoned)
	var se *txn.StepError
	if errors.As(cause, &se) {
		se.UndoErr = undoErr // Apply's own undo of the plan, retried here
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
				return &codedError{ErrBadRequest, fmt.Errorf("%s: %s gave %s, %s (exclude it there)", n.IfName, from, a, why)}
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
