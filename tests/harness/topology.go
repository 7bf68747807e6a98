package harness

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/netops"
)

// Addresses of the test network: documentation ranges (RFC 5737, RFC 3849),
// used only inside the namespaces the harness creates.
var (
	Subnet4  = netip.MustParsePrefix("192.0.2.0/24")
	Subnet6  = netip.MustParsePrefix("2001:db8:0:1::/64")
	Gateway4 = netip.MustParseAddr("192.0.2.1")
	Gateway6 = netip.MustParseAddr("2001:db8:0:1::1")
)

// Uplink is the node's interface that plays the physical NIC.
const Uplink = "uplink0"

// Topology is a switch with a node and a gateway attached, and pods.
type Topology struct {
	Switch, Node, Gateway *NS
	Pods                  []*NS
	prefix                string
}

// NewTopology builds the switch, node and gateway namespaces; names start
// with prefix so leftovers are recognisable.
func NewTopology(prefix string) (t *Topology, err error) {
	t = &Topology{prefix: prefix}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()
	if t.Switch, err = NewNS(prefix + "-switch"); err != nil {
		return
	}
	if t.Node, err = NewNS(prefix + "-node"); err != nil {
		return
	}
	if t.Gateway, err = NewNS(prefix + "-gw"); err != nil {
		return
	}
	// the infrastructure's own link-local addresses would finish DAD a second
	// or two later and make before/after dumps differ; pods keep DAD, so
	// tests can see that ADD never leaves an address tentative
	for _, ns := range []*NS{t.Switch, t.Node, t.Gateway} {
		if err = ns.Sysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return
		}
	}
	sw := t.Switch.NL()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err = sw.LinkAdd(br); err != nil {
		return t, fmt.Errorf("switch bridge: %w", err)
	}
	if err = sw.LinkSetUp(br); err != nil {
		return
	}
	if err = t.plug("port-node", t.Node, Uplink); err != nil {
		return
	}
	if err = t.plug("port-gw", t.Gateway, "gw0"); err != nil {
		return
	}
	gw := t.Gateway.NL()
	l, err := gw.LinkByName("gw0")
	if err != nil {
		return
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(Gateway4, Subnet4.Bits()), netip.PrefixFrom(Gateway6, Subnet6.Bits())} {
		addr := &netlink.Addr{IPNet: netops.IPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err = gw.AddrAdd(l, addr); err != nil {
			return t, fmt.Errorf("gateway address %s: %w", a, err)
		}
	}
	return t, nil
}

// plug connects a namespace to the switch with a veth: port in the switch
// (enslaved to br0), ifname in ns; both up.
func (t *Topology) plug(port string, ns *NS, ifname string) error {
	sw := t.Switch.NL()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: ifname, PeerNamespace: netlink.NsFd(ns.h)}
	if err := sw.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s/%s: %w", port, ifname, err)
	}
	br, err := sw.LinkByName("br0")
	if err != nil {
		return err
	}
	p, err := sw.LinkByName(port)
	if err != nil {
		return err
	}
	if err := sw.LinkSetMaster(p, br); err != nil {
		return err
	}
	if err := sw.LinkSetUp(p); err != nil {
		return err
	}
	peer, err := ns.NL().LinkByName(ifname)
	if err != nil {
		return err
	}
	return ns.NL().LinkSetUp(peer)
}

// NewPod adds an empty pod namespace.
func (t *Topology) NewPod() (*NS, error) {
	p, err := NewNS(t.prefix + "-pod")
	if err != nil {
		return nil, err
	}
	t.Pods = append(t.Pods, p)
	return p, nil
}

// RemovePod deletes one pod namespace.
func (t *Topology) RemovePod(p *NS) error {
	for i, q := range t.Pods {
		if q == p {
			t.Pods = append(t.Pods[:i], t.Pods[i+1:]...)
		}
	}
	return p.Close()
}

// Close removes every namespace of the topology.
func (t *Topology) Close() error {
	var errs []error
	for _, p := range t.Pods {
		errs = append(errs, p.Close())
	}
	t.Pods = nil
	for _, n := range []*NS{t.Gateway, t.Node, t.Switch} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	return errors.Join(errs...)
}
