// Package v1alpha1 holds the spinneret.io/v1alpha1 API types of the
// Kubernetes IPAM backend: IPPool, IPAllocation (one object per allocated
// address, the allocation model Kubernetes uses for ClusterIPs, KEP-1880)
// and ReservedIP. The CRDs in deploy/crds are generated from them with
// controller-gen (make generate).
//
// +kubebuilder:object:generate=true
// +groupName=spinneret.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is spinneret.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: "spinneret.io", Version: "v1alpha1"}
