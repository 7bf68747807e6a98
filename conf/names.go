package conf

// The name rules of configs and annotations, written out by hand: as
// package-level regexps they were compiled at every start of the plugin,
// 0.9 ms and 85 KB of its 9 ms of package init (GODEBUG=inittrace=1; the
// request package's two more 0.2 ms). names_test.go holds each rule to
// the regexp it replaces.

func lowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func alnum(c byte) bool { return lowerAlnum(c) || 'A' <= c && c <= 'Z' }

func hexLower(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

// edged is s non-empty, its first and last bytes edge, the others inner.
func edged(s string, edge, inner func(byte) bool) bool {
	if s == "" || !edge(s[0]) || !edge(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !inner(s[i]) {
			return false
		}
	}
	return true
}

// led is s non-empty, its first byte first, the others rest.
func led(s string, first, rest func(byte) bool) bool {
	if s == "" || !first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !rest(s[i]) {
			return false
		}
	}
	return true
}

// `[a-z0-9._-]`
func dnsInner(c byte) bool { return lowerAlnum(c) || c == '.' || c == '_' || c == '-' }

// `[a-z0-9-]`
func labelInner(c byte) bool { return lowerAlnum(c) || c == '-' }

// `[a-zA-Z0-9_.\-]`
func cniNameRest(c byte) bool { return alnum(c) || c == '_' || c == '.' || c == '-' }

// validName is a pool's or route's name: `^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`.
func validName(s string) bool { return len(s) <= 63 && edged(s, lowerAlnum, dnsInner) }

// validCNIName is CNI's rule for a network's or plugin's name:
// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
func validCNIName(s string) bool { return led(s, alnum, cniNameRest) }

// validIfNameBytes is 1 to 15 bytes of printable ASCII but '%', '/' and
// ':': `^[\x21-\x24\x26-\x2e\x30-\x39\x3b-\x7e]{1,15}$`.
func validIfNameBytes(s string) bool {
	if s == "" || len(s) > 15 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '%' || c == '/' || c == ':' {
			return false
		}
	}
	return true
}

// validPCI is a PCI address: `^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`.
func validPCI(s string) bool {
	if len(s) != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.' || s[11] < '0' || s[11] > '7' {
		return false
	}
	for _, i := range [...]int{0, 1, 2, 3, 5, 6, 8, 9} {
		if !hexLower(s[i]) {
			return false
		}
	}
	return true
}

// validSubdomain is dot-separated DNS labels:
// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`.
func validSubdomain(s string) bool {
	return everyPart(s, func(label string) bool { return edged(label, lowerAlnum, labelInner) })
}

// everyPart reports whether ok holds for every dot-separated part of s
// (an empty s is one empty part).
func everyPart(s string, ok func(string) bool) bool {
	for {
		part, rest, more := cut(s, '.')
		if !ok(part) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

// validSysctlKey is a tuning sysctl key under net.: `^net(\.[A-Za-z0-9_-]+)+$`.
func validSysctlKey(s string) bool {
	if len(s) < 5 || s[:4] != "net." {
		return false
	}
	return everyPart(s[4:], func(part string) bool { return led(part, sysctlPart, sysctlPart) })
}

func sysctlPart(c byte) bool { return alnum(c) || c == '_' || c == '-' }

// ValidDNSName is `^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`, any length: the
// selector of a NAD in the networks annotation.
func ValidDNSName(s string) bool { return edged(s, lowerAlnum, dnsInner) }

// ValidDNSLabel is `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, any length (a
// namespace's name, with its length checked by the caller).
func ValidDNSLabel(s string) bool { return edged(s, lowerAlnum, labelInner) }

// cut is strings.Cut for one byte.
func cut(s string, sep byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
