package netlab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Ping sends ICMP echo requests from inside ns to dst until one is answered
// or the timeout passes. The first packet may wait for ARP/ND resolution.
func (n *NS) Ping(dst netip.Addr, timeout time.Duration) error {
	return n.PingFrom(netip.Addr{}, dst, timeout)
}

// PingFrom is Ping with the requests' source address set to src (zero: the
// kernel's choice).
func (n *NS) PingFrom(src, dst netip.Addr, timeout time.Duration) error {
	var c *icmp.PacketConn
	err := n.Do(func() error { // the socket belongs to the namespace it was opened in
		var err error
		switch {
		case dst.Is4() && src.IsValid():
			c, err = icmp.ListenPacket("ip4:icmp", src.String())
		case dst.Is4():
			c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		case src.IsValid():
			c, err = icmp.ListenPacket("ip6:ipv6-icmp", src.String())
		default:
			c, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, n.Name, err)
	}
	defer c.Close()
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		typ, reply, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	id := os.Getpid() & 0xffff
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for seq := 1; time.Now().Before(deadline); seq++ {
		msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("spinneret")}}
		b, _ := msg.Marshal(nil)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		wait := time.Now().Add(300 * time.Millisecond)
		if wait.After(deadline) {
			wait = deadline
		}
		c.SetReadDeadline(wait)
		for {
			nr, peer, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: send the next request
			}
			m, err := icmp.ParseMessage(proto, buf[:nr])
			if err != nil || m.Type != reply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq {
				if pa, ok := peer.(*net.IPAddr); ok && pa.IP.Equal(dst.AsSlice()) {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("ping %s from %s: no reply within %s", dst, n.Name, timeout)
}

// TxPackets is how many packets a link of the namespace has sent.
func (n *NS) TxPackets(link string) (uint64, error) {
	l, err := n.nl.LinkByName(link)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Statistics.TxPackets, nil
}
