package txn

import (
	"errors"
	"fmt"
	"time"
)

// hook lets test builds (tag testhooks) inject a failure or a SIGKILL at a
// step. It is nil in production builds.
var hook func(step int) error

// Apply runs ops in order. The whole plan is recorded in the journal, in
// one fsync'd write, before the first step runs: every step is on disk
// before it runs, and an ADD costs one journal write instead of one per
// step. (Op's contract makes this safe: an Undo succeeds, and touches
// nothing, for a step that never ran.) If a step fails, every recorded
// step is undone in reverse and a *StepError is returned; the caller then
// releases addresses and removes the journal if the rollback was complete.
func Apply(env *Env, j *Journal, ops []Op) error {
	fail := func(i int, err error) error {
		return &StepError{Index: i, Total: len(ops), Op: ops[i], Err: err, UndoErr: Rollback(env, j)}
	}
	if len(ops) == 0 {
		return nil
	}
	if err := j.Append(Steps(ops)...); err != nil {
		return fail(0, err)
	}
	for i, op := range ops {
		var err error
		if hook != nil {
			err = hook(i)
		}
		if err == nil {
			start := time.Now()
			err = op.Do(env)
			env.logStep("do", i, op, start, err)
		}
		if err != nil {
			return fail(i, err)
		}
	}
	if hook != nil {
		if err := hook(len(ops)); err != nil {
			return fail(len(ops)-1, err)
		}
	}
	return nil
}

// Rollback undoes the journal's steps in reverse order. Steps whose objects
// are gone count as undone, so a retry only repeats what is left; the error
// lists every step that could not be undone. Only those stay in j.Steps.
//
// A step that lives on an object that a journaled step created (an address on
// the pod's link) is not undone one by one: deleting the object removes it,
// and in one kernel operation instead of several (setting a link down before
// deleting it costs a second RCU grace period, ~10 ms). If deleting the
// object fails, its dependents stay in the journal with it.
func Rollback(env *Env, j *Journal) error {
	created := map[string]bool{}
	for _, s := range j.Steps {
		if c, ok := s.Op.(Creator); ok {
			for _, k := range c.Creates() {
				created[k] = true
			}
		}
	}
	var errs []error
	var left []Step
	deferred := map[string][]Step{}
	for i := len(j.Steps) - 1; i >= 0; i-- {
		step := j.Steps[i]
		if d, ok := step.Op.(Dependent); ok && created[d.DependsOn()] {
			deferred[d.DependsOn()] = append([]Step{step}, deferred[d.DependsOn()]...)
			continue
		}
		start := time.Now()
		err := step.Op.Undo(env)
		env.logStep("undo", i, step.Op, start, err)
		var deps []Step
		if c, ok := step.Op.(Creator); ok {
			for _, k := range c.Creates() {
				deps = append(deps, deferred[k]...)
				delete(deferred, k)
			}
		}
		if err != nil && !errors.Is(err, ErrGone) {
			errs = append(errs, fmt.Errorf("undo step %d (%s): %w", i+1, step.Op, err))
			left = append(append([]Step{step}, deps...), left...)
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
