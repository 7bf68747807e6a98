package controller

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/spinneret-cni/spinneret/ipam/apis/v1alpha1"
)

// world is what the informers hold.
type world struct {
	pods   corelisters.PodLister
	nodes  corelisters.NodeLister
	sts    appslisters.StatefulSetLister
	allocs cache.GenericLister
	pools  cache.GenericLister
}

// allocations converts the cached IPAllocations.
func (w *world) allocations() []*v1alpha1.IPAllocation {
	objs, _ := w.allocs.List(labels.Everything())
	out := make([]*v1alpha1.IPAllocation, 0, len(objs))
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		var a v1alpha1.IPAllocation
		if runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &a) == nil {
			out = append(out, &a)
		}
	}
	return out
}

// stale says why an allocation's pod no longer holds it ("" if it does),
// given the pod of its namespace and name (nil if none). wake is when a
// pod terminating on a NotReady node will become collectable.
func (c *ctrl) stale(w *world, a *v1alpha1.IPAllocation, pod *corev1.Pod, now time.Time) (why string, wake time.Time) {
	s := a.Spec
	if s.QuarantinedUntil != nil {
		if now.Before(s.QuarantinedUntil.Time) {
			return "", s.QuarantinedUntil.Time
		}
		return "quarantine over", time.Time{}
	}
	switch {
	case pod == nil:
		why = "pod gone"
	case string(pod.UID) != s.Pod.UID:
		why = "pod re-created (another UID)"
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		why = "pod finished (" + string(pod.Status.Phase) + ")"
	case pod.DeletionTimestamp != nil && !c.nodeReady(w, pod.Spec.NodeName):
		deadline := pod.DeletionTimestamp.Add(c.cfg.TerminatingDelay)
		if now.Before(deadline) {
			return "", deadline
		}
		why = "pod terminating past its grace period on NotReady node " + pod.Spec.NodeName
	default:
		return "", time.Time{}
	}
	if s.OwnerKind == "StatefulSet" && c.validOrdinal(w, s.Pod.Namespace, s.Pod.Name) {
		// its successor of the same name takes the address over
		return "", time.Time{}
	}
	return why, time.Time{}
}

func (c *ctrl) nodeReady(w *world, name string) bool {
	if name == "" {
		return true // not scheduled: nothing to wait for on a node
	}
	n, err := w.nodes.Get(name)
	if err != nil {
		return false // a node that is gone is not coming back
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// validOrdinal reports whether pod name <sts>-<ordinal> is still a replica
// of its StatefulSet: the set exists and the ordinal is in
// [start, start+replicas).
func (c *ctrl) validOrdinal(w *world, ns, pod string) bool {
	i := strings.LastIndexByte(pod, '-')
	if i <= 0 {
		return false
	}
	ord, err := strconv.Atoi(pod[i+1:])
	if err != nil || ord < 0 {
		return false
	}
	sts, err := w.sts.StatefulSets(ns).Get(pod[:i])
	if err != nil {
		return false
	}
	replicas, start := 1, 0
	if sts.Spec.Replicas != nil {
		replicas = int(*sts.Spec.Replicas)
	}
	if sts.Spec.Ordinals != nil {
		start = int(sts.Spec.Ordinals.Start)
	}
	return sts.DeletionTimestamp == nil && ord >= start && ord < start+replicas
}

// gc deletes the allocations whose pod no longer holds them. A verdict
// from the caches is confirmed with a live read of the pod (an informer
// may lag behind a pod just created), and the delete is conditional on the
// allocation's resourceVersion (a take-over since wins). It returns the
// earliest time a pass should look again.
func (c *ctrl) gc(ctx context.Context, w *world) (wake time.Time) {
	now := time.Now()
	for _, a := range w.allocations() {
		var pod *corev1.Pod
		if p, err := w.pods.Pods(a.Spec.Pod.Namespace).Get(a.Spec.Pod.Name); err == nil {
			pod = p
		}
		why, next := c.stale(w, a, pod, now)
		if !next.IsZero() && (wake.IsZero() || next.Before(wake)) {
			wake = next
		}
		if why == "" {
			continue
		}
		if a.Spec.QuarantinedUntil == nil {
			live, err := c.cs.CoreV1().Pods(a.Spec.Pod.Namespace).Get(ctx, a.Spec.Pod.Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				live = nil
			case err != nil:
				c.log.Warn("gc: read pod", "pod", a.Spec.Pod.Namespace+"/"+a.Spec.Pod.Name, "err", err)
				continue
			}
			if why, _ = c.stale(w, a, live, now); why == "" {
				continue
			}
		}
		rv := a.ResourceVersion
		err := c.dyn.Resource(allocGVR).Delete(ctx, a.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		switch {
		case err == nil:
			c.m.gcReleases.WithLabelValues(gcReason(why)).Inc()
			c.log.Info("released", "allocation", a.Name, "address", a.Spec.Address, "pod", a.Spec.Pod.Namespace+"/"+a.Spec.Pod.Name, "uid", a.Spec.Pod.UID, "reason", why)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		case errors.Is(err, context.Canceled):
			return wake
		default:
			c.log.Warn("gc: delete", "allocation", a.Name, "err", err)
		}
	}
	return wake
}
