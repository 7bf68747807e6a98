// Package controller is `spinneret controller`: the cluster-wide half of
// the kubernetes IPAM backend. Under a leader election (a Lease), it
// garbage-collects IPAllocations whose pod is gone, keeps each IPPool's
// status counts, and discovers the cluster's service and pod CIDRs, which
// it publishes in one ConfigMap the plugin reads with one request.
//
// The plugin never waits for the controller: allocation needs only the
// API server, and the published CIDRs stay where they are when the
// controller is down. This package links client-go; the CNI binary does
// not (it is a separate binary, cmd/spinneret-controller).
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/spinneret-cni/spinneret/internal/clusternet"
)

// Config is the controller's configuration (its command-line flags).
type Config struct {
	// Kubeconfig is the kubeconfig file; empty: in-cluster config.
	Kubeconfig string
	// Namespace holds the Lease and the published ConfigMap.
	Namespace string
	// Identity names this replica in the Lease (default: host name + pid).
	Identity string
	// Leader election timing.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Interval between full passes (GC, pool status, CIDR discovery); the
	// GC and status also run shortly after pods or allocations change.
	Interval time.Duration
	// TerminatingDelay is how long after its deletion deadline a pod still
	// terminating on a NotReady node keeps its addresses.
	TerminatingDelay time.Duration
	// MetricsAddr is where /metrics is served ("": nowhere).
	MetricsAddr string
	Log         *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Namespace == "" {
		c.Namespace = "kube-system"
	}
	if c.Identity == "" {
		h, _ := os.Hostname()
		c.Identity = fmt.Sprintf("%s_%d", h, os.Getpid())
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 15 * time.Second
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = 10 * time.Second
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = 2 * time.Second
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// LeaseName is the Lease the controller's replicas elect a leader with
// (it also owns the ConfigMap clusternet.ConfigMapName).
const LeaseName = clusternet.LeaseName

var (
	allocGVR    = schema.GroupVersionResource{Group: "spinneret.io", Version: "v1alpha1", Resource: "ipallocations"}
	poolGVR     = schema.GroupVersionResource{Group: "spinneret.io", Version: "v1alpha1", Resource: "ippools"}
	reservedGVR = schema.GroupVersionResource{Group: "spinneret.io", Version: "v1alpha1", Resource: "reservedips"}
)

type ctrl struct {
	cfg Config
	cs  kubernetes.Interface
	dyn dynamic.Interface
	log *slog.Logger
	m   *metrics
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// Run runs the controller until ctx is done: it competes for the Lease,
// works while it holds it, and competes again when it loses it (an API
// server that was unreachable for a while, say).
func Run(ctx context.Context, cfg Config) error {
	cfg.Defaults()
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	c := &ctrl{cfg: cfg, log: cfg.Log, m: newMetrics()}
	if cfg.MetricsAddr != "" {
		if err := c.m.serve(ctx, cfg.MetricsAddr, c.log); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	if c.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: cfg.Namespace},
		Client:     c.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.RenewDeadline, RetryPeriod: cfg.RetryPeriod,
			ReleaseOnCancel: true, Name: LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					c.log.Info("leading", "identity", cfg.Identity)
					c.m.leader.Set(1)
					c.lead(lctx)
				},
				OnStoppedLeading: func() {
					c.m.leader.Set(0)
					c.log.Info("not leading", "identity", cfg.Identity)
				},
				OnNewLeader: func(id string) {
					if id != cfg.Identity {
						c.log.Info("leader", "identity", id)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(ctx)
	}
	return nil
}
