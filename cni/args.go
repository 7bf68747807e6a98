package cni

import (
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/internal/kube"
)

// cniArgs is CNI_ARGS as spinneret reads it, parsed once with the CNI
// library's loader: the Kubernetes pod it names, and a MAC for eth0. Other
// keys are the runtime's and ignored.
type cniArgs struct {
	types.CommonArgs
	MAC               types.UnmarshallableString
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
	K8S_POD_UID       types.UnmarshallableString
}

// parseCNIArgs reads CNI_ARGS ("K=V;K2=V2"); a pair without "=" is an error.
func parseCNIArgs(s string) (cniArgs, error) {
	var a cniArgs
	if s == "" {
		return a, nil
	}
	err := types.LoadArgs("IgnoreUnknown=1;"+s, &a)
	return a, err
}

// pod is the pod CNI_ARGS names; nil when it names none.
func (a cniArgs) pod() *kube.Pod {
	if a.K8S_POD_NAMESPACE == "" || a.K8S_POD_NAME == "" {
		return nil
	}
	return &kube.Pod{Namespace: string(a.K8S_POD_NAMESPACE), Name: string(a.K8S_POD_NAME), UID: string(a.K8S_POD_UID)}
}
