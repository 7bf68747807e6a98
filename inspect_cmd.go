package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/spinneret-cni/spinneret/inspect"
	"github.com/spinneret-cni/spinneret/internal/install"
)

// runInspect is `spinneret inspect POD|CONTAINER-ID`.
func runInspect(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o inspect.Options
	fs.StringVar(&o.Conflist, "conflist", "/etc/cni/net.d/"+install.ConflistName, "the installed conflist")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "for the pod's network-status and IPAllocations (default: the node conf's)")
	fs.BoolVar(&o.NoCluster, "no-cluster", false, "the node's side only")
	output := fs.String("output", "text", "text or json")
	fs.Usage = func() {
		fmt.Fprintln(stdout, "usage: spinneret inspect [flags] NAMESPACE/POD | CONTAINER-ID\n\nOne page on a pod's attachment on this node: its NICs and addresses, the pod's routes\n(every table) and rules, the node's routes to it, the addresses it holds, its\nIPAllocations and network-status, and its journal. Flags:")
		fs.PrintDefaults()
	}
	var what string
	if len(args) > 0 && args[len(args)-1] != "" && args[len(args)-1][0] != '-' {
		what, args = args[len(args)-1], args[:len(args)-1]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if what == "" || (*output != "text" && *output != "json") {
		fs.Usage()
		return usageError{fmt.Errorf("name a pod (namespace/name) or a sandbox ID; --output text or json")}
	}
	js, _, node, err := inspect.Find(o, what)
	if err != nil {
		return err
	}
	if len(js) == 0 {
		return fmt.Errorf("%s: %w (a pod's attachments are kept from ADD to DEL; see spinneret doctor and the plugin log)", what, inspect.ErrNotFound)
	}
	var pages []*inspect.Page
	for _, j := range js {
		pages = append(pages, inspect.Inspect(context.Background(), o, j, node))
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(pages)
	}
	for i, p := range pages {
		if i > 0 {
			fmt.Fprintln(stdout, "\n----")
		}
		p.Text(stdout)
	}
	return nil
}
