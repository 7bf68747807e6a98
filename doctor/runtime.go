package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/conf"
)

// RuntimeInfo is what the container runtime says of itself and of the
// CNI config it loaded.
type RuntimeInfo struct {
	Name, Version string
	// CNILoadStatus is containerd's lastCNILoadStatus ("OK", or why the
	// conf dir's config did not load); "" when the runtime gives none.
	CNILoadStatus string
	// Networks are the networks the runtime loaded (containerd's
	// cniconfig), with their CNI versions: loopback first, then the
	// pod network.
	Networks []RuntimeNetwork
}

// RuntimeNetwork is one network the runtime runs for every pod.
type RuntimeNetwork struct {
	Name, CNIVersion, IfName string
}

// CRIRuntime asks the runtime at endpoint (its CRI socket) with Version
// and a verbose Status.
func CRIRuntime(endpoint string, timeout time.Duration) func(context.Context) (*RuntimeInfo, error) {
	target := endpoint
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	return func(ctx context.Context) (*RuntimeInfo, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("CRI %s: %w", endpoint, err)
		}
		defer conn.Close()
		c := runtimeapi.NewRuntimeServiceClient(conn)
		v, err := c.Version(ctx, &runtimeapi.VersionRequest{})
		if err != nil {
			return nil, fmt.Errorf("CRI %s: Version: %w", endpoint, err)
		}
		info := &RuntimeInfo{Name: v.RuntimeName, Version: v.RuntimeVersion}
		st, err := c.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
		if err != nil {
			return info, nil // the version is enough to go on
		}
		if s, ok := st.Info["lastCNILoadStatus"]; ok {
			info.CNILoadStatus = s
		}
		var cc struct {
			Networks []struct {
				Config struct{ Name, CNIVersion string }
				IFName string
			}
		}
		if json.Unmarshal([]byte(st.Info["cniconfig"]), &cc) == nil {
			for _, n := range cc.Networks {
				info.Networks = append(info.Networks, RuntimeNetwork{Name: n.Config.Name, CNIVersion: n.Config.CNIVersion, IfName: n.IFName})
			}
		}
		return info, nil
	}
}

// maxCNIVersion is the newest CNI version the runtime's libcni accepts in
// a result, where known: containerd before 2.0 (libcni 1.1) reads only a
// conflist's cniVersion and refuses results of 1.1.0.
func maxCNIVersion(info *RuntimeInfo) string {
	if info.Name == "containerd" {
		v := strings.TrimPrefix(info.Version, "v")
		if strings.HasPrefix(v, "1.") {
			return "1.0.0"
		}
		return "1.1.0"
	}
	return ""
}

// runtime: the runtime answers, loaded spinneret's conflist as its pod
// network, at a CNI version it speaks.
func (r *Report) runtime(ctx context.Context, o Options, cfg *conf.Config) {
	if o.Runtime == nil {
		return
	}
	info, err := o.Runtime(ctx)
	if err != nil {
		r.add("runtime", "", Fail, err.Error(), "check --runtime-endpoint (containerd: unix:///run/containerd/containerd.sock, CRI-O: unix:///var/run/crio/crio.sock)")
		return
	}
	subj := info.Name + " " + info.Version
	if info.CNILoadStatus != "" && info.CNILoadStatus != "OK" {
		r.add("runtime", subj, Fail, "its CNI config did not load: "+info.CNILoadStatus, "check the CNI conf dir the runtime reads (containerd: plugins.\"io.containerd.grpc.v1.cri\".cni.conf_dir)")
	}
	var pod *RuntimeNetwork
	for i := range info.Networks {
		if info.Networks[i].IfName != "lo" {
			pod = &info.Networks[i]
			break
		}
	}
	if pod != nil && pod.Name != cfg.Name {
		r.add("runtime", subj, Fail, fmt.Sprintf("runs network %q for pods, not spinneret's %q: another conflist sorts first in the conf dir", pod.Name, cfg.Name),
			"keep spinneret's 00-spinneret.conflist first (a delegate's conflist may stay beside it); Cilium: cni.exclusive=false")
		return
	}
	max := maxCNIVersion(info)
	switch {
	case max == "":
		r.ok("runtime", subj, "answers; which CNI versions it accepts is not known here: the conflist's cniVersion is "+cfg.CNIVersion)
	case mustCompare(cfg.CNIVersion, max) > 0:
		r.add("runtime", subj, Fail, fmt.Sprintf("reads the conflist's cniVersion %s and accepts results up to %s", cfg.CNIVersion, max),
			fmt.Sprintf("set the chart's cni.cniVersion to %s (keep 1.1.0 in cniVersions for newer runtimes)", max))
	default:
		got := cfg.CNIVersion
		if pod != nil && pod.CNIVersion != "" {
			got = pod.CNIVersion
		}
		r.ok("runtime", subj, fmt.Sprintf("runs network %s at CNI %s (accepts up to %s)", cfg.Name, got, max))
	}
}

func mustCompare(a, b string) int {
	gt, err := version.GreaterThan(a, b)
	if err != nil {
		return 0
	}
	if gt {
		return 1
	}
	return 0
}
