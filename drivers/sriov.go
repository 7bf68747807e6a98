package drivers

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/Mellanox/sriovnet"
	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("sriov.vf", func() txn.Op { return &SriovVF{} })
}

// VFState is what spinneret sets on a VF through its PF, and what it
// restores.
type VFState struct {
	MAC       string `json:"mac,omitempty"`
	VLAN      int    `json:"vlan"`
	QoS       int    `json:"qos"`
	SpoofChk  bool   `json:"spoofchk"`
	Trust     bool   `json:"trust"`
	MinTxRate uint32 `json:"minTxRate"`
	MaxTxRate uint32 `json:"maxTxRate"`
	LinkState uint32 `json:"linkState"` // IFLA_VF_LINK_STATE_AUTO 0, ENABLE 1, DISABLE 2
	MTU       int    `json:"mtu,omitempty"`
	// NetdevMAC is the VF netdev's own address (a VF driver may keep its
	// address until reset even when the PF sets one).
	NetdevMAC string `json:"netdevMAC,omitempty"`
}

// LinkStates are the IFLA_VF_LINK_STATE values of vocab.LinkStates.
var LinkStates = kernelValues(vocab.LinkStates, netlink.VF_LINK_STATE_AUTO, netlink.VF_LINK_STATE_ENABLE, netlink.VF_LINK_STATE_DISABLE)

// ReadVFState reads a VF's settings from its PF (and its netdev's MTU).
func ReadVFState(h *netlink.Handle, vf *VF) (VFState, error) {
	pf, err := h.LinkByName(vf.PF)
	if err != nil {
		return VFState{}, fmt.Errorf("sriov: PF %s: %w", vf.PF, err)
	}
	for _, v := range pf.Attrs().Vfs {
		if v.ID != vf.Index {
			continue
		}
		st := VFState{MAC: v.Mac.String(), VLAN: v.Vlan, QoS: v.Qos, SpoofChk: v.Spoofchk, Trust: v.Trust != 0,
			MinTxRate: v.MinTxRate, MaxTxRate: v.MaxTxRate, LinkState: v.LinkState}
		if vf.Netdev != "" {
			if l, err := h.LinkByName(vf.Netdev); err == nil {
				st.MTU, st.NetdevMAC = l.Attrs().MTU, l.Attrs().HardwareAddr.String()
			}
		}
		return st, nil
	}
	return VFState{}, fmt.Errorf("sriov: PF %s reports no VF %d", vf.PF, vf.Index)
}

// SriovVF gives a pod an SR-IOV VF: its settings through the PF, then its
// netdev moved into the pod and renamed. The VF's original settings and
// name were read when the ADD was planned, so they are in the journal
// before anything changes; undo (rollback, DEL, DEL after a crash) puts
// them back and returns the netdev to the node under its original name. A
// VF bound to a userspace driver (DPDK) has no netdev: only the PF side is
// set.
type SriovVF struct {
	Name string  `json:"name"` // in the pod
	VF   VF      `json:"vf"`
	Orig VFState `json:"orig"`
	Want VFState `json:"want"`
}

func (o *SriovVF) Kind() string { return "sriov.vf" }
func (o *SriovVF) String() string {
	if o.VF.Netdev == "" {
		return fmt.Sprintf("set up VF %d of %s (%s, %s) for pod %s", o.VF.Index, o.VF.PF, o.VF.PCI, o.VF.Driver, o.Name)
	}
	return fmt.Sprintf("move VF %d of %s (%s, %s) into pod as %s", o.VF.Index, o.VF.PF, o.VF.PCI, o.VF.Netdev, o.Name)
}

// lock serialises the ADDs, DELs and rollbacks of one VF on the node.
func (o *SriovVF) lock(env *txn.Env) (*fileutil.Lock, error) {
	dir := statedir.SRIOV(env.StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return fileutil.LockFile(filepath.Join(dir, o.VF.PCI+".lock"))
}

// macOurs reports whether the VF's MAC is spinneret's to set and to put
// back: the pod asked for one other than the VF had. Otherwise the MAC the
// PF reports is none (all zeros) or the one the VF's own driver registered
// (igb reports that too), and writing it back through the PF is not a
// restore: zeros make igb "remove administratively set MAC" and program
// the VF's unicast filter with them, so a later pod on that VF gets no
// unicast until its driver resets (seen in the VM, issue Wire).
func (o *SriovVF) macOurs() bool { return o.Want.MAC != "" && o.Want.MAC != o.Orig.MAC }

// zeroMAC is the MAC a PF reports for a VF without one.
var zeroMAC = make(net.HardwareAddr, 6)

// setPF sets, through the PF, each VF setting that differs from st (so an
// undo of a step that never ran changes nothing). The MAC only when it is
// ours (macOurs) and only on ADD: undo puts a MAC back itself
// (restorePFMAC).
func (o *SriovVF) setPF(h *netlink.Handle, st VFState) error {
	pf, err := h.LinkByName(o.VF.PF)
	if err != nil {
		return fmt.Errorf("sriov: PF %s: %w", o.VF.PF, err)
	}
	cur, err := ReadVFState(h, &VF{PF: o.VF.PF, Index: o.VF.Index})
	if err != nil {
		return err
	}
	idx := o.VF.Index
	var errs []error
	if o.macOurs() && st.MAC == o.Want.MAC && st.MAC != cur.MAC {
		mac, err := net.ParseMAC(st.MAC)
		if err == nil {
			err = h.LinkSetVfHardwareAddr(pf, idx, mac)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("mac %s: %w", st.MAC, err))
		}
	}
	if st.VLAN != cur.VLAN || st.QoS != cur.QoS {
		if err := h.LinkSetVfVlanQos(pf, idx, st.VLAN, st.QoS); err != nil {
			errs = append(errs, fmt.Errorf("vlan %d qos %d: %w", st.VLAN, st.QoS, err))
		}
	}
	if st.SpoofChk != cur.SpoofChk {
		if err := h.LinkSetVfSpoofchk(pf, idx, st.SpoofChk); err != nil {
			errs = append(errs, fmt.Errorf("spoofchk %v: %w", st.SpoofChk, err))
		}
	}
	if st.Trust != cur.Trust {
		if err := h.LinkSetVfTrust(pf, idx, st.Trust); err != nil {
			errs = append(errs, fmt.Errorf("trust %v: %w", st.Trust, err))
		}
	}
	if st.MinTxRate != cur.MinTxRate || st.MaxTxRate != cur.MaxTxRate {
		if err := h.LinkSetVfRate(pf, idx, int(st.MinTxRate), int(st.MaxTxRate)); err != nil {
			errs = append(errs, fmt.Errorf("tx rate %d-%d Mbps: %w", st.MinTxRate, st.MaxTxRate, err))
		}
	}
	if st.LinkState != cur.LinkState {
		if err := h.LinkSetVfState(pf, idx, st.LinkState); err != nil {
			errs = append(errs, fmt.Errorf("link state %d: %w", st.LinkState, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sriov: VF %d of %s: %w", idx, o.VF.PF, err)
	}
	return nil
}

// locked runs fn with the node's handle under the VF's lock.
func (o *SriovVF) locked(env *txn.Env, fn func(host *netlink.Handle) error) error {
	l, err := o.lock(env)
	if err != nil {
		return err
	}
	defer l.Unlock()
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	return fn(host)
}

// Do sets the VF up through the PF and moves its netdev into the pod.
func (o *SriovVF) Do(env *txn.Env) error {
	return o.locked(env, func(host *netlink.Handle) error { return o.do(env, host) })
}

func (o *SriovVF) do(env *txn.Env, host *netlink.Handle) error {
	var err error
	var vf netlink.Link
	if o.VF.Netdev != "" {
		// still ours to take: in the node, under the name the plan saw
		if vf, err = host.LinkByName(o.VF.Netdev); err != nil {
			return fmt.Errorf("sriov: VF %s netdev %s is no longer in the node's namespace (taken by another pod?): %w", o.VF.PCI, o.VF.Netdev, err)
		}
	}
	if vf != nil && o.macOurs() && vf.Attrs().HardwareAddr.String() != o.Want.MAC {
		o.netdevMAC(host, vf)
	}
	if err := o.setPF(host, o.Want); err != nil {
		return err
	}
	if vf == nil {
		return nil
	}
	fd, err := env.PodNSFd()
	if err != nil {
		return err
	}
	if err := host.LinkSetDown(vf); err != nil {
		return fmt.Errorf("sriov: %s down: %w", o.VF.Netdev, err)
	}
	if err := host.LinkSetNsFd(vf, fd); err != nil {
		return fmt.Errorf("sriov: move %s into the pod: %w", o.VF.Netdev, err)
	}
	pod, err := env.Handle(txn.Pod)
	if err != nil {
		return err
	}
	pl, err := pod.LinkByName(o.VF.Netdev)
	if err != nil {
		return fmt.Errorf("sriov: %s in the pod: %w", o.VF.Netdev, err)
	}
	if err := pod.LinkSetName(pl, o.Name); err != nil {
		return fmt.Errorf("sriov: rename %s to %s: %w", o.VF.Netdev, o.Name, err)
	}
	if o.Want.MTU != 0 && o.Want.MTU != pl.Attrs().MTU {
		if err := pod.LinkSetMTU(pl, o.Want.MTU); err != nil {
			return fmt.Errorf("sriov: %s mtu %d: %w", o.Name, o.Want.MTU, err)
		}
	}
	if o.macOurs() && pl.Attrs().HardwareAddr.String() != o.Want.MAC {
		return fmt.Errorf("sriov: %s: mac %s, want %s (the VF's driver did not take the PF's)", o.Name, pl.Attrs().HardwareAddr, o.Want.MAC)
	}
	return nil
}

// netdevMAC gives the VF's netdev the wanted MAC before the PF sets the
// same one: a PF refuses the VF driver's own change once it holds an
// administrative MAC for the VF (igb: "VF attempted to override
// administratively set MAC address"; seen in the VM on a VF that a
// previous pod had used), and the VF takes a MAC the PF sets only when
// its driver is reloaded. So the PF's is cleared first (what undo does
// too), then the netdev's set; setPF then sets the PF's to the same. A
// driver that refuses anyway is caught after the move, by the MAC check.
func (o *SriovVF) netdevMAC(host *netlink.Handle, vf netlink.Link) {
	mac, _ := net.ParseMAC(o.Want.MAC)
	if pf, err := host.LinkByName(o.VF.PF); err == nil {
		host.LinkSetVfHardwareAddr(pf, o.VF.Index, zeroMAC)
	}
	host.LinkSetHardwareAddr(vf, mac)
}

// Undo returns the VF's netdev to the node under its original name (from
// the pod, or from wherever the kernel put it when the pod's namespace
// went away) and restores its original settings through the PF.
func (o *SriovVF) Undo(env *txn.Env) error {
	return o.locked(env, func(host *netlink.Handle) error { return o.undo(env, host) })
}

func (o *SriovVF) undo(env *txn.Env, host *netlink.Handle) error {
	var errs []error
	if o.VF.Netdev != "" {
		if err := o.returnNetdev(env, host); err != nil {
			errs = append(errs, err)
		}
	}
	if o.macOurs() {
		if err := o.restorePFMAC(host); err != nil {
			errs = append(errs, err)
		}
	}
	if err := o.setPF(host, o.Orig); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// restorePFMAC takes back the MAC ADD set through the PF. A VF driver may
// not change a MAC its PF set, so the PF's is cleared first; then the
// netdev (when it is back in the node) is given its own MAC again, which
// its driver registers with the PF as its unicast filter; then an
// administrative MAC the VF had and its netdev had not taken is set again.
// A MAC the PF reported that was the netdev's own is left registered, not
// made administrative. Done already (a second DEL), it changes nothing.
func (o *SriovVF) restorePFMAC(host *netlink.Handle) error {
	pf, err := host.LinkByName(o.VF.PF)
	if err != nil {
		return netops.IgnoreGone(err)
	}
	cur, err := ReadVFState(host, &VF{PF: o.VF.PF, Index: o.VF.Index, Netdev: o.VF.Netdev})
	if err != nil {
		return err
	}
	var vl netlink.Link
	if o.VF.Netdev != "" {
		vl, _ = host.LinkByName(o.VF.Netdev)
	}
	admin := o.Orig.MAC != zeroMAC.String() && o.Orig.MAC != o.Orig.NetdevMAC
	netdevBack := vl != nil && cur.NetdevMAC == o.Orig.NetdevMAC
	if (vl == nil || netdevBack) && (cur.MAC == o.Orig.MAC || !admin && cur.MAC == o.Orig.NetdevMAC) {
		return nil
	}
	if err := host.LinkSetVfHardwareAddr(pf, o.VF.Index, zeroMAC); err != nil {
		return fmt.Errorf("sriov: VF %d of %s: clear mac %s: %w", o.VF.Index, o.VF.PF, cur.MAC, err)
	}
	if vl != nil {
		mac, _ := net.ParseMAC(o.Orig.NetdevMAC)
		if err := host.LinkSetHardwareAddr(vl, mac); err != nil {
			return fmt.Errorf("sriov: %s mac back to %s: %w", o.VF.Netdev, o.Orig.NetdevMAC, err)
		}
	}
	if !admin && vl != nil || o.Orig.MAC == zeroMAC.String() {
		return nil
	}
	mac, err := net.ParseMAC(o.Orig.MAC)
	if err == nil {
		err = host.LinkSetVfHardwareAddr(pf, o.VF.Index, mac)
	}
	if err != nil {
		return fmt.Errorf("sriov: VF %d of %s: mac back to %s: %w", o.VF.Index, o.VF.PF, o.Orig.MAC, err)
	}
	return nil
}

func (o *SriovVF) returnNetdev(env *txn.Env, host *netlink.Handle) error {
	pod, err := env.Handle(txn.Pod)
	podGone := err != nil
	if err == nil {
		if pl, err := pod.LinkByName(o.Name); err == nil && pl.Type() == "device" {
			pod.LinkSetDown(pl)
			// back under its own name (unique on the node) before the move
			if err := pod.LinkSetName(pl, o.VF.Netdev); err != nil {
				return fmt.Errorf("sriov: rename %s back to %s: %w", o.Name, o.VF.Netdev, err)
			}
			hostNS, err := os.Open("/proc/self/ns/net")
			if err != nil {
				return err
			}
			defer hostNS.Close()
			if err := pod.LinkSetNsFd(pl, int(hostNS.Fd())); err != nil {
				return fmt.Errorf("sriov: return %s to the node: %w", o.VF.Netdev, err)
			}
		}
	}
	// in the node now (also when the pod's namespace was deleted: the
	// kernel returns physical devices, perhaps renamed): the original name
	// and MTU
	nds, err := sriovnet.GetNetDevicesFromPci(o.VF.PCI)
	// a deleted namespace gives its physical devices back asynchronously
	for deadline := time.Now().Add(5 * time.Second); podGone && len(nds) == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		nds, err = sriovnet.GetNetDevicesFromPci(o.VF.PCI)
	}
	if err != nil || len(nds) == 0 {
		if podGone {
			return fmt.Errorf("sriov: VF %s: its netdev did not come back to the node after its pod's namespace went away", o.VF.PCI)
		}
		return nil // the pod's namespace has no such link and the node neither: nothing to return
	}
	vl, err := host.LinkByName(nds[0])
	if err != nil {
		return netops.IgnoreGone(err)
	}
	if vl.Attrs().Name != o.VF.Netdev {
		host.LinkSetDown(vl)
		if err := host.LinkSetName(vl, o.VF.Netdev); err != nil {
			return fmt.Errorf("sriov: rename %s back to %s: %w", vl.Attrs().Name, o.VF.Netdev, err)
		}
	}
	if o.Orig.MTU != 0 && vl.Attrs().MTU != o.Orig.MTU {
		if err := host.LinkSetMTU(vl, o.Orig.MTU); err != nil {
			return fmt.Errorf("sriov: %s mtu back to %d: %w", o.VF.Netdev, o.Orig.MTU, err)
		}
	}
	return nil
}

// Check reports a VF whose settings drifted from what ADD set, or whose
// netdev is not in the pod.
func (o *SriovVF) Check(env *txn.Env) error {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	st, err := ReadVFState(host, &VF{PF: o.VF.PF, Index: o.VF.Index})
	if err != nil {
		return err
	}
	var errs []error
	if o.macOurs() && st.MAC != o.Want.MAC {
		errs = append(errs, fmt.Errorf("VF %s: mac %s, want %s", o.VF.PCI, st.MAC, o.Want.MAC))
	}
	if st.VLAN != o.Want.VLAN {
		errs = append(errs, fmt.Errorf("VF %s: vlan %d, want %d", o.VF.PCI, st.VLAN, o.Want.VLAN))
	}
	if st.SpoofChk != o.Want.SpoofChk {
		errs = append(errs, fmt.Errorf("VF %s: spoofchk %v, want %v", o.VF.PCI, st.SpoofChk, o.Want.SpoofChk))
	}
	if o.VF.Netdev != "" {
		if _, _, err := netops.Link(env, txn.Pod, o.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
