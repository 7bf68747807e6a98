package podres

import (
	"context"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	podresources "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// kubelet is a PodResources server built from the kubelet's generated API.
type kubelet struct {
	podresources.UnimplementedPodResourcesListerServer
	pods []*podresources.PodResources
}

func (k *kubelet) List(context.Context, *podresources.ListPodResourcesRequest) (*podresources.ListPodResourcesResponse, error) {
	return &podresources.ListPodResourcesResponse{PodResources: k.pods}, nil
}

func serve(t *testing.T, k *kubelet) string {
	sock := filepath.Join(t.TempDir(), "kubelet.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	podresources.RegisterPodResourcesListerServer(s, k)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return sock
}

// TestDevices: the hand-spoken gRPC call against a real gRPC server of the
// kubelet's API: the pod's devices of one resource, over all containers,
// in order; other pods and resources ignored; a missing pod, a dead socket.
func TestDevices(t *testing.T) {
	k := &kubelet{pods: []*podresources.PodResources{
		{Name: "other", Namespace: "ns", Containers: []*podresources.ContainerResources{{Name: "c", Devices: []*podresources.ContainerDevices{{ResourceName: "intel.com/sriov", DeviceIds: []string{"0000:01:10.6"}}}}}},
		{Name: "web", Namespace: "ns", Containers: []*podresources.ContainerResources{
			{Name: "a", Devices: []*podresources.ContainerDevices{
				{ResourceName: "intel.com/sriov", DeviceIds: []string{"0000:01:10.0", "0000:01:10.2"}},
				{ResourceName: "nvidia.com/gpu", DeviceIds: []string{"GPU-1"}},
			}, CpuIds: []int64{1, 2}},
			{Name: "b", Devices: []*podresources.ContainerDevices{{ResourceName: "intel.com/sriov", DeviceIds: []string{"0000:01:10.4"}}}},
		}},
	}}
	sock := serve(t, k)
	got, err := Devices(t.Context(), sock, "ns", "web", "intel.com/sriov", 2*time.Second)
	if err != nil || !reflect.DeepEqual(got, []string{"0000:01:10.0", "0000:01:10.2", "0000:01:10.4"}) {
		t.Fatalf("devices %v, %v", got, err)
	}
	if got, err := Devices(t.Context(), sock, "ns", "web", "none", time.Second); err != nil || len(got) != 0 {
		t.Fatalf("other resource: %v, %v", got, err)
	}
	if _, err := Devices(t.Context(), sock, "ns", "nope", "intel.com/sriov", time.Second); err == nil || !strings.Contains(err.Error(), "no pod ns/nope") {
		t.Fatalf("missing pod: %v", err)
	}
	if _, err := Devices(t.Context(), filepath.Join(t.TempDir(), "none.sock"), "ns", "web", "r", time.Second); err == nil {
		t.Fatal("no kubelet: no error")
	}
}
