package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/spinneret-cni/spinneret/internal/netlab"
	"github.com/spinneret-cni/spinneret/request"
)

// overlayBenchPods is how many pods BenchmarkOverlay attaches per world.
const overlayBenchPods = 100

// BenchmarkOverlay: a pod with eth0 from the cluster's CNI (the reference
// ptp plugin with host-local, a stand-in for Calico) and two macvlan NICs,
// IPv4, attached through spinneret (one process: the delegate run through
// libcni, net1 and net2 its own, coordinator overlay mode) and through the
// Multus-style chain of the reference plugins (three conflists run by the
// runtime one after another: ptp for eth0, macvlan + host-local for net1
// and for net2; no coordinator: no policy routing, no node routes). Each
// world has a node of its own; every ADD and DEL of one is followed by
// the same of the other, so both see the machine at the same moment. It
// reports p50 and p90 of ADD and DEL and the chain/spinneret ratio, and
// the delegate's share: its conflist's ADD alone in the chain, and the
// delegate phase of spinneret's own log. Run with `make bench`.
func BenchmarkOverlay(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchOverlay(b)
	}
}

type overlayWorld struct {
	e     *env
	lists []*libcni.NetworkConfigList // one (spinneret's), or the chain's three
	ifs   []string                    // the chain's CNI_IFNAMEs
	pods  []*netlab.NS
	eth0  []time.Duration // the chain's eth0 ADDs (the delegate's conflist alone)
}

func newOverlayWorld(b *testing.B, chain bool) *overlayWorld {
	topo, err := netlab.NewTopology(netlab.OwnedPrefix("spnbench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { topo.Close() })
	for len(topo.Nets) < 2 {
		if _, err := topo.AddNet(); err != nil {
			b.Fatal(err)
		}
	}
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := topo.Node.Sysctl(k, "1"); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	bin := prodBinDir
	e := &env{topo: topo, dir: dir, ctx: context.Background(), cni: libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(dir, "cache"), nil)}
	writeNodeConf(b, dir, "info")
	ptp := filepath.Join(dir, "10-ptp.conflist")
	if err := os.WriteFile(ptp, []byte(ptpConflistFam(dir, v4)), 0o600); err != nil {
		b.Fatal(err)
	}
	parse := func(s string) *libcni.NetworkConfigList {
		l, err := libcni.NetworkConfFromBytes([]byte(s))
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	w := &overlayWorld{e: e, pods: make([]*netlab.NS, overlayBenchPods)}
	nets := topo.Nets[:2]
	if chain {
		b, _ := os.ReadFile(ptp)
		w.lists, w.ifs = []*libcni.NetworkConfigList{parse(string(b))}, []string{"eth0", "net1", "net2"}
		for i, n := range nets {
			w.lists = append(w.lists, parse(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"macvlan","master":%q,"mode":"bridge",
				"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"%s","rangeStart":"%s","rangeEnd":"%s","gateway":"%s"}]]}}]}`,
				colours[i], n.Uplink, filepath.Join(dir, "host-local"), n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 250), n.GW4)))
		}
	} else {
		var networks []string
		for i, n := range nets {
			networks = append(networks, fmt.Sprintf(`{"name":%q,"master":%q,"ipam":{"pools":[{"name":"%s-v4","subnet":"%s","ranges":[{"start":"%s","end":"%s"}],"gateway":"%s"}]}}`,
				colours[i], n.Uplink, colours[i], n.Subnet4, nth(n.Subnet4, 10), nth(n.Subnet4, 250), n.GW4))
		}
		w.lists = []*libcni.NetworkConfigList{parse(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench","plugins":[{"type":"spinneret","nodeConf":"%s/node.yaml",
			"capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":true},
			"coordinator":{"serviceCIDR":["%s"],"podCIDR":["%s"]},
			"networks":[{"name":"pods","delegate":{"conflist":%q}},%s]}]}`, dir, netlab.ServiceCIDR4, podCIDR4, ptp, strings.Join(networks, ",")))}
	}
	for i := range w.pods {
		if w.pods[i], err = topo.NewPod(); err != nil {
			b.Fatal(err)
		}
	}
	return w
}

// call runs ADD (add) or DEL of pod i: spinneret's one call, or the
// chain's three (DEL in reverse, as a runtime undoes them).
func (w *overlayWorld) call(b *testing.B, i int, add bool) time.Duration {
	start := time.Now()
	err := w.e.topo.Node.Do(func() error {
		if len(w.lists) == 1 {
			rt := podRT(fmt.Sprintf("ovl-%d", i), w.pods[i], map[string]string{request.AnnotNetworks: "red, blue"})
			if add {
				_, err := w.e.cni.AddNetworkList(w.e.ctx, w.lists[0], rt)
				return err
			}
			return w.e.cni.DelNetworkList(w.e.ctx, w.lists[0], rt)
		}
		for k := range w.lists {
			if !add {
				k = len(w.lists) - 1 - k
			}
			rt := podRT(fmt.Sprintf("ovl-%d", i), w.pods[i], nil)
			rt.IfName = w.ifs[k]
			var err error
			if add {
				t := time.Now()
				_, err = w.e.cni.AddNetworkList(w.e.ctx, w.lists[k], rt)
				if k == 0 {
					w.eth0 = append(w.eth0, time.Since(t))
				}
			} else {
				err = w.e.cni.DelNetworkList(w.e.ctx, w.lists[k], rt)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", w.lists[k].Name, err)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatalf("pod %d (add %v): %v", i, add, err)
	}
	return time.Since(start)
}

func benchOverlay(b *testing.B) {
	worlds := []*overlayWorld{newOverlayWorld(b, false), newOverlayWorld(b, true)}
	names := []string{"spinneret", "chain"}
	b.ResetTimer()
	adds := [2][]time.Duration{}
	dels := [2][]time.Duration{}
	for i := range overlayBenchPods {
		for k, w := range worlds {
			adds[k] = append(adds[k], w.call(b, i, true))
		}
	}
	for i := range overlayBenchPods {
		for k, w := range worlds {
			dels[k] = append(dels[k], w.call(b, i, false))
		}
	}
	b.StopTimer()
	var p50 [2][2]time.Duration
	for k, name := range names {
		a, d := percentiles(adds[k]), percentiles(dels[k])
		p50[k] = [2]time.Duration{a[0], d[0]}
		b.ReportMetric(millis(a[0]), name+"-add-p50-ms")
		b.ReportMetric(millis(a[1]), name+"-add-p90-ms")
		b.ReportMetric(millis(d[0]), name+"-del-p50-ms")
		b.ReportMetric(millis(d[1]), name+"-del-p90-ms")
	}
	// the plugin's own account of its ADDs: the whole call, and the
	// delegate's part (its conflist read, journaled, run: two process
	// starts of the reference plugins)
	phases := pluginPhases(b, filepath.Join(worlds[0].e.dir, "spinneret.log"), "ADD")
	for _, name := range []string{"ms", "delegate-ms", "apply-ms"} {
		if len(phases[name]) != overlayBenchPods {
			b.Fatalf("%d ADD log lines with %s, want %d", len(phases[name]), name, overlayBenchPods)
		}
		b.ReportMetric(millis(percentiles(phases[name])[0]), "spinneret-plugin-add-"+strings.TrimSuffix(name, "-ms")+"-p50-ms")
	}
	b.ReportMetric(millis(percentiles(worlds[1].eth0)[0]), "chain-eth0-add-p50-ms")
	b.ReportMetric(float64(p50[1][0])/float64(p50[0][0]), "add-chain/spinneret")
	b.ReportMetric(float64(p50[1][1])/float64(p50[0][1]), "del-chain/spinneret")
	for k, w := range worlds {
		if h := hostLocalHeld(filepath.Join(w.e.dir, "host-local"), "k8s-pod-network"); len(h) != 0 {
			b.Errorf("%s: after DEL the delegate holds %v", names[k], h)
		}
	}
}
