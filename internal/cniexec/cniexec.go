// Package cniexec is how spinneret runs other CNI plugins (a delegated
// network, a delegated IPAM plugin, STATUS of a delegate): invoke's own
// executor, with the plugin's CPU pin lifted first (cpupin.Restore), so
// that neither the plugin nor a daemon it leaves behind inherits it.
package cniexec

import (
	"context"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/internal/cpupin"
)

// Exec is the executor to pass to libcni and invoke.
var Exec invoke.Exec = unpinned{&invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}}

type unpinned struct{ invoke.Exec }

func (u unpinned) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	cpupin.Restore()
	return u.Exec.ExecPlugin(ctx, pluginPath, stdinData, environ)
}
