package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPRange is an inclusive range of addresses inside a pool's subnet.
type IPRange struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// Route is a route given to the pods of a pool; without gw it goes via the
// pool's gateway.
type Route struct {
	Dst string `json:"dst"`
	// +optional
	GW string `json:"gw,omitempty"`
}

// IPPoolSpec is a pool's addresses and who may use them.
type IPPoolSpec struct {
	// Subnet is the pool's network, e.g. 10.6.0.0/16 or fd00:6::/64.
	Subnet string `json:"subnet"`
	// Ranges default to the whole subnet.
	// +optional
	Ranges []IPRange `json:"ranges,omitempty"`
	// Exclude lists addresses or CIDRs never handed out.
	// +optional
	Exclude []string `json:"exclude,omitempty"`
	// +optional
	Gateway string `json:"gateway,omitempty"`
	// +optional
	Routes []Route `json:"routes,omitempty"`
	// VLAN is the VLAN ID pods of this pool use (0: none).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4094
	// +optional
	VLAN int32 `json:"vlan,omitempty"`
	// NodeAffinity selects the nodes whose pods may use the pool.
	// +optional
	NodeAffinity *metav1.LabelSelector `json:"nodeAffinity,omitempty"`
	// NamespaceAffinity selects the namespaces admitted to the pool.
	// +optional
	NamespaceAffinity *metav1.LabelSelector `json:"namespaceAffinity,omitempty"`
	// PodAffinity selects the pods that may use the pool.
	// +optional
	PodAffinity *metav1.LabelSelector `json:"podAffinity,omitempty"`
	// Default pools serve pods that name no pool.
	// +optional
	Default bool `json:"default,omitempty"`
	// Disabled pools hand out no new address.
	// +optional
	Disabled bool `json:"disabled,omitempty"`
}

// IPPoolStatus is kept by the controller.
type IPPoolStatus struct {
	// Allocated is how many addresses are allocated.
	// +optional
	Allocated int64 `json:"allocated,omitempty"`
	// Total is how many addresses the pool can hand out (a string: an IPv6
	// pool can hold more than an int64 counts).
	// +optional
	Total string `json:"total,omitempty"`
}

// IPPool is a pool of addresses for pods.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ippool
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Subnet",type=string,JSONPath=`.spec.subnet`
// +kubebuilder:printcolumn:name="Gateway",type=string,JSONPath=`.spec.gateway`
// +kubebuilder:printcolumn:name="Allocated",type=integer,JSONPath=`.status.allocated`
// +kubebuilder:printcolumn:name="Total",type=string,JSONPath=`.status.total`
// +kubebuilder:printcolumn:name="Default",type=boolean,JSONPath=`.spec.default`
// +kubebuilder:printcolumn:name="Disabled",type=boolean,JSONPath=`.spec.disabled`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPPoolSpec `json:"spec"`
	// +optional
	Status IPPoolStatus `json:"status,omitempty"`
}

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}

// PodRef names a pod by namespace, name and UID.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// IPAllocationSpec is who holds one address.
type IPAllocationSpec struct {
	Pool    string `json:"pool"`
	Address string `json:"address"`
	Pod     PodRef `json:"pod"`
	// ContainerID is the sandbox the address was given to; a release must
	// match it, so an old pod's late DEL never frees a new pod's address.
	ContainerID string `json:"containerID"`
	Interface   string `json:"interface"`
	Node        string `json:"node"`
	// OwnerKind is the pod's controller kind (StatefulSet pods keep their
	// address across re-creation while their ordinal is valid).
	// +optional
	OwnerKind string `json:"ownerKind,omitempty"`
	// QuarantinedUntil is set on an address found in use by another host:
	// it belongs to no pod and is handed out again only after this time.
	// +optional
	QuarantinedUntil *metav1.Time `json:"quarantinedUntil,omitempty"`
}

// IPAllocation is one allocated address. Its name is derived from the pool
// and the address, so creating it is the allocation: two pods racing for
// one address get a conflict from the API server, and no shared object is
// compared-and-swapped.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipalloc
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.spec.address`
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.pod.namespace`
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.pod.name`
// +kubebuilder:printcolumn:name="Interface",type=string,JSONPath=`.spec.interface`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Quarantined-Until",type=date,JSONPath=`.spec.quarantinedUntil`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPAllocation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPAllocationSpec `json:"spec"`
}

// IPAllocationList is a list of IPAllocations.
//
// +kubebuilder:object:root=true
type IPAllocationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPAllocation `json:"items"`
}

// ReservedIPSpec lists addresses no pool hands out.
type ReservedIPSpec struct {
	// Addresses are addresses or CIDRs.
	// +kubebuilder:validation:MinItems=1
	Addresses []string `json:"addresses"`
	// +optional
	Reason string `json:"reason,omitempty"`
}

// ReservedIP keeps addresses out of every pool.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=reservedip
// +kubebuilder:printcolumn:name="Addresses",type=string,JSONPath=`.spec.addresses`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.spec.reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ReservedIP struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ReservedIPSpec `json:"spec"`
}

// ReservedIPList is a list of ReservedIPs.
//
// +kubebuilder:object:root=true
type ReservedIPList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ReservedIP `json:"items"`
}
