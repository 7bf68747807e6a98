package drivers

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Mellanox/sriovnet"
	utilfs "github.com/Mellanox/sriovnet/pkg/utils/filesystem"
)

// fakeSysfs builds a PCI sysfs tree in sriovnet's fake filesystem: a PF
// 0000:01:00.0 (netdev eth0) with VFs 0 (igbvf, netdev eth2), 1 (igbvf,
// netdev elsewhere), 2 (vfio-pci), 3 (no driver), and a device that is no
// VF.
func fakeSysfs(t *testing.T) {
	fs, cleanup, err := utilfs.NewFakeFs(filepath.Join(t.TempDir(), "fake"))
	if err != nil {
		t.Fatal(err)
	}
	old := utilfs.Fs
	utilfs.Fs = fs
	t.Cleanup(func() { utilfs.Fs = old; cleanup() })
	dev := func(p string) string { return filepath.Join(sriovnet.PciSysDir, p) }
	mk := func(p string) {
		if err := fs.MkdirAll(dev(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, p string) {
		if err := fs.Symlink(target, dev(p)); err != nil {
			t.Fatal(err)
		}
	}
	mk("0000:01:00.0/net/eth0")
	mk("0000:02:00.0/net/eth9")
	for i, vf := range []struct{ pci, driver, netdev string }{
		{"0000:01:10.0", "igbvf", "eth2"}, {"0000:01:10.2", "igbvf", ""}, {"0000:01:10.4", "vfio-pci", ""}, {"0000:01:10.6", "", ""},
	} {
		mk(vf.pci + "/net")
		if vf.netdev != "" {
			mk(vf.pci + "/net/" + vf.netdev)
		}
		// (absolute targets: the fake filesystem keeps links inside it)
		ln(dev("0000:01:00.0"), vf.pci+"/physfn")
		ln(dev(vf.pci), fmt.Sprintf("0000:01:00.0/virtfn%d", i))
		if vf.driver != "" {
			ln("/sys/bus/pci/drivers/"+vf.driver, vf.pci+"/driver")
		}
	}
}

func TestLookupVF(t *testing.T) {
	fakeSysfs(t)
	v, err := LookupVF("0000:01:10.0")
	if err != nil || *v != (VF{PCI: "0000:01:10.0", PFPCI: "0000:01:00.0", PF: "eth0", Index: 0, Driver: "igbvf", Netdev: "eth2"}) || v.Userspace() {
		t.Fatalf("VF 0: %+v %v", v, err)
	}
	v, err = LookupVF("0000:01:10.4")
	if err != nil || v.Index != 2 || v.Netdev != "" || !v.Userspace() {
		t.Fatalf("VF 2 (vfio-pci): %+v %v", v, err)
	}
	for pci, want := range map[string]string{
		"0000:01:10.2": "has no netdev in the node's namespace: it is in use by a pod",
		"0000:01:10.6": "is bound to no driver",
		"0000:02:00.0": "0000:02:00.0 is not a VF",
		"0000:09:00.0": "no PCI device 0000:09:00.0",
	} {
		if _, err := LookupVF(pci); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", pci, err, want)
		}
	}
}
