package nodeagent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sandboxes lists the pod sandboxes the container runtime has, in any
// state: their IDs are the CNI_CONTAINERIDs of their attachments.
type Sandboxes func(ctx context.Context) (map[string]bool, error)

// CRISandboxes lists sandboxes through the CRI's RuntimeService at
// endpoint ("unix:///run/containerd/containerd.sock", or a bare path),
// as the kubelet does. Every state counts: a NotReady sandbox still gets
// its DEL (or has had it) from the runtime; only one the runtime no
// longer has at all is the agent's to clean up.
func CRISandboxes(endpoint string, timeout time.Duration) Sandboxes {
	target := endpoint
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	return func(ctx context.Context) (map[string]bool, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("CRI %s: %w", endpoint, err)
		}
		defer conn.Close()
		resp, err := runtimeapi.NewRuntimeServiceClient(conn).ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			return nil, fmt.Errorf("CRI %s: ListPodSandbox: %w", endpoint, err)
		}
		ids := make(map[string]bool, len(resp.Items))
		for _, s := range resp.Items {
			ids[s.Id] = true
		}
		return ids, nil
	}
}
