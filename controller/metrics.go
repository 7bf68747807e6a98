package controller

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// metrics are the controller's Prometheus metrics, on a registry of its
// own (with the Go and process collectors), served at /metrics.
type metrics struct {
	reg                                       *prometheus.Registry
	poolTotal, poolAllocated, poolQuarantined *prometheus.GaugeVec
	allocCreated, allocReleased               *prometheus.CounterVec
	gcReleases                                *prometheus.CounterVec
	cidrPublishes                             prometheus.Counter
	cidrPublished, leader                     prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	pool := []string{"pool"}
	m.poolTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spinneret_pool_addresses", Help: "Addresses an IPPool can hand out (its ranges without excluded, gateway and reserved addresses)."}, pool)
	m.poolAllocated = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spinneret_pool_allocated", Help: "IPAllocations of an IPPool, quarantined ones included."}, pool)
	m.poolQuarantined = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spinneret_pool_quarantined", Help: "Addresses of an IPPool in quarantine (found in use by another host)."}, pool)
	m.allocCreated = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spinneret_allocations_created_total", Help: "IPAllocations created (by the nodes' plugins) while this replica led."}, pool)
	m.allocReleased = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spinneret_allocations_released_total", Help: "IPAllocations deleted (by DEL or by this controller's GC) while this replica led."}, pool)
	m.gcReleases = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "spinneret_gc_releases_total", Help: "IPAllocations this controller's GC deleted, by reason."}, []string{"reason"})
	m.cidrPublishes = prometheus.NewCounter(prometheus.CounterOpts{Name: "spinneret_cidr_publishes_total", Help: "Changes of the published cluster CIDRs (ConfigMap spinneret-cluster-network)."})
	m.cidrPublished = prometheus.NewGauge(prometheus.GaugeOpts{Name: "spinneret_cidr_publish_timestamp_seconds", Help: "When the cluster CIDRs were last found and published unchanged or changed (Unix time)."})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{Name: "spinneret_controller_leader", Help: "1 while this replica holds the Lease."})
	m.reg.MustRegister(m.poolTotal, m.poolAllocated, m.poolQuarantined, m.allocCreated, m.allocReleased, m.gcReleases,
		m.cidrPublishes, m.cidrPublished, m.leader,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serve serves /metrics on addr until ctx ends.
func (m *metrics) serve(ctx context.Context, addr string, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	return nil
}

// gcReason is a GC verdict as a label: its words up to any name or detail.
func gcReason(why string) string {
	for _, cut := range []string{" (", " on NotReady"} {
		why, _, _ = strings.Cut(why, cut)
	}
	return strings.ReplaceAll(why, " ", "_")
}

// poolOf is an allocation object's pool.
func poolOf(obj any) string {
	if d, ok := obj.(interface{ GetLabels() map[string]string }); ok {
		if p := d.GetLabels()["spinneret.io/pool"]; p != "" {
			return p
		}
	}
	if u, ok := obj.(*unstructured.Unstructured); ok {
		p, _, _ := unstructured.NestedString(u.Object, "spec", "pool")
		return p
	}
	return ""
}
