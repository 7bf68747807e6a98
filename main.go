// Command spinneret is an all-in-one CNI plugin for underlay networks. With
// CNI_COMMAND set it serves the CNI protocol; otherwise it runs a subcommand.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/spinneret-cni/spinneret/cni"
	"github.com/spinneret-cni/spinneret/conf"
	// initialised before the packages whose inits do the work (Go
	// initialises ready packages in import-path order): it pins the
	// plugin to one CPU first
	_ "github.com/spinneret-cni/spinneret/internal/cpupin"
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
	{"install", "install spinneret on this node (the DaemonSet's init container)", runInstall},
	{"controller", "run the cluster controller: IPAM garbage collection, pool status, CIDR discovery", runController},
	{"doctor", "check this node and the cluster for what keeps pods from their NICs, with the fix for each", runDoctor},
	{"inspect", "show one pod's NICs, routes, rules, addresses, allocations and journal on this node", runInspect},
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
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs a subcommand and returns the exit code: 0 (also for --help), 1
// when the command failed, 2 for a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, new(usageError)):
			return 2 // the flag package has printed the usage
		default:
			fmt.Fprintf(stderr, "spinneret %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "spinneret: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `spinneret %s: an all-in-one CNI plugin for underlay networks.

Run by the container runtime (CNI_COMMAND set), it attaches the pod's NICs.
Run by hand:

`, version)
	for _, c := range commands {
		fmt.Fprintf(w, "  spinneret %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\n'spinneret COMMAND --help' describes a command.\n")
}

// usageError is a command line the flag package rejected.
type usageError struct{ error }

// parseFlags parses a subcommand's flags; --help gives flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil && !errors.Is(err, flag.ErrHelp) {
		return usageError{err}
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func runVersion(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprintln(stdout, "usage: spinneret version\n\nPrints the version and the CNI spec versions supported.")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "spinneret %s\nCNI versions: %v\n", version, conf.SupportedVersions)
	return nil
}
