// Package nodeagent is the DaemonSet's container on every node
// (spinneret-node, which `spinneret install` runs): it installs spinneret
// on the node, then stays running to keep the node's copy of the
// ServiceAccount token fresh and to sweep attachments whose sandbox the
// runtime no longer has. It is not in the ADD/DEL path: ADD and DEL work
// with it stopped. It is its own binary so the CNI plugin links neither
// gRPC nor the CRI API.
package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spinneret-cni/spinneret/internal/install"
)

// Config is the agent's.
type Config struct {
	// Install says what to install; its APIServer is set from APIServer
	// or ServiceURL.
	Install install.Options
	// APIServer is the node kubeconfig's server when set; otherwise the
	// API server's own endpoint, found through ServiceURL (the kubernetes
	// Service's ClusterIP).
	APIServer, ServiceURL string
	// Once installs and returns: no token refresh, no sweeps.
	Once bool
	// TokenInterval is how often the token is copied when it changed.
	TokenInterval time.Duration
	// SweepInterval is how often (and at start) the agent sweeps; 0: never.
	SweepInterval time.Duration
	Sweeper       Sweeper
	Log           *slog.Logger
}

// Run installs, then refreshes and sweeps until ctx ends.
func Run(ctx context.Context, c Config) error {
	c.apiServerFor(ctx)
	if err := install.Run(c.Install); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	c.Log.Info("installed", "node", c.Install.NodeName, "cniBinDir", c.Install.CNIBinDir, "cniConfDir", c.Install.CNIConfDir)
	if c.Once {
		return nil
	}
	token := time.NewTicker(c.TokenInterval)
	defer token.Stop()
	var sweep <-chan time.Time
	if c.SweepInterval > 0 {
		t := time.NewTicker(c.SweepInterval)
		defer t.Stop()
		sweep = t.C
		c.sweep(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-token.C:
			if copied, err := install.RefreshToken(c.Install); err != nil {
				c.Log.Error("token not refreshed", "err", err)
			} else if copied {
				c.Log.Info("token refreshed")
			}
		case <-sweep:
			c.sweep(ctx)
		}
	}
}

func (c Config) sweep(ctx context.Context) {
	start := time.Now()
	rep, err := c.Sweeper.Sweep(ctx)
	if rep == nil {
		c.Log.Error("sweep", "err", err)
		return
	}
	attrs := []any{"sandboxes", rep.Sandboxes, "stale", len(rep.Stale), "left", len(rep.Left), "ms", time.Since(start).Milliseconds()}
	if err != nil {
		c.Log.Error("sweep", append(attrs, "err", err)...)
		return
	}
	c.Log.Info("sweep", attrs...)
}
