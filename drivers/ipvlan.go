package drivers

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("ipvlan.create", func() txn.Op { return &Ipvlan{} })
}

// IpvlanModes and IpvlanFlags are the kernel's values of vocab.IpvlanModes
// and vocab.IpvlanFlags.
var (
	IpvlanModes = kernelValues(vocab.IpvlanModes, netlink.IPVLAN_MODE_L2, netlink.IPVLAN_MODE_L3, netlink.IPVLAN_MODE_L3S)
	IpvlanFlags = kernelValues(vocab.IpvlanFlags, netlink.IPVLAN_FLAG_BRIDGE, netlink.IPVLAN_FLAG_PRIVATE, netlink.IPVLAN_FLAG_VEPA)
)

// Ipvlan creates an ipvlan link on a host master directly inside the pod
// namespace, like Macvlan. Its MAC is the master's.
type Ipvlan struct {
	Name   string `json:"name"`
	Master string `json:"master"`
	Mode   string `json:"mode"`
	Flag   string `json:"flag"`
	MTU    int    `json:"mtu,omitempty"`
	TxQLen int    `json:"txqlen,omitempty"`
}

func (o *Ipvlan) Kind() string { return "ipvlan.create" }
func (o *Ipvlan) String() string {
	return fmt.Sprintf("create ipvlan %s on %s (%s %s) in pod", o.Name, o.Master, o.Mode, o.Flag)
}

// Creates names the pod link; its addresses and routes go with it.
func (o *Ipvlan) Creates() []string { return []string{netops.LinkKey(txn.Pod, o.Name)} }

// Do creates the link.
func (o *Ipvlan) Do(env *txn.Env) error {
	host, attrs, err := childAttrs(env, vocab.Ipvlan, o.Name, o.Master, o.MTU, o.TxQLen)
	if err != nil {
		return err
	}
	mode, ok := IpvlanModes[o.Mode]
	if !ok {
		return fmt.Errorf("ipvlan %s: unknown mode %q", o.Name, o.Mode)
	}
	flag, ok := IpvlanFlags[o.Flag]
	if !ok {
		return fmt.Errorf("ipvlan %s: unknown flag %q", o.Name, o.Flag)
	}
	if err := host.LinkAdd(&netlink.IPVlan{LinkAttrs: attrs, Mode: mode, Flag: flag}); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("ipvlan %s on %s: %w (a master carries either macvlan or ipvlan links, never both: %s already has macvlan links)", o.Name, o.Master, err, o.Master)
		}
		return fmt.Errorf("ipvlan %s on %s: %w", o.Name, o.Master, err)
	}
	return nil
}

// Undo deletes the pod's ipvlan link.
func (o *Ipvlan) Undo(env *txn.Env) error { return deleteChild(env, vocab.Ipvlan, o.Name) }

// Check reports drift of the link's kind, mode, flag and MTU.
func (o *Ipvlan) Check(env *txn.Env) error {
	_, l, err := netops.Link(env, txn.Pod, o.Name)
	if err != nil {
		return err
	}
	iv, ok := l.(*netlink.IPVlan)
	if !ok {
		return fmt.Errorf("%s: is a %s link, not ipvlan", o.Name, l.Type())
	}
	var errs []error
	if iv.Mode != IpvlanModes[o.Mode] {
		errs = append(errs, fmt.Errorf("%s: ipvlan mode changed from %s", o.Name, o.Mode))
	}
	if iv.Flag != IpvlanFlags[o.Flag] {
		errs = append(errs, fmt.Errorf("%s: ipvlan flag changed from %s", o.Name, o.Flag))
	}
	if o.MTU != 0 && iv.MTU != o.MTU {
		errs = append(errs, fmt.Errorf("%s: mtu %d, want %d", o.Name, iv.MTU, o.MTU))
	}
	return errors.Join(errs...)
}
