// Command spinneret is an all-in-one CNI plugin for underlay networks. With
// CNI_COMMAND set it serves the CNI protocol; otherwise it runs a subcommand.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/conf"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string, stdout io.Writer) error
}

var commands = []command{
	{"version", "print the version and the CNI versions spinneret speaks", runVersion},
	{"demo", "attach two pods in throwaway namespaces, test their traffic, and clean up", runDemo},
}

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		cni.Main("spinneret " + version)
		return
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stdout)
		return
	}
	for _, c := range commands {
		if c.name == os.Args[1] {
			if err := c.run(os.Args[2:], os.Stdout); err != nil {
				fmt.Fprintf(os.Stderr, "spinneret %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "spinneret: unknown command %q\n\n", os.Args[1])
	usage(os.Stderr)
	os.Exit(2)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `spinneret %s: an all-in-one CNI plugin for underlay networks.

Run by the container runtime (CNI_COMMAND set), it attaches the pod's NICs.
Run by hand:

`, version)
	for _, c := range commands {
		fmt.Fprintf(w, "  spinneret %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\n'spinneret COMMAND --help' describes a command.\n")
}

func runVersion(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprintln(stdout, "usage: spinneret version\n\nPrints the version and the CNI spec versions supported.")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "spinneret %s\nCNI versions: %v\n", version, conf.SupportedVersions)
	return nil
}
