// Command spinneret-controller is `spinneret controller`: garbage
// collection of IPAllocations, IPPool status and cluster CIDR discovery,
// under leader election. It is its own binary so that the CNI plugin does
// not link client-go (whose package init alone made the plugin start in
// ~8 ms instead of ~2 ms).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spinneret-cni/spinneret/controller"
	"github.com/spinneret-cni/spinneret/internal/clusternet"
)

func main() {
	var cfg controller.Config
	fs := flag.NewFlagSet("spinneret controller", flag.ContinueOnError)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&cfg.Namespace, "namespace", "kube-system", "namespace of the Lease and of the published ConfigMap "+clusternet.ConfigMapName)
	fs.StringVar(&cfg.Identity, "identity", "", "this replica's name in the Lease (default: host name and pid)")
	fs.DurationVar(&cfg.LeaseDuration, "lease-duration", 0, "leader election: lease duration (default 15s)")
	fs.DurationVar(&cfg.RenewDeadline, "renew-deadline", 0, "leader election: renew deadline (default 10s)")
	fs.DurationVar(&cfg.RetryPeriod, "retry-period", 0, "leader election: retry period (default 2s)")
	fs.DurationVar(&cfg.Interval, "interval", 0, "full pass interval: GC, pool status, CIDR discovery (default 1m)")
	fs.DurationVar(&cfg.TerminatingDelay, "terminating-delay", 0, "how long past its deletion deadline a pod terminating on a NotReady node keeps its addresses")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":9472", "serve Prometheus metrics at http://ADDR/metrics (\"\": off)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return
		}
		os.Exit(2)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "spinneret controller: -log-level: %v\n", err)
		os.Exit(2)
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := controller.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "spinneret controller: %v\n", err)
		os.Exit(1)
	}
}
