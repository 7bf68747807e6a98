// Package drivers creates, checks and removes the pod-side links of each
// driver kind. Each driver contributes typed operations to a plan.
package drivers

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("macvlan.create", func() txn.Op { return &Macvlan{} })
}

// MacvlanModes are the kernel's values of vocab.MacvlanModes.
var MacvlanModes = kernelValues(vocab.MacvlanModes, netlink.MACVLAN_MODE_BRIDGE, netlink.MACVLAN_MODE_PRIVATE,
	netlink.MACVLAN_MODE_VEPA, netlink.MACVLAN_MODE_PASSTHRU)

// kernelValues pairs the vocabulary's names with the kernel's values, in
// order; a vocabulary and a list that differ in length cannot build.
func kernelValues[T any](names []string, values ...T) map[string]T {
	if len(names) != len(values) {
		panic(fmt.Sprintf("drivers: %d names %v for %d kernel values", len(names), names, len(values)))
	}
	m := make(map[string]T, len(names))
	for i, n := range names {
		m[n] = values[i]
	}
	return m
}

// Macvlan creates a macvlan link on a host master directly inside the pod
// namespace (RTM_NEWLINK with IFLA_NET_NS_FD): no temporary name in the host
// and no move, which would cost a netns switch per link.
type Macvlan struct {
	Name   string `json:"name"`
	Master string `json:"master"`
	Mode   string `json:"mode"`
	MTU    int    `json:"mtu,omitempty"`
	MAC    string `json:"mac,omitempty"`
	// TxQLen sets the transmit queue length; 0 keeps the kernel's.
	TxQLen int `json:"txqlen,omitempty"`
}

func (o *Macvlan) Kind() string { return "macvlan.create" }
func (o *Macvlan) String() string {
	return fmt.Sprintf("create macvlan %s on %s (%s) in pod", o.Name, o.Master, o.Mode)
}

// Creates names the pod link; its addresses and routes go with it.
func (o *Macvlan) Creates() []string { return []string{netops.LinkKey(txn.Pod, o.Name)} }

// Do creates the link.
func (o *Macvlan) Do(env *txn.Env) error {
	host, attrs, err := childAttrs(env, vocab.Macvlan, o.Name, o.Master, o.MTU, o.TxQLen)
	if err != nil {
		return err
	}
	mode, ok := MacvlanModes[o.Mode]
	if !ok {
		return fmt.Errorf("macvlan %s: unknown mode %q", o.Name, o.Mode)
	}
	if o.MAC != "" {
		if attrs.HardwareAddr, err = net.ParseMAC(o.MAC); err != nil {
			return fmt.Errorf("macvlan %s: mac %q: %w", o.Name, o.MAC, err)
		}
	}
	if err := host.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: mode}); err != nil {
		return fmt.Errorf("macvlan %s on %s: %w", o.Name, o.Master, err)
	}
	return nil
}

// Undo deletes the pod's macvlan link (its addresses and routes go with it).
func (o *Macvlan) Undo(env *txn.Env) error { return deleteChild(env, vocab.Macvlan, o.Name) }

// Check reports drift of the link's kind, mode, MTU and MAC.
func (o *Macvlan) Check(env *txn.Env) error {
	_, l, err := netops.Link(env, txn.Pod, o.Name)
	if err != nil {
		return err
	}
	mv, ok := l.(*netlink.Macvlan)
	if !ok {
		return fmt.Errorf("%s: is a %s link, not macvlan", o.Name, l.Type())
	}
	var errs []error
	if mv.Mode != MacvlanModes[o.Mode] {
		errs = append(errs, fmt.Errorf("%s: macvlan mode changed from %s", o.Name, o.Mode))
	}
	if o.MTU != 0 && mv.MTU != o.MTU {
		errs = append(errs, fmt.Errorf("%s: mtu %d, want %d", o.Name, mv.MTU, o.MTU))
	}
	if o.MAC != "" && mv.HardwareAddr.String() != o.MAC {
		errs = append(errs, fmt.Errorf("%s: mac %s, want %s", o.Name, mv.HardwareAddr, o.MAC))
	}
	if o.TxQLen > 0 && mv.TxQLen != o.TxQLen {
		errs = append(errs, fmt.Errorf("%s: txqueuelen %d, want %d", o.Name, mv.TxQLen, o.TxQLen))
	}
	return errors.Join(errs...)
}

// CheckMaster validates a macvlan or ipvlan request against the host master
// before anything is created: the master exists and the MTU does not exceed
// its own.
func CheckMaster(h *netlink.Handle, driver, name, master string, mtu int) error {
	m, err := h.LinkByName(master)
	if err != nil {
		return fmt.Errorf("%s %s: master %q not found", driver, name, master)
	}
	if mtu > m.Attrs().MTU {
		return fmt.Errorf("%s %s: mtu %d is larger than master %s's mtu %d", driver, name, mtu, master, m.Attrs().MTU)
	}
	return nil
}
