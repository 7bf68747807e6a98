package cni

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// cmdGC removes every journal and address allocation of this network whose
// attachment is not in cni.dev/valid-attachments, then runs the GC of
// each delegate network's CNI. An attachment whose lock is held (an ADD or
// DEL in flight) is left for the next GC.
func cmdGC(args *skel.CmdArgs) (err error) {
	p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	defer func(t time.Time) { p.done("GC", args, t, err) }(time.Now())
	valid := map[string]bool{}
	for _, a := range p.cfg.ValidAttachments {
		valid[txn.Key(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	removed := 0
	journals, err := txn.ListJournals(p.node.StateDir, p.cfg.Name)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	for _, j := range journals {
		if valid[txn.Key(j.ContainerID, j.IfName)] {
			continue
		}
		err := p.locked(j.ContainerID, j.IfName, func() error {
			j, err := txn.LoadJournal(j.Path()) // re-read under the lock
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			return p.teardown(j, nil)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("attachment %s/%s: %w", j.ContainerID, j.IfName, err))
		} else {
			removed++
		}
	}
	owners, err := p.store.Owners()
	if err != nil {
		errs = append(errs, err)
	}
	for _, o := range owners {
		if o.Network != p.cfg.Name || valid[txn.Key(o.ContainerID, o.IfName)] {
			continue
		}
		err := p.locked(o.ContainerID, o.IfName, func() error {
			if _, err := os.Stat(p.journalPath(o.ContainerID, o.IfName)); err == nil {
				// its journal is left (an undo that failed, for the next
				// GC; a newer binary's steps): its ledger holds these
				// addresses, freed only once its links are gone
				return nil
			}
			return p.store.Release(o.ContainerID, o.IfName)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("release %s/%s: %w", o.ContainerID, o.IfName, err))
		} else {
			removed++
		}
	}
	if err := p.gcDelegates(args.Path); err != nil {
		errs = append(errs, err)
	}
	p.log.Info("gc", "network", p.cfg.Name, "valid", len(valid), "removed", removed)
	p.sum = summary{removed: removed}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrTryAgainLater, "GC: "+err.Error(), "")
	}
	return nil
}

// locked runs fn under the attachment's lock if it is free; a held lock
// means an ADD or DEL in flight, which GC leaves alone.
func (p *plugin) locked(containerID, ifname string, fn func() error) error {
	lk, err := p.attachmentLock(containerID, ifname, false)
	if errors.Is(err, fileutil.ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lk.Unlock()
	return fn()
}
