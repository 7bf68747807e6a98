package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/netops"
)

// Net is one L2 network of the test world: a switch (a bridge in its own
// namespace), a gateway on it, and the node's uplink to it. Addresses are
// documentation ranges (RFC 5737, RFC 3849), used only inside the
// namespaces netlab creates.
type Net struct {
	Switch, Gateway  *NS
	Uplink           string // the node's interface on this network
	Subnet4, Subnet6 netip.Prefix
	GW4, GW6         netip.Addr
	// Remote4 and Remote6 sit behind the gateway (on its lo), off every
	// pod subnet: reachable only through this network's gateway.
	Remote4, Remote6 netip.Addr
}

var netPlans = []struct{ sub4, sub6, remote4, remote6 string }{
	{"192.0.2.0/24", "2001:db8:0:1::/64", "198.18.0.1", "2001:db8:ff:1::1"},
	{"198.51.100.0/24", "2001:db8:0:2::/64", "198.18.0.2", "2001:db8:ff:2::1"},
	{"203.0.113.0/24", "2001:db8:0:3::/64", "198.18.0.3", "2001:db8:ff:3::1"},
}

// Addresses of the first network, which every topology has.
var (
	Subnet4  = netip.MustParsePrefix(netPlans[0].sub4)
	Subnet6  = netip.MustParsePrefix(netPlans[0].sub6)
	Gateway4 = Subnet4.Addr().Next()
	Gateway6 = Subnet6.Addr().Next()
)

// The node's address on the first network, and the service stand-ins it
// serves (inside ServiceCIDR4/6, off every pod network).
var (
	NodeIP4      = Subnet4.Addr().Next().Next()
	NodeIP6      = Subnet6.Addr().Next().Next()
	ServiceCIDR4 = netip.MustParsePrefix("198.19.0.0/24")
	ServiceCIDR6 = netip.MustParsePrefix("2001:db8:fe::/64")
	ServiceIP4   = netip.MustParseAddr("198.19.0.10")
	ServiceIP6   = netip.MustParseAddr("2001:db8:fe::10")
)

// Uplink is the node's interface on the first network.
const Uplink = "uplink0"

// Topology is a node with one or more networks, and pods.
type Topology struct {
	Node *NS
	// Switch and Gateway are the first network's (Nets[0]).
	Switch, Gateway *NS
	Nets            []*Net
	Pods            []*NS
	prefix          string
}

// NewTopology builds the node and the first network; names start with
// prefix so leftovers are recognisable.
func NewTopology(prefix string) (t *Topology, err error) {
	t = &Topology{prefix: prefix}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()
	if t.Node, err = NewNS(prefix + "-node"); err != nil {
		return
	}
	// the infrastructure's own link-local addresses would finish DAD a second
	// or two later and make before/after dumps differ; pods keep DAD, so
	// tests can see that ADD never leaves an address tentative
	if err = t.Node.Sysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
		return
	}
	n, err := t.AddNet()
	if err != nil {
		return
	}
	t.Switch, t.Gateway = n.Switch, n.Gateway
	// the node's own addresses: on its uplink to the first network, and
	// stand-ins for a service (ClusterIP) it serves, on its lo
	if err = addAddrs(t.Node.NL(), Uplink, netip.PrefixFrom(NodeIP4, Subnet4.Bits()), netip.PrefixFrom(NodeIP6, Subnet6.Bits())); err != nil {
		return
	}
	if err = addAddrs(t.Node.NL(), "lo", netip.PrefixFrom(ServiceIP4, 32), netip.PrefixFrom(ServiceIP6, 128)); err != nil {
		return
	}
	return t, nil
}

// AddNet adds a network: switch, gateway (with a remote address behind it)
// and the node's uplink<N> to it.
func (t *Topology) AddNet() (n *Net, err error) {
	k := len(t.Nets)
	if k >= len(netPlans) {
		return nil, fmt.Errorf("netlab: at most %d networks", len(netPlans))
	}
	plan := netPlans[k]
	n = &Net{Uplink: fmt.Sprintf("uplink%d", k),
		Subnet4: netip.MustParsePrefix(plan.sub4), Subnet6: netip.MustParsePrefix(plan.sub6),
		Remote4: netip.MustParseAddr(plan.remote4), Remote6: netip.MustParseAddr(plan.remote6)}
	n.GW4, n.GW6 = n.Subnet4.Addr().Next(), n.Subnet6.Addr().Next()
	t.Nets = append(t.Nets, n) // Close removes what exists so far
	for _, ns := range []**NS{&n.Switch, &n.Gateway} {
		role := "switch"
		if ns == &n.Gateway {
			role = "gw"
		}
		if *ns, err = NewNS(fmt.Sprintf("%s-%s%d", t.prefix, role, k)); err != nil {
			return nil, err
		}
		if err = (*ns).Sysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return nil, err
		}
	}
	sw := n.Switch.NL()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err = sw.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("switch bridge: %w", err)
	}
	if err = sw.LinkSetUp(br); err != nil {
		return nil, err
	}
	if err = plug(n.Switch, "port-node", t.Node, n.Uplink); err != nil {
		return nil, err
	}
	if err = plug(n.Switch, "port-gw", n.Gateway, "gw0"); err != nil {
		return nil, err
	}
	gw := n.Gateway.NL()
	if err = addAddrs(gw, "gw0", netip.PrefixFrom(n.GW4, n.Subnet4.Bits()), netip.PrefixFrom(n.GW6, n.Subnet6.Bits())); err != nil {
		return nil, err
	}
	if err = addAddrs(gw, "lo", netip.PrefixFrom(n.Remote4, 32), netip.PrefixFrom(n.Remote6, 128)); err != nil {
		return nil, err
	}
	// the gateway routes: it forwards between its networks' pods and
	// answers for the remote addresses
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err = n.Gateway.Sysctl(key, "1"); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// AddAddrs adds addresses to a link of the namespace and waits until they
// are usable.
func (n *NS) AddAddrs(link string, addrs ...netip.Prefix) error {
	return addAddrs(n.nl, link, addrs...)
}

func addAddrs(h *netlink.Handle, link string, addrs ...netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: netops.IPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address %s on %s: %w", a, link, err)
		}
	}
	// the kernel adds an IPv6 address's local route a little later: wait for
	// it, so that "before" dumps are complete
	for _, a := range addrs {
		if !a.Addr().Is6() {
			continue
		}
		filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: netops.IPNet(netip.PrefixFrom(a.Addr(), 128))}
		for deadline := time.Now().Add(5 * time.Second); ; {
			rs, err := h.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
			if err != nil {
				return err
			}
			if len(rs) > 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("address %s on %s: no local route after 5s", a, link)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// plug connects a namespace to a switch with a veth: port in the switch
// (enslaved to br0), ifname in ns; both up.
func plug(swNS *NS, port string, ns *NS, ifname string) error {
	sw := swNS.NL()
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
	if err := ns.NL().LinkSetUp(peer); err != nil {
		return err
	}
	return settle(ns, ifname)
}

// settle waits until a new link has its carrier and its IPv6 link-local
// address, so that the test's "before" dumps do not catch it half way.
func settle(ns *NS, ifname string) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		l, err := ns.NL().LinkByName(ifname)
		if err != nil {
			return err
		}
		if l.Attrs().Flags&net.FlagRunning != 0 {
			addrs, err := ns.NL().AddrList(l, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
					return nil
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s in %s: no carrier or link-local address after 5s", ifname, ns.Name)
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

// AddHost adds a host namespace plugged into network k's switch, with its
// eth0 holding addrs: another machine on the L2 (a squatter on a pod's
// address, say). It is removed with the topology.
func (t *Topology) AddHost(k int, addrs ...netip.Prefix) (*NS, error) {
	h, err := NewNS(t.prefix + "-host")
	if err != nil {
		return nil, err
	}
	t.Pods = append(t.Pods, h)
	if err := h.Sysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
		return nil, err
	}
	if err := plug(t.Nets[k].Switch, "port-"+h.Name[len(h.Name)-6:], h, "eth0"); err != nil {
		return nil, err
	}
	return h, h.AddAddrs("eth0", addrs...)
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
	for _, n := range t.Nets {
		for _, ns := range []*NS{n.Gateway, n.Switch} {
			if ns != nil {
				errs = append(errs, ns.Close())
			}
		}
	}
	t.Nets = nil
	if t.Node != nil {
		errs = append(errs, t.Node.Close())
	}
	return errors.Join(errs...)
}

// Plug adds another link of the node (named ifname) to network k's switch,
// as a second cable to the same L2 (bond slaves).
func (t *Topology) Plug(k int, port, ifname string) error {
	return plug(t.Nets[k].Switch, port, t.Node, ifname)
}
