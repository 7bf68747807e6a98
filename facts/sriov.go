package facts

import (
	"fmt"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/plan"
)

// AssignVFs gives each sriov NIC its VF: the one the request names (the
// network's deviceID; for eth0 also the runtime's deviceID capability), or the
// next of the devices the kubelet assigned the pod for the network's
// resourceName (kubelet PodResources API, one call per resource). A VF
// that is not one, has no PF netdev here, or whose netdev is in another
// pod is an error before anything is allocated.
//
// devices asks the kubelet for the pod's devices of a resource; pod names
// the pod in errors.
func AssignVFs(nics []plan.NIC, pod string, devices func(resource string) ([]string, error)) error {
	assigned := map[string][]string{} // resource -> devices left
	used := map[string]string{}       // PCI -> NIC
	for i := range nics {
		sr := nics[i].Network.SRIOV
		if sr == nil {
			continue
		}
		pci := nics[i].DeviceID
		if pci == "" {
			if sr.ResourceName == "" {
				return fmt.Errorf("%s: network %s names neither a deviceID nor a resourceName", nics[i].IfName, nics[i].Network.Name)
			}
			left, ok := assigned[sr.ResourceName]
			if !ok {
				devs, err := devices(sr.ResourceName)
				if err != nil {
					return fmt.Errorf("%s: resource %s: %w", nics[i].IfName, sr.ResourceName, err)
				}
				left = devs
			}
			for len(left) > 0 && used[left[0]] != "" {
				left = left[1:]
			}
			if len(left) == 0 {
				return fmt.Errorf("%s: the kubelet assigned pod %s no (more) %s device", nics[i].IfName, pod, sr.ResourceName)
			}
			pci, assigned[sr.ResourceName] = left[0], left[1:]
		}
		if other := used[pci]; other != "" {
			return fmt.Errorf("%s: VF %s is already %s's", nics[i].IfName, pci, other)
		}
		used[pci] = nics[i].IfName
		vf, err := drivers.LookupVF(pci)
		if err != nil {
			return fmt.Errorf("%s: %w", nics[i].IfName, err)
		}
		nics[i].VF = vf
	}
	return nil
}
