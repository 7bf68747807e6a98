package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSubcommands(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"version"}, 0, "CNI versions: [0.3.1 0.4.0 1.0.0 1.1.0]", ""},
		{[]string{"version", "--help"}, 0, "usage: spinneret version", ""},
		{[]string{"demo", "--help"}, 0, "usage: spinneret demo", ""},
		{[]string{"demo", "--nope"}, 2, "usage: spinneret demo", ""},
		{[]string{"bogus"}, 2, "", `unknown command "bogus"`},
		{[]string{"version", "extra"}, 2, `unexpected argument "extra"`, ""},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		code := run(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errOut.String(), c.err) {
			t.Errorf("%v: code %d, stdout %q, stderr %q", c.args, code, out.String(), errOut.String())
		}
	}
}
