package podres

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
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

// TestFields holds the wire reader to protobuf's own (protowire) on valid
// messages of every wire type, and has it refuse what protowire refuses.
func TestFields(t *testing.T) {
	var msg []byte
	msg = protowire.AppendTag(msg, 1, protowire.VarintType)
	msg = protowire.AppendVarint(msg, 1<<40)
	msg = protowire.AppendTag(msg, 2, protowire.Fixed64Type)
	msg = protowire.AppendFixed64(msg, 7)
	msg = protowire.AppendTag(msg, 3, protowire.BytesType)
	msg = protowire.AppendBytes(msg, []byte("0000:3b:02.1"))
	msg = protowire.AppendTag(msg, 1<<20, protowire.Fixed32Type)
	msg = protowire.AppendFixed32(msg, 9)
	msg = protowire.AppendTag(msg, 4, protowire.BytesType)
	msg = protowire.AppendBytes(msg, nil)
	type field struct {
		num uint64
		typ wireType
		v   string
	}
	var got []field
	if err := fields(msg, func(num uint64, typ wireType, v []byte) error {
		got = append(got, field{num, typ, string(v)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []field{{1, varintType, ""}, {2, fixed64Type, ""}, {3, bytesType, "0000:3b:02.1"}, {1 << 20, fixed32Type, ""}, {4, bytesType, ""}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fields: %v, want %v", got, want)
	}
	// every truncation of msg that protowire refuses is refused too
	for i := range msg {
		b := msg[:i]
		err := fields(b, func(uint64, wireType, []byte) error { return nil })
		pwErr := false
		for r := b; len(r) > 0; {
			num, typ, n := protowire.ConsumeField(r)
			if n < 0 || num == 0 || typ == protowire.StartGroupType {
				pwErr = true
				break
			}
			r = r[n:]
		}
		if (err != nil) != pwErr {
			t.Errorf("%d bytes: fields says %v, protowire refuses: %v", i, err, pwErr)
		}
	}
	for _, bad := range [][]byte{
		protowire.AppendTag(nil, 1, protowire.StartGroupType),
		protowire.AppendTag(nil, 0, protowire.VarintType),
		append(protowire.AppendTag(nil, 1, protowire.BytesType), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
	} {
		if err := fields(bad, func(uint64, wireType, []byte) error { return nil }); err == nil {
			t.Errorf("fields(% x) accepted", bad)
		}
	}
}
