// Package vocab is the driver vocabulary: the link kinds spinneret creates
// and the names of their modes, flags and VF link states, as configs and
// NADs write them. It imports nothing: conf validates configs against it,
// and drivers maps each name to the kernel's value (a test there proves
// every name has one).
package vocab

// The drivers.
const (
	Macvlan = "macvlan"
	Ipvlan  = "ipvlan"
	SRIOV   = "sriov"
)

// Drivers are the link kinds a network may name; the first is the default.
var Drivers = []string{Macvlan, Ipvlan, SRIOV}

// Modes and flags; the first of each is the default.
var (
	MacvlanModes = []string{"bridge", "private", "vepa", "passthru"}
	IpvlanModes  = []string{"l2", "l3", "l3s"}
	IpvlanFlags  = []string{"bridge", "private", "vepa"}
)

// LinkStates are an SR-IOV VF's link states (sriov-cni's link_state).
var LinkStates = []string{"auto", "enable", "disable"}
