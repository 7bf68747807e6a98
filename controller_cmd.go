package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// controllerBinary is the controller's own binary (cmd/spinneret-controller),
// which links client-go; the plugin does not, to keep its start-up small.
const controllerBinary = "spinneret-controller"

// runController execs spinneret-controller with the same arguments.
func runController(args []string, _ io.Writer) error { return execBeside(controllerBinary, args) }

// execBeside execs name from this binary's directory (or PATH) with args.
func execBeside(name string, args []string) error {
	path := ""
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), name); fileExists(p) {
			path = p
		}
	}
	if path == "" {
		p, err := exec.LookPath(name)
		if err != nil {
			return fmt.Errorf("%s is installed neither beside spinneret nor on PATH (make build puts both in bin/)", name)
		}
		path = p
	}
	return syscall.Exec(path, append([]string{path}, args...), os.Environ())
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
