package main

import "io"

// nodeBinary is the node agent's own binary (cmd/spinneret-node): it
// installs spinneret and stays running as the DaemonSet's container; it
// links gRPC and the CRI API, which the plugin does not.
const nodeBinary = "spinneret-node"

// runInstall execs spinneret-node with the same arguments.
func runInstall(args []string, _ io.Writer) error {
	return execBeside(nodeBinary, append([]string{"install"}, args...))
}

// runDoctor execs spinneret-node doctor (it speaks the CRI).
func runDoctor(args []string, _ io.Writer) error {
	return execBeside(nodeBinary, append([]string{"doctor"}, args...))
}
