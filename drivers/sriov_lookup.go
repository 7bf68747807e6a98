package drivers

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/Mellanox/sriovnet"
	utilfs "github.com/Mellanox/sriovnet/pkg/utils/filesystem"
)

// VF is an SR-IOV virtual function as the node's sysfs shows it.
type VF struct {
	PCI    string // the VF's PCI address
	PFPCI  string
	PF     string // the PF's netdev
	Index  int    // the VF's index on its PF
	Driver string // igbvf, mlx5_core, vfio-pci, ...
	// Netdev is the VF's netdev in the node's namespace; "" for a VF bound
	// to a userspace driver (vfio-pci: DPDK), which has none.
	Netdev string
}

// Userspace reports whether the VF is bound to a userspace (DPDK) driver.
func (v *VF) Userspace() bool {
	switch v.Driver {
	case "vfio-pci", "uio_pci_generic", "igb_uio":
		return true
	}
	return false
}

// LookupVF finds a VF's PF, index, driver and netdev with sriovnet (the
// PCI sysfs, read through sriovnet's filesystem, which its fake replaces in
// unit tests). A VF with a kernel driver but no netdev in the node's
// namespace has its netdev in some pod: it is refused.
func LookupVF(pci string) (*VF, error) {
	v := &VF{PCI: pci}
	if _, err := utilfs.Fs.Stat(filepath.Join(sriovnet.PciSysDir, pci)); err != nil {
		return nil, fmt.Errorf("sriov: no PCI device %s", pci)
	}
	var err error
	if v.PFPCI, err = sriovnet.GetPfPciFromVfPci(pci); err != nil {
		return nil, fmt.Errorf("sriov: %s is not a VF: %w", pci, err)
	}
	pfs, err := sriovnet.GetNetDevicesFromPci(v.PFPCI)
	if err != nil || len(pfs) == 0 {
		return nil, fmt.Errorf("sriov: VF %s: its PF %s has no netdev on this node", pci, v.PFPCI)
	}
	v.PF = pfs[0]
	if v.Index, err = vfIndex(v.PFPCI, pci); err != nil {
		return nil, fmt.Errorf("sriov: VF %s: %w", pci, err)
	}
	if drv, err := utilfs.Fs.Readlink(filepath.Join(sriovnet.PciSysDir, pci, "driver")); err == nil {
		v.Driver = filepath.Base(drv)
	}
	if v.Driver == "" {
		return nil, fmt.Errorf("sriov: VF %s (%s vf %d) is bound to no driver", pci, v.PF, v.Index)
	}
	if v.Userspace() {
		return v, nil
	}
	nds, err := sriovnet.GetNetDevicesFromPci(pci)
	if err != nil || len(nds) == 0 {
		return nil, fmt.Errorf("sriov: VF %s (%s vf %d) has no netdev in the node's namespace: it is in use by a pod", pci, v.PF, v.Index)
	}
	v.Netdev = nds[0]
	return v, nil
}

// vfIndex is the N of the PF's virtfnN link to the VF.
func vfIndex(pfPCI, vfPCI string) (int, error) {
	dir := filepath.Join(sriovnet.PciSysDir, pfPCI)
	ents, err := utilfs.Fs.ReadDir(dir)
	if err != nil {
		return -1, err
	}
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "virtfn")
		if !ok {
			continue
		}
		target, err := utilfs.Fs.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && filepath.Base(target) == vfPCI {
			return strconv.Atoi(n)
		}
	}
	return -1, fmt.Errorf("PF %s has no virtfn link to it", pfPCI)
}
