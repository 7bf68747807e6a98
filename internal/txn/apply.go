package txn

import (
	"errors"
	"fmt"
	"time"

	"github.com/spinneret-cni/spinneret/internal/testhook"
)

// Apply runs ops in order. The whole plan is recorded in the journal, in
// one fsync'd write, before the first step runs: every step is on disk
// before it runs, and an ADD costs one journal write instead of one per
// step. (Op's contract makes this safe: an Undo succeeds, and touches
// nothing, for a step that never ran.) If a step fails, every recorded
// step but the ledger's is undone in reverse and a *StepError is
// returned; the caller then finishes with Rollback (which releases the
// ledger) and removes the journal if nothing is left.
func Apply(env *Env, j *Journal, ops []Op) error {
	fail := func(i int, err error) error {
		return &StepError{Index: i, Total: len(ops), Op: ops[i], Err: err, UndoErr: RollbackPlan(env, j)}
	}
	if len(ops) == 0 {
		return nil
	}
	if err := j.Append(Steps(ops)...); err != nil {
		return fail(0, err)
	}
	for i, op := range ops {
		err := testhook.Step(i)
		if err == nil {
			start := time.Now()
			err = op.Do(env)
			env.logStep("do", i, op, start, err)
		}
		if err != nil {
			return fail(i, err)
		}
	}
	if err := testhook.Step(len(ops)); err != nil {
		return fail(len(ops)-1, err)
	}
	return nil
}

// Rollback undoes the journal's steps in reverse order. Steps whose objects
// are gone count as undone, so a retry only repeats what is left; the error
// lists every step that could not be undone. Only those stay in j.Steps. A
// step whose Undo gives up (ErrAbandoned) is dropped and listed in
// env.Abandoned. The ledger's entries (Held) are released last, and only
// when every other step is undone: while a step is left, so is every
// entry, and no address of the pod is freed.
//
// Two kinds of steps are not undone one by one. A step that lives on an
// object a journaled step created (an address on the pod's link) goes with
// that object's deletion. And objects that a Sweeper step (recorded first)
// removes all at once, the pod's links, wait for it: deleting links one by
// one costs a kernel RCU grace period each (~15 ms), deleting them together
// costs one. If a deletion fails, what waited for it stays in the journal.
//
// A step this binary cannot read (Foreign: a newer binary's) is kept, with
// what lives on it and the whole ledger, and listed in env.Foreign; it is
// no error: Rollback returns nil with j.Steps not empty, and the caller
// keeps the journal (Kept) for a binary that can undo the rest.
func Rollback(env *Env, j *Journal) error { return rollback(env, j, false) }

// RollbackPlan undoes the journal's steps as Rollback does, but keeps the
// ledger as it is: for an ADD repeated without DEL, which keeps the
// addresses of the one before, and for a failed step, whose addresses the
// caller may quarantine before releasing the rest.
func RollbackPlan(env *Env, j *Journal) error { return rollback(env, j, true) }

func rollback(env *Env, j *Journal, keepLedger bool) error {
	if j.EarlierBoot() {
		return rollbackEarlierBoot(env, j, keepLedger)
	}
	created := map[string]bool{}
	var sweepers []Sweeper
	for _, s := range j.Steps {
		if c, ok := s.Op.(Creator); ok {
			for _, k := range c.Creates() {
				created[k] = true
			}
		}
		if sw, ok := s.Op.(Sweeper); ok {
			sweepers = append(sweepers, sw)
		}
	}
	swept := func(op Op) bool {
		c, ok := op.(Creator)
		if !ok {
			return false
		}
		for _, k := range c.Creates() {
			for _, sw := range sweepers {
				if sw.Sweeps(k) {
					return true
				}
			}
		}
		return false
	}
	var errs []error
	var left, waiting []Step
	deferred := map[string][]Step{}
	depsOf := func(op Op) []Step {
		var deps []Step
		if c, ok := op.(Creator); ok {
			for _, k := range c.Creates() {
				deps = append(deps, deferred[k]...)
				delete(deferred, k)
			}
		}
		return deps
	}
	var ledger []Step
	for i := len(j.Steps) - 1; i >= 0; i-- {
		step := j.Steps[i]
		if _, ok := step.Op.(Held); ok {
			ledger = append([]Step{step}, ledger...)
			continue
		}
		if d, ok := step.Op.(Dependent); ok && created[d.DependsOn()] {
			deferred[d.DependsOn()] = append([]Step{step}, deferred[d.DependsOn()]...)
			continue
		}
		if swept(step.Op) {
			waiting = append(append([]Step{step}, depsOf(step.Op)...), waiting...)
			continue
		}
		start := time.Now()
		err := step.Op.Undo(env)
		env.logStep("undo", i, step.Op, start, err)
		deps := depsOf(step.Op)
		if _, ok := step.Op.(Sweeper); ok {
			if errors.Is(err, ErrGone) {
				// the namespace is gone, but an object reachable from
				// elsewhere (a veth's node end, until the kernel's
				// asynchronous namespace cleanup) must still go now
				for _, w := range waiting {
					if _, creator := w.Op.(Creator); !creator {
						continue
					}
					switch uerr := w.Op.Undo(env); {
					case errors.Is(uerr, ErrForeign):
						env.Foreign = append(env.Foreign, w.Op.String())
						left = append(left, w)
					case uerr != nil && !errors.Is(uerr, ErrGone):
						errs = append(errs, fmt.Errorf("undo (%s): %w", w.Op, uerr))
						left = append(left, w)
					}
				}
			}
			deps = append(deps, waiting...)
			waiting = nil
		}
		switch {
		case errors.Is(err, ErrAbandoned):
			env.Abandoned = append(env.Abandoned, fmt.Errorf("undo step %d (%s): %w", i+1, step.Op, err))
		case errors.Is(err, ErrForeign):
			env.Foreign = append([]string{fmt.Sprintf("step %d (%s)", i+1, step.Op)}, env.Foreign...)
			left = append(append([]Step{step}, deps...), left...)
		case err != nil && !errors.Is(err, ErrGone):
			errs = append(errs, fmt.Errorf("undo step %d (%s): %w", i+1, step.Op, err))
			left = append(append([]Step{step}, deps...), left...)
		}
	}
	if keepLedger || len(errs) > 0 || len(left) > 0 || len(waiting) > 0 || len(deferred) > 0 {
		j.Steps = append(ledger, left...)
		return errors.Join(errs...)
	}
	return release(env, j, ledger)
}

// rollbackEarlierBoot rolls back a journal of an earlier boot. Every kernel
// object its steps made went with that boot: a link, route, rule or VF
// setting now bearing the same names was made in this boot, by another
// attachment or the admin, and is left alone (env.LeftAlone lists the
// steps). What the journal holds on disk is released: its ledger (the
// addresses), and each Durable step's state.
func rollbackEarlierBoot(env *Env, j *Journal, keepLedger bool) error {
	var errs []error
	var ledger, left []Step
	for i := len(j.Steps) - 1; i >= 0; i-- {
		step := j.Steps[i]
		if _, ok := step.Op.(Held); ok {
			ledger = append([]Step{step}, ledger...)
			continue
		}
		if f, ok := step.Op.(*Foreign); ok {
			if f.Durable() {
				// its state on disk outlived the boot
				env.Foreign = append([]string{fmt.Sprintf("step %d (%s)", i+1, step.Op)}, env.Foreign...)
				left = append([]Step{step}, left...)
				continue
			}
			env.LeftAlone = append([]string{fmt.Sprintf("step %d (%s)", i+1, step.Op)}, env.LeftAlone...)
			continue
		}
		d, ok := step.Op.(Durable)
		if !ok {
			env.LeftAlone = append([]string{fmt.Sprintf("step %d (%s)", i+1, step.Op)}, env.LeftAlone...)
			continue
		}
		start := time.Now()
		err := d.UndoEarlierBoot(env)
		env.logStep("undo (earlier boot)", i, step.Op, start, err)
		if err != nil && !errors.Is(err, ErrGone) {
			errs = append(errs, fmt.Errorf("undo step %d (%s): %w", i+1, step.Op, err))
			left = append([]Step{step}, left...)
		}
	}
	if keepLedger || len(errs) > 0 || len(left) > 0 {
		j.Steps = append(ledger, left...)
		return errors.Join(errs...)
	}
	return release(env, j, ledger)
}

// Kept reports whether a Rollback that returned nil left steps: a newer
// binary's (env.Foreign lists them), kept in the journal for it.
func (j *Journal) Kept() bool { return len(j.Steps) > 0 }

// release releases a journal's ledger, last entry first, once its plan is
// undone; what could not be released stays in the journal.
func release(env *Env, j *Journal, ledger []Step) error {
	var errs []error
	var left []Step
	for i := len(ledger) - 1; i >= 0; i-- {
		step := ledger[i]
		start := time.Now()
		err := step.Op.Undo(env)
		env.logStep("release", i, step.Op, start, err)
		switch {
		case errors.Is(err, ErrAbandoned):
			env.Abandoned = append(env.Abandoned, fmt.Errorf("release (%s): %w", step.Op, err))
		case errors.Is(err, ErrForeign):
			env.Foreign = append([]string{step.Op.String()}, env.Foreign...)
			left = append([]Step{step}, left...)
		case err != nil && !errors.Is(err, ErrGone):
			errs = append(errs, fmt.Errorf("release (%s): %w", step.Op, err))
			left = append([]Step{step}, left...)
		}
	}
	j.Steps = left
	return errors.Join(errs...)
}

// Check compares every step of a committed journal with the kernel and
// returns all drift found, one error per step.
func Check(env *Env, j *Journal) error {
	var errs []error
	for _, s := range j.Steps {
		if err := s.Op.Check(env); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
