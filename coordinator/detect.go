package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("detect", func() txn.Op { return &Detect{} })
	txn.Register("announce", func() txn.Op { return &Announce{} })
}

// ConflictError says another host answers for a pod address.
type ConflictError struct {
	Link string
	Addr netip.Addr
	MAC  string // the other host's
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("IP conflict: %s (%s) is already in use by %s", e.Addr, e.Link, e.MAC)
}

// ErrGatewayUnreachable is returned (wrapped) when a gateway does not answer.
var ErrGatewayUnreachable = errors.New("gateway unreachable")

// Detect probes, from inside the pod, before the NIC's routes are added:
// whether another host already answers for one of the NIC's addresses (an
// ARP probe from 0.0.0.0 for IPv4, a DAD-style neighbour solicitation from
// :: for IPv6), and whether its gateways answer (ARP request, neighbour
// solicitation). Conflict probes run before gateway probes, so a gateway
// never learns the pod's MAC for an address that turns out to be someone
// else's. Undo is nothing: probing leaves no state.
type Detect struct {
	Link     string        `json:"link"`
	Addrs    []netip.Addr  `json:"addrs,omitempty"`    // probed for conflicts
	Gateways []netip.Addr  `json:"gateways,omitempty"` // probed for reachability
	Retries  int           `json:"retries"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
}

func (o *Detect) Kind() string { return "detect" }
func (o *Detect) String() string {
	return fmt.Sprintf("probe %s for conflicts %v and gateways %v", o.Link, o.Addrs, o.Gateways)
}

// Do runs the probes.
func (o *Detect) Do(env *txn.Env) error {
	return env.In(txn.Pod, func() error {
		ifi, err := net.InterfaceByName(o.Link)
		if err != nil {
			return err
		}
		for _, a := range o.Addrs {
			if err := o.conflict(ifi, a); err != nil {
				return err
			}
		}
		for _, gw := range o.Gateways {
			if err := o.gateway(ifi, gw); err != nil {
				return err
			}
		}
		return nil
	})
}

// Undo does nothing: probes leave no state.
func (o *Detect) Undo(*txn.Env) error { return nil }

// Check does nothing: a probe is a moment, not a state.
func (o *Detect) Check(*txn.Env) error { return nil }

// attempts runs send, then waits up to Timeout for match, Retries times,
// Interval apart. It reports whether match was seen.
func (o *Detect) attempts(send func() error, read func(deadline time.Time) (bool, error)) (bool, error) {
	for i := 0; i < max(1, o.Retries); i++ {
		if i > 0 {
			time.Sleep(o.Interval)
		}
		if err := send(); err != nil {
			return false, err
		}
		if ok, err := read(time.Now().Add(o.Timeout)); ok || err != nil {
			return ok, err
		}
	}
	return false, nil
}

// conflict probes one address: another host answering for it is a
// *ConflictError.
func (o *Detect) conflict(ifi *net.Interface, a netip.Addr) error {
	probe := o.arpProbe
	if a.Is6() {
		probe = o.dadProbe
	}
	other, err := probe(ifi, a)
	if err != nil {
		return err
	}
	if other != nil {
		return &ConflictError{Link: o.Link, Addr: a, MAC: other.String()}
	}
	return nil
}

// arpProbe sends ARP probes (from 0.0.0.0) for a and returns the MAC of
// another host that answers, or nil.
func (o *Detect) arpProbe(ifi *net.Interface, a netip.Addr) (net.HardwareAddr, error) {
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, fmt.Errorf("arp on %s: %w", o.Link, err)
	}
	defer c.Close()
	probe, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, netip.IPv4Unspecified(), ethernet.Broadcast, a)
	if err != nil {
		return nil, err
	}
	var other net.HardwareAddr
	_, err = o.attempts(func() error { return c.WriteTo(probe, ethernet.Broadcast) }, func(deadline time.Time) (bool, error) {
		for {
			c.SetReadDeadline(deadline)
			p, _, err := c.Read()
			if err != nil {
				return false, nil // timeout: nobody answered
			}
			if p.Operation == arp.OperationReply && p.SenderIP == a && !bytes.Equal(p.SenderHardwareAddr, ifi.HardwareAddr) {
				other = p.SenderHardwareAddr
				return true, nil
			}
		}
	})
	return other, err
}

// dadProbe sends, on a packet socket, the neighbour solicitation the
// kernel's own DAD would: from the unspecified address (an ICMPv6 socket
// cannot send from :: while the NIC already holds addresses), to the
// target's solicited-node group. It returns the MAC of another host that
// advertises the target, or nil.
func (o *Detect) dadProbe(ifi *net.Interface, a netip.Addr) (net.HardwareAddr, error) {
	c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_IPV6, nil)
	if err != nil {
		return nil, fmt.Errorf("packet socket on %s: %w", o.Link, err)
	}
	defer c.Close()
	group, err := ndp.SolicitedNodeMulticast(a)
	if err != nil {
		return nil, err
	}
	icmp, err := ndp.MarshalMessageChecksum(&ndp.NeighborSolicitation{TargetAddress: a}, netip.IPv6Unspecified(), group)
	if err != nil {
		return nil, err
	}
	g := group.As16()
	dstMAC := net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
	frame := make([]byte, 0, 14+40+len(icmp))
	frame = append(frame, dstMAC...)
	frame = append(frame, ifi.HardwareAddr...)
	frame = append(frame, 0x86, 0xdd)
	frame = append(frame, 0x60, 0, 0, 0, byte(len(icmp)>>8), byte(len(icmp)), 58, 255)
	frame = append(frame, make([]byte, 16)...) // source ::
	frame = append(frame, g[:]...)
	frame = append(frame, icmp...)
	var other net.HardwareAddr
	buf := make([]byte, 1600)
	_, err = o.attempts(func() error {
		_, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: dstMAC})
		return err
	}, func(deadline time.Time) (bool, error) {
		for {
			c.SetReadDeadline(deadline)
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return false, nil // timeout: nobody answered
			}
			if n < 14+40 || buf[12] != 0x86 || buf[13] != 0xdd || buf[14+6] != 58 {
				continue
			}
			m, err := ndp.ParseMessage(buf[14+40 : n])
			if err != nil {
				continue
			}
			na, ok := m.(*ndp.NeighborAdvertisement)
			if !ok || na.TargetAddress != a {
				continue
			}
			mac := targetLLA(na.Options)
			if mac == nil {
				mac = net.HardwareAddr(append([]byte(nil), buf[6:12]...))
			}
			if bytes.Equal(mac, ifi.HardwareAddr) {
				continue // our own kernel
			}
			other = mac
			return true, nil
		}
	})
	return other, err
}

func targetLLA(opts []ndp.Option) net.HardwareAddr {
	for _, o := range opts {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target {
			return lla.Addr
		}
	}
	return nil
}

// ownAddr is the NIC's address the gateway probe is sent from.
func (o *Detect) ownAddr(ifi *net.Interface, v4 bool) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err == nil && p.Addr().Is4() == v4 && !p.Addr().IsLinkLocalUnicast() {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no address to probe its gateway from", o.Link)
}

func (o *Detect) gateway(ifi *net.Interface, gw netip.Addr) error {
	src, err := o.ownAddr(ifi, gw.Is4())
	if err != nil {
		return err
	}
	var seen bool
	if gw.Is4() {
		c, err := arp.Dial(ifi)
		if err != nil {
			return fmt.Errorf("arp on %s: %w", o.Link, err)
		}
		defer c.Close()
		req, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, src, ethernet.Broadcast, gw)
		if err != nil {
			return err
		}
		seen, err = o.attempts(func() error { return c.WriteTo(req, ethernet.Broadcast) }, func(deadline time.Time) (bool, error) {
			for {
				c.SetReadDeadline(deadline)
				p, _, err := c.Read()
				if err != nil {
					return false, nil
				}
				if p.Operation == arp.OperationReply && p.SenderIP == gw {
					return true, nil
				}
			}
		})
		if err != nil {
			return err
		}
	} else {
		c, _, err := ndp.Listen(ifi, ndp.Addr(src.String()))
		if err != nil {
			return fmt.Errorf("ndp on %s: %w", o.Link, err)
		}
		defer c.Close()
		group, err := ndp.SolicitedNodeMulticast(gw)
		if err != nil {
			return err
		}
		ns := &ndp.NeighborSolicitation{TargetAddress: gw, Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: ifi.HardwareAddr}}}
		seen, err = o.attempts(func() error { return c.WriteTo(ns, nil, group) }, func(deadline time.Time) (bool, error) {
			for {
				c.SetReadDeadline(deadline)
				m, _, _, err := c.ReadFrom()
				if err != nil {
					return false, nil
				}
				if na, ok := m.(*ndp.NeighborAdvertisement); ok && na.TargetAddress == gw {
					return true, nil
				}
			}
		})
		if err != nil {
			return err
		}
	}
	if !seen {
		return fmt.Errorf("%s: %s did not answer %d probes (%s apart, %s each): %w", o.Link, gw, max(1, o.Retries), o.Interval, o.Timeout, ErrGatewayUnreachable)
	}
	return nil
}

// Announce sends, once the NIC is set up, a gratuitous ARP for each of its
// IPv4 addresses and an unsolicited neighbour advertisement for each IPv6
// one, so that peers holding a stale entry for the address (a previous pod)
// update it. Only the NIC's own addresses are announced, on that NIC.
type Announce struct {
	Link  string       `json:"link"`
	Addrs []netip.Addr `json:"addrs"`
}

func (o *Announce) Kind() string   { return "announce" }
func (o *Announce) String() string { return fmt.Sprintf("announce %v on %s", o.Addrs, o.Link) }

// Do sends the announcements.
func (o *Announce) Do(env *txn.Env) error {
	return env.In(txn.Pod, func() error {
		ifi, err := net.InterfaceByName(o.Link)
		if err != nil {
			return err
		}
		for _, a := range o.Addrs {
			if a.Is4() {
				c, err := arp.Dial(ifi)
				if err != nil {
					return fmt.Errorf("arp on %s: %w", o.Link, err)
				}
				p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, a, ethernet.Broadcast, a)
				if err == nil {
					err = c.WriteTo(p, ethernet.Broadcast)
				}
				c.Close()
				if err != nil {
					return fmt.Errorf("gratuitous ARP for %s: %w", a, err)
				}
				continue
			}
			c, _, err := ndp.Listen(ifi, ndp.Addr(a.String()))
			if err != nil {
				return fmt.Errorf("ndp on %s: %w", o.Link, err)
			}
			na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: a,
				Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}}}
			err = c.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes())
			c.Close()
			if err != nil {
				return fmt.Errorf("unsolicited NA for %s: %w", a, err)
			}
		}
		return nil
	})
}

// Undo does nothing: announcements leave no state here.
func (o *Announce) Undo(*txn.Env) error { return nil }

// Check does nothing.
func (o *Announce) Check(*txn.Env) error { return nil }
