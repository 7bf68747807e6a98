package cni

import (
	"context"
	"fmt"

	"github.com/spinneret-cni/spinneret/drivers"
	"github.com/spinneret-cni/spinneret/internal/podres"
	"github.com/spinneret-cni/spinneret/plan"
)

// assignVFs gives each sriov NIC its VF: the one the request names (the
// network's deviceID; for eth0 also the runtime's deviceID capability), or the
// next of the devices the kubelet assigned the pod for the network's
// resourceName (kubelet PodResources API, one call per resource). A VF
// that is not one, has no PF netdev here, or whose netdev is in another
// pod is an error before anything is allocated.
func (p *plugin) assignVFs(nics []plan.NIC) error {
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
				ns, name := string(p.args.K8S_POD_NAMESPACE), string(p.args.K8S_POD_NAME)
				if ns == "" || name == "" {
					return fmt.Errorf("%s: resource %s: CNI_ARGS name no pod to ask the kubelet about", nics[i].IfName, sr.ResourceName)
				}
				devs, err := podres.Devices(context.Background(), p.node.PodResourcesSocket, ns, name, sr.ResourceName, p.node.APITimeout)
				if err != nil {
					return fmt.Errorf("%s: resource %s: %w", nics[i].IfName, sr.ResourceName, err)
				}
				left = devs
				p.phase("podresources")
			}
			for len(left) > 0 && used[left[0]] != "" {
				left = left[1:]
			}
			if len(left) == 0 {
				return fmt.Errorf("%s: the kubelet assigned pod %s no (more) %s device", nics[i].IfName, p.args.K8S_POD_NAME, sr.ResourceName)
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
