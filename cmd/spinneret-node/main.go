// Command spinneret-node is `spinneret install`: the DaemonSet's container
// on every node. It installs spinneret (the binary, loopback where the
// node has none, the node conf, the kubeconfig, the conflist last), then
// stays running: it keeps the node's copy of the ServiceAccount token
// fresh and sweeps the attachments whose sandbox the runtime no longer
// has (containerd and CRI-O never call CNI GC). It is its own binary so the
// CNI plugin links neither gRPC nor the CRI API.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spinneret-cni/spinneret/doctor"
	"github.com/spinneret-cni/spinneret/internal/install"
	"github.com/spinneret-cni/spinneret/nodeagent"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "doctor" {
		os.Exit(doctorMain(args[1:]))
	}
	if len(args) > 0 && args[0] == "sweep" {
		os.Exit(sweepMain(args[1:]))
	}
	if len(args) > 0 && args[0] == "install" {
		args = args[1:] // as `spinneret install` execs it
	}
	fs := flag.NewFlagSet("spinneret install", flag.ContinueOnError)
	var c nodeagent.Config
	o := &c.Install
	fs.StringVar(&o.ConfigDir, "config-dir", "/config", "the cluster's config: "+install.ConflistName+" and node.yaml")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/host/opt/cni/bin", "the host's CNI plugin dir")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI conf dir")
	fs.StringVar(&o.EtcDir, "etc-dir", "/host/etc/spinneret", "the host's /etc/spinneret")
	fs.StringVar(&o.HostEtcDir, "host-etc-dir", "/etc/spinneret", "the same dir as the host sees it")
	fs.StringVar(&o.ServiceAccountDir, "service-account-dir", "", "write a kubeconfig with this ServiceAccount's ca.crt and token")
	fs.StringVar(&c.APIServer, "api-server", "", "the API server's URL in the node's kubeconfig, reachable from the host network before any pod network exists (default: the API server's own endpoint, read from the EndpointSlice default/kubernetes through https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, else that URL)")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Kubernetes name (default $NODE_NAME)")
	fs.StringVar(&o.Loopback, "loopback", "", "a loopback CNI plugin to install where the node has none")
	fs.BoolVar(&c.Once, "once", false, "install and exit (no token refresh, no sweeps)")
	fs.DurationVar(&c.TokenInterval, "token-interval", time.Minute, "how often the ServiceAccount token is copied to the node when it changed")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", 5*time.Minute, "how often (and at start) attachments without a sandbox are swept; 0: never")
	fs.DurationVar(&c.Sweeper.MinAge, "sweep-min-age", 2*time.Minute, "an attachment changed more recently than this is never swept")
	endpoint := fs.String("runtime-endpoint", "unix:///run/containerd/containerd.sock", "the container runtime's CRI socket (CRI-O: unix:///var/run/crio/crio.sock)")
	cniPath := fs.String("cni-path", "", "where the sweep's GC finds spinneret and a delegate's plugins (default: -cni-bin-dir)")
	cacheDir := fs.String("cni-cache-dir", "/var/lib/spinneret/node-agent", "libcni's cache for the sweep's own calls (not the runtime's)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return
		}
		os.Exit(2)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "spinneret install: -log-level: %v\n", err)
		os.Exit(2)
	}
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if h, p := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"); h != "" && p != "" {
		c.ServiceURL = "https://" + net.JoinHostPort(h, p)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "spinneret install: %v\n", err)
		os.Exit(1)
	}
	// the CNI plugin is the spinneret binary beside this one
	o.Binary = filepath.Join(filepath.Dir(self), "spinneret")
	c.Sweeper.Conflist = filepath.Join(o.CNIConfDir, install.ConflistName)
	c.Sweeper.BinDirs = []string{o.CNIBinDir}
	if *cniPath != "" {
		c.Sweeper.BinDirs = filepath.SplitList(*cniPath)
	}
	c.Sweeper.CacheDir = *cacheDir
	c.Sweeper.Sandboxes = nodeagent.CRISandboxes(*endpoint, 10*time.Second)
	c.Sweeper.Log = c.Log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := nodeagent.Run(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "spinneret install: %v\n", err)
		os.Exit(1)
	}
}

// doctorMain is `spinneret doctor`: the node's (and the cluster's) checks,
// a report with the fix for each finding; exit 1 when one failed, 2 for a
// usage error.
func doctorMain(args []string) int {
	fs := flag.NewFlagSet("spinneret doctor", flag.ContinueOnError)
	var o doctor.Options
	fs.StringVar(&o.Conflist, "conflist", "/etc/cni/net.d/"+install.ConflistName, "the installed conflist")
	endpoint := fs.String("runtime-endpoint", "unix:///run/containerd/containerd.sock", "the container runtime's CRI socket (\"\": do not ask it)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "for the cluster checks (default: the node conf's, which may read too little)")
	fs.BoolVar(&o.NoCluster, "no-cluster", false, "node checks only")
	fs.StringVar(&o.Root, "root", "", "read the node's /etc under this directory (tests)")
	output := fs.String("output", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(os.Stderr, "spinneret doctor: --output %q: text or json\n", *output)
		return 2
	}
	if *endpoint != "" {
		o.Sandboxes = nodeagent.CRISandboxes(*endpoint, 10*time.Second)
		o.Runtime = doctor.CRIRuntime(*endpoint, 10*time.Second)
	}
	rep := doctor.Run(context.Background(), o)
	if *output == "json" {
		rep.JSON(os.Stdout)
	} else {
		rep.Text(os.Stdout)
	}
	if rep.Failed() {
		return 1
	}
	return 0
}

// sweepMain is `spinneret-node sweep`: one sweep now, as the agent runs
// every --sweep-interval; its report as JSON; exit 1 when it failed.
func sweepMain(args []string) int {
	fs := flag.NewFlagSet("spinneret-node sweep", flag.ContinueOnError)
	var sw nodeagent.Sweeper
	fs.StringVar(&sw.Conflist, "conflist", "/etc/cni/net.d/"+install.ConflistName, "the installed conflist")
	endpoint := fs.String("runtime-endpoint", "unix:///run/containerd/containerd.sock", "the container runtime's CRI socket")
	cniPath := fs.String("cni-path", "/opt/cni/bin", "where GC finds spinneret (and a delegate's plugins)")
	fs.StringVar(&sw.CacheDir, "cni-cache-dir", "/var/lib/spinneret/node-agent", "libcni's cache for the sweep's own calls")
	fs.DurationVar(&sw.MinAge, "sweep-min-age", 2*time.Minute, "an attachment changed more recently than this is never swept")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	sw.BinDirs = filepath.SplitList(*cniPath)
	sw.Sandboxes = nodeagent.CRISandboxes(*endpoint, 10*time.Second)
	sw.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	rep, err := sw.Sweep(context.Background())
	if rep != nil {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "spinneret-node sweep: %v\n", err)
		return 1
	}
	return 0
}
