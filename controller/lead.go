package controller

import (
	"context"
	"time"

	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// lead is the work of the leader: informers on pods, nodes, StatefulSets,
// IPAllocations and IPPools; a GC and pool-status pass shortly after any
// of them changes, and a full pass (with CIDR discovery) every interval.
func (c *ctrl) lead(ctx context.Context) {
	f := informers.NewSharedInformerFactory(c.cs, 0)
	df := dynamicinformer.NewDynamicSharedInformerFactory(c.dyn, 0)
	w := &world{
		pods:   f.Core().V1().Pods().Lister(),
		nodes:  f.Core().V1().Nodes().Lister(),
		sts:    f.Apps().V1().StatefulSets().Lister(),
		allocs: df.ForResource(allocGVR).Lister(),
		pools:  df.ForResource(poolGVR).Lister(),
	}
	kick := make(chan struct{}, 1)
	poke := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { nudge(kick) },
		UpdateFunc: func(any, any) { nudge(kick) },
		DeleteFunc: func(any) { nudge(kick) },
	}
	for _, inf := range []cache.SharedIndexInformer{
		f.Core().V1().Pods().Informer(), f.Core().V1().Nodes().Informer(), f.Apps().V1().StatefulSets().Informer(),
		df.ForResource(allocGVR).Informer(), df.ForResource(poolGVR).Informer(),
	} {
		inf.AddEventHandler(poke)
	}
	// allocations created and released while this replica leads (not
	// those it finds at the start)
	df.ForResource(allocGVR).Informer().AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if !initial {
				c.m.allocCreated.WithLabelValues(poolOf(obj)).Inc()
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			c.m.allocReleased.WithLabelValues(poolOf(obj)).Inc()
		},
	})
	f.Start(ctx.Done())
	df.Start(ctx.Done())
	defer f.Shutdown()
	defer df.Shutdown()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			c.log.Error("cache not synced", "type", typ)
			return
		}
	}
	for gvr, ok := range df.WaitForCacheSync(ctx.Done()) {
		if !ok {
			c.log.Error("cache not synced", "resource", gvr)
			return
		}
	}
	c.log.Info("caches synced")
	full := time.NewTicker(c.cfg.Interval)
	defer full.Stop()
	c.discover(ctx)
	for {
		wake := c.gc(ctx, w)
		c.poolStatus(ctx, w)
		var timer <-chan time.Time
		if !wake.IsZero() {
			// a pod terminating on a NotReady node becomes collectable when
			// its deadline passes, which no event announces
			timer = time.After(time.Until(wake))
		}
		select {
		case <-ctx.Done():
			return
		case <-full.C:
			c.discover(ctx)
		case <-timer:
		case <-kick:
			// let a burst of changes settle into one pass
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

func nudge(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
