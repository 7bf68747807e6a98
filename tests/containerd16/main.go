// Command containerd16 calls CNI plugins the way containerd 1.6's CRI
// plugin does: through go-cni v1.1.6 and libcni v1.1.1 (the versions
// containerd v1.6.20 vendors), with the loopback network first and the
// first config of the conf dir second. libcni v1.1.1 knows CNI up to
// 1.0.0: it ignores a conflist's cniVersions and can read no 1.1.0 result,
// which is what a shipped conflist must survive.
//
//	containerd16 -confdir DIR -bindir DIR[:DIR] -netns PATH -id ID [-arg K=V]... add|del
//	containerd16 -bindir DIR validate CONFLIST
//
// add prints {"cniVersions": [...], "ips": [...]} (the result version of
// each network, and eth0's addresses) on stdout. validate reads a conflist
// as libcni v1.1.1 does, asks each of its plugins (VERSION) whether it
// speaks the version libcni chose, and prints that version.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/cni/libcni"
)

type argList map[string]string

func (a argList) String() string { return fmt.Sprint(map[string]string(a)) }
func (a argList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q is not K=V", s)
	}
	a[k] = v
	return nil
}

func main() {
	confDir := flag.String("confdir", "", "CNI conf dir")
	binDir := flag.String("bindir", "", "CNI plugin dirs, colon-separated")
	netns := flag.String("netns", "", "pod netns path")
	id := flag.String("id", "", "sandbox ID")
	labels := argList{}
	flag.Var(labels, "arg", "CNI_ARGS entry K=V (repeatable)")
	flag.Parse()
	if flag.Arg(0) == "validate" {
		if err := validate(flag.Arg(1), filepath.SplitList(*binDir)); err != nil {
			fmt.Fprintln(os.Stderr, "containerd16:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(flag.Arg(0), *confDir, filepath.SplitList(*binDir), *netns, *id, labels); err != nil {
		fmt.Fprintln(os.Stderr, "containerd16:", err)
		os.Exit(1)
	}
}

func validate(file string, binDirs []string) error {
	l, err := libcni.ConfListFromFile(file)
	if err != nil {
		return err
	}
	c := libcni.NewCNIConfig(binDirs, nil)
	if _, err := c.ValidateNetworkList(context.Background(), l); err != nil {
		return err
	}
	fmt.Println(l.CNIVersion)
	return nil
}

func run(verb, confDir string, binDirs []string, netns, id string, labels map[string]string) error {
	// as containerd 1.6's CRI plugin sets it up (pkg/cri/server/service_linux.go)
	c, err := gocni.New(gocni.WithMinNetworkCount(2), gocni.WithPluginConfDir(confDir),
		gocni.WithPluginMaxConfNum(1), gocni.WithPluginDir(binDirs))
	if err != nil {
		return err
	}
	if err := c.Load(gocni.WithLoNetwork, gocni.WithDefaultConf); err != nil {
		return err
	}
	labels["IgnoreUnknown"] = "1"
	opts := []gocni.NamespaceOpts{gocni.WithLabels(labels)}
	ctx := context.Background()
	switch verb {
	case "add":
		res, err := c.Setup(ctx, id, netns, opts...)
		if err != nil {
			return err
		}
		out := struct {
			CNIVersions []string `json:"cniVersions"`
			IPs         []string `json:"ips"`
		}{}
		for _, r := range res.Raw() {
			out.CNIVersions = append(out.CNIVersions, r.CNIVersion)
		}
		if eth0, ok := res.Interfaces["eth0"]; ok {
			for _, ip := range eth0.IPConfigs {
				out.IPs = append(out.IPs, ip.IP.String())
			}
		}
		return json.NewEncoder(os.Stdout).Encode(out)
	case "del":
		return c.Remove(ctx, id, netns, opts...)
	}
	return fmt.Errorf("verb %q: want add or del", verb)
}
