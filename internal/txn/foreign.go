package txn

import (
	"errors"
	"fmt"
)

// ErrForeign is the Undo error of a Foreign step: this binary cannot
// undo it, and keeps it in the journal for one that can.
var ErrForeign = errors.New("written by a newer spinneret")

// Foreign is a journal step this binary cannot read: of a kind it does
// not know, or marked (stepJSON.Min) for a newer journal format than
// Format. A journal meets an older binary when a node is rolled back to
// an earlier release with pods running: that binary must undo what it
// understands, keep the rest, and never act on a step it would misread.
//
// A Foreign step takes part in Rollback through the hints its writer put
// beside it: it creates what its Creates hint names (so a step that lives
// on it waits for it), it lives on what its On hint names (so it goes, with
// nothing to do, when a step this binary knows deletes that object), and it
// is a ledger entry (ForeignHeld) when its Held hint names one. Its Undo
// fails with ErrForeign: Rollback keeps it, and, while it is kept, every
// ledger entry (an address is never freed while something of the pod may
// still carry it); the caller keeps the journal with what is left, for the
// binary that wrote it. It is written back exactly as it was read.
type Foreign struct {
	sj    stepJSON
	known bool // of a kind this binary knows, marked for a newer format
}

// ForeignHeld is a Foreign ledger entry.
type ForeignHeld struct{ *Foreign }

// HeldKey is the entry's key, as its writer named it.
func (f ForeignHeld) HeldKey() string { return f.sj.Held }

// foreignOp is what Foreign and ForeignHeld share.
type foreignOp interface{ foreign() *Foreign }

func (f *Foreign) foreign() *Foreign { return f }

func newForeign(sj stepJSON, known bool) Op {
	f := &Foreign{sj: sj, known: known}
	if sj.Held != "" {
		return ForeignHeld{f}
	}
	return f
}

// IsForeign reports whether op is a step this binary could not read.
func IsForeign(op Op) bool {
	_, ok := op.(foreignOp)
	return ok
}

// Kind is the kind its writer named.
func (f *Foreign) Kind() string { return f.sj.Kind }

// Do refuses: a plan is this binary's own.
func (f *Foreign) Do(*Env) error { return fmt.Errorf("%s: %w", f, ErrForeign) }

// Undo leaves the step for a binary that understands it.
func (f *Foreign) Undo(*Env) error { return fmt.Errorf("%s: %w", f, ErrForeign) }

// Check has nothing it could compare.
func (f *Foreign) Check(*Env) error { return nil }

// Creates is its writer's Creates hint.
func (f *Foreign) Creates() []string { return f.sj.Creates }

// DependsOn is its writer's On hint.
func (f *Foreign) DependsOn() string { return f.sj.On }

// Durable is its writer's Durable hint: it keeps state on disk, which a
// reboot does not clear.
func (f *Foreign) Durable() bool { return f.sj.Durable }

func (f *Foreign) String() string {
	if f.known {
		return fmt.Sprintf("%s step for journal format %d (this binary reads %d)", f.sj.Kind, f.sj.Min, Format)
	}
	return fmt.Sprintf("%s step (a kind this binary does not know)", f.sj.Kind)
}
