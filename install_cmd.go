package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/spinneret-cni/spinneret/internal/install"
)

// runInstall installs spinneret on the node (the DaemonSet's init
// container): binary, kubeconfig, node conf, conflist last.
func runInstall(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o install.Options
	fs.StringVar(&o.ConfigDir, "config-dir", "/config", "the cluster's config: "+install.ConflistName+" and node.yaml")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/host/opt/cni/bin", "the host's CNI plugin dir")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI conf dir")
	fs.StringVar(&o.EtcDir, "etc-dir", "/host/etc/spinneret", "the host's /etc/spinneret")
	fs.StringVar(&o.HostEtcDir, "host-etc-dir", "/etc/spinneret", "the same dir as the host sees it")
	fs.StringVar(&o.ServiceAccountDir, "service-account-dir", "", "write a kubeconfig with this ServiceAccount's ca.crt and token")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Kubernetes name (default $NODE_NAME)")
	fs.Usage = func() {
		fmt.Fprintln(stdout, "usage: spinneret install [flags]\n\nInstalls this binary, the node conf (with the node's name) and the conflist on the node,\neach file replaced by a rename, the conflist last. Flags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if h, p := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"); h != "" && p != "" {
		o.APIServer = "https://" + net.JoinHostPort(h, p)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Binary = self
	if err := install.Run(o); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "spinneret %s installed for node %s\n", version, o.NodeName)
	return nil
}
