package coordinator

import (
	"net/netip"
	"testing"
)

func TestPrefixMAC(t *testing.T) {
	p := [2]byte{0x0a, 0x1b}
	cases := []struct {
		addrs []string
		want  string
	}{
		{[]string{"10.6.212.241/16"}, "0a:1b:0a:06:d4:f1"},
		{[]string{"fd00:6::1:c0a8:102/64"}, "0a:1b:c0:a8:01:02"},
		{[]string{"fd00:6::1:c0a8:102/64", "10.6.212.241/16"}, "0a:1b:0a:06:d4:f1"}, // IPv4 first in dual stack
	}
	for _, c := range cases {
		var addrs []netip.Prefix
		for _, a := range c.addrs {
			addrs = append(addrs, netip.MustParsePrefix(a))
		}
		if got, ok := PrefixMAC(p, addrs); !ok || got != c.want {
			t.Errorf("PrefixMAC(%v) = %s, want %s", c.addrs, got, c.want)
		}
	}
	if _, ok := PrefixMAC(p, nil); ok {
		t.Error("a NIC without addresses got a prefix MAC")
	}
}

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("0123456789abcdef0123"), HostVethName("0123456789abcdef0124")
	if len(a) != 15 || a == b || a[:3] != "spn" {
		t.Fatalf("names %s %s", a, b)
	}
}
