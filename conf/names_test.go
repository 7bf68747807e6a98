package conf

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// nameRules pairs each hand-written name rule with the regexp it replaced.
var nameRules = []struct {
	name  string
	fn    func(string) bool
	re    *regexp.Regexp
	bytes bool // the rule counts bytes; the regexp runes (ASCII only)
}{
	{"validName", validName, regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`), false},
	{"validCNIName", validCNIName, regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`), false},
	{"validIfNameBytes", validIfNameBytes, regexp.MustCompile(`^[\x21-\x24\x26-\x2e\x30-\x39\x3b-\x7e]{1,15}$`), true},
	{"validPCI", validPCI, regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`), false},
	{"validSubdomain", validSubdomain, regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`), false},
	{"validSysctlKey", validSysctlKey, regexp.MustCompile(`^net(\.[A-Za-z0-9_-]+)+$`), false},
	{"ValidDNSName", ValidDNSName, regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`), false},
	{"ValidDNSLabel", ValidDNSLabel, regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`), false},
}

// TestNameRules holds each rule to its regexp on hand-picked edges and on
// 200,000 random strings per rule, drawn from the bytes that matter (the
// classes' edges, separators, high bytes) with lengths about the limits.
func TestNameRules(t *testing.T) {
	edges := []string{"", "a", "A", "-", ".", "_", "a-", "-a", "a.b", "a..b", ".a", "a.", "a_b", "net.", "net.a", "net.a.", "net..a",
		"net.ipv4.conf.IFNAME.arp_notify", "net/ipv4", "0000:3b:02.1", "0000:3B:02.1", "0000:3b:02.8", "0000:3b:02:1",
		strings.Repeat("a", 15), strings.Repeat("a", 16), strings.Repeat("a", 63), strings.Repeat("a", 64), "eth%d", "a:b", "a/b", "a b", "é"}
	alphabet := []byte("az09AZ.-_:/% \x00\x7f\x80\xffnetfb")
	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range nameRules {
		check := func(s string) {
			want := r.re.MatchString(s)
			if r.bytes && len(s) > 15 {
				want = false
			}
			if got := r.fn(s); got != want {
				t.Errorf("%s(%q) = %v, the regexp %v", r.name, s, got, want)
			}
		}
		for _, s := range edges {
			check(s)
		}
		for range 200_000 {
			n := rng.IntN(70)
			b := make([]byte, n)
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			if rng.IntN(4) == 0 && n > 4 {
				copy(b, "net.")
			}
			if rng.IntN(8) == 0 && n >= 12 {
				b = []byte("0000:3b:02.1")
				b[rng.IntN(12)] = alphabet[rng.IntN(len(alphabet))]
			}
			check(string(b))
		}
	}
}
