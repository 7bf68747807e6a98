package controller

import (
	"context"
	"encoding/json"
	"math/big"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spinneret-cni/spinneret/conf"
)

// poolStatus keeps each IPPool's status: how many addresses are allocated
// and how many it can hand out (its ranges without excluded, gateway and
// reserved addresses).
func (c *ctrl) poolStatus(ctx context.Context, w *world) {
	count, quarantined := map[string]int64{}, map[string]int64{}
	now := time.Now()
	for _, a := range w.allocations() {
		count[a.Spec.Pool]++
		if q := a.Spec.QuarantinedUntil; q != nil && now.Before(q.Time) {
			quarantined[a.Spec.Pool]++
		}
	}
	reserved := c.reserved(ctx)
	objs, _ := w.pools.List(labels.Everything())
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		spec, _ := json.Marshal(u.Object["spec"])
		total := "0"
		if p, err := conf.PoolFromSpec(u.GetName(), spec); err == nil {
			size := poolSize(p, reserved)
			total = size.String()
			f, _ := new(big.Float).SetInt(size).Float64()
			c.m.poolTotal.WithLabelValues(u.GetName()).Set(f)
		}
		c.m.poolAllocated.WithLabelValues(u.GetName()).Set(float64(count[u.GetName()]))
		c.m.poolQuarantined.WithLabelValues(u.GetName()).Set(float64(quarantined[u.GetName()]))
		st, _ := u.Object["status"].(map[string]any)
		gotAlloc, _ := st["allocated"].(int64)
		gotTotal, _ := st["total"].(string)
		if gotAlloc == count[u.GetName()] && gotTotal == total {
			continue
		}
		upd := u.DeepCopy()
		upd.Object["status"] = map[string]any{"allocated": count[u.GetName()], "total": total}
		if _, err := c.dyn.Resource(poolGVR).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
			c.log.Warn("pool status", "pool", u.GetName(), "err", err)
		}
	}
}

// reserved lists the ReservedIPs' addresses.
func (c *ctrl) reserved(ctx context.Context) []netip.Prefix {
	l, err := c.dyn.Resource(reservedGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		c.log.Warn("list ReservedIPs", "err", err)
		return nil
	}
	var out []netip.Prefix
	for _, r := range l.Items {
		addrs, _, _ := unstructured.NestedStringSlice(r.Object, "spec", "addresses")
		for _, s := range addrs {
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p.Masked())
			} else if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	return out
}

// poolSize counts the addresses a pool can hand out: exactly for pools up
// to 2^20 addresses; for larger ones (IPv6), the ranges' size without the
// excluded and reserved blocks (overlaps between those counted twice).
func poolSize(p *conf.Pool, reserved []netip.Prefix) *big.Int {
	total := new(big.Int)
	for _, r := range p.Ranges {
		total.Add(total, rangeLen(r.Start, r.End))
	}
	if total.Cmp(big.NewInt(1<<20)) <= 0 {
		n := int64(0)
		for _, r := range p.Ranges {
			for a := r.Start; a.IsValid() && !r.End.Less(a); a = a.Next() {
				if !p.Excluded(a) && !inAny(reserved, a) {
					n++
				}
			}
		}
		return big.NewInt(n)
	}
	for _, x := range append(append([]netip.Prefix{}, p.Exclude...), reserved...) {
		for _, r := range p.Ranges {
			lo, hi := x.Addr(), conf.LastAddr(x)
			if lo.Less(r.Start) {
				lo = r.Start
			}
			if r.End.Less(hi) {
				hi = r.End
			}
			if !hi.Less(lo) {
				total.Sub(total, rangeLen(lo, hi))
			}
		}
	}
	return total
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// rangeLen is end - start + 1.
func rangeLen(start, end netip.Addr) *big.Int {
	s, e := start.As16(), end.As16()
	n := new(big.Int).Sub(new(big.Int).SetBytes(e[:]), new(big.Int).SetBytes(s[:]))
	return n.Add(n, big.NewInt(1))
}
