// Package txn is spinneret's transaction engine: an ADD is planned as an
// ordered list of operations (plain data, each with an idempotent inverse),
// then applied step by step with every step recorded in a per-attachment
// journal before it runs. On failure the recorded steps are undone in reverse;
// a later DEL or GC replays the same journal after a crash.
package txn

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
)

// Op is one typed, JSON-serialisable operation of a plan.
type Op interface {
	// Kind is the registered type name, stored in the journal.
	Kind() string
	// Do performs the operation.
	Do(env *Env) error
	// Undo reverses it. It must succeed when the object is already gone or
	// was never created (a journal records a step before it runs).
	Undo(env *Env) error
	// Check reports drift between the operation's effect and the kernel.
	Check(env *Env) error
	// String describes the operation for errors and logs.
	String() string
}

// Creator is an Op that creates objects others live on (links); Creates
// names them, e.g. "pod/link/eth0" (a veth pair is two objects that go
// together).
type Creator interface{ Creates() []string }

// Dependent is an Op whose effect lives on an object (an address or route on
// a link) and vanishes when that object is deleted; DependsOn names it.
type Dependent interface{ DependsOn() string }

// Sweeper is an Op whose undo removes, in one go, every object for which
// Sweeps is true (all of the pod's links). It is planned before them.
type Sweeper interface{ Sweeps(key string) bool }

// Held is an entry of the attachment's ledger: an Op recording something
// the attachment holds outside the kernel (addresses, from any IPAM
// backend). It is journaled before it takes effect (Journal.Hold) and its
// Undo releases what it holds; its Do does nothing. HeldKey names it in
// the ledger, which keeps one entry per key (a later Hold amends it).
//
// Rollback releases held entries only once every other step is undone: an
// address is never freed while a link of the pod may still carry it.
type Held interface {
	Op
	HeldKey() string
}

// Durable is an Op that keeps state on disk besides the kernel objects it
// makes (the ifacer's record of a parent's users). A reboot clears the
// kernel but not the disk: rolling back a journal of an earlier boot, which
// leaves its kernel objects alone (any now bearing their names are
// another's), runs UndoEarlierBoot, which must release the state on disk
// and touch no kernel object.
type Durable interface {
	Op
	UndoEarlierBoot(env *Env) error
}

var registry = map[string]func() Op{}

// Register makes an operation kind decodable from a journal. Packages call it
// from init for each kind they define.
func Register(kind string, newOp func() Op) {
	if _, dup := registry[kind]; dup {
		panic("txn: operation kind registered twice: " + kind)
	}
	registry[kind] = newOp
}

// Step is an operation as stored in a plan or a journal: {"kind":..,"op":{..}}
// and the hints a binary older than the step reads it by (stepJSON).
type Step struct {
	Op Op
}

// stepJSON is a step on disk. Kind and Op are the operation; the rest are
// hints for a binary that does not know the kind, or that a newer binary
// marked (Min) as not reading the step right: what the step's Op would
// say through the interfaces Rollback reads (Creator, Dependent, Held,
// Durable). With them an older binary undoes what it understands and
// keeps the rest (Foreign) for a binary that understands it.
type stepJSON struct {
	Kind string          `json:"kind"`
	Op   json.RawMessage `json:"op"`
	// Min is the lowest journal format that reads this step right; a
	// newer binary sets it on a step of a known kind whose meaning
	// changed (a field an older reader would ignore but must not).
	Min     int      `json:"min,omitempty"`
	Creates []string `json:"creates,omitempty"`
	On      string   `json:"on,omitempty"`
	Held    string   `json:"held,omitempty"`
	Durable bool     `json:"durable,omitempty"`
}

// MarshalJSON encodes the step with its kind, and its hints, so it can be
// decoded again, by this binary or an older one.
func (s Step) MarshalJSON() ([]byte, error) {
	if f, ok := s.Op.(foreignOp); ok {
		return json.Marshal(f.foreign().sj) // as it was read
	}
	raw, err := json.Marshal(s.Op)
	if err != nil {
		return nil, err
	}
	sj := stepJSON{Kind: s.Op.Kind(), Op: raw}
	if c, ok := s.Op.(Creator); ok {
		sj.Creates = c.Creates()
	}
	if d, ok := s.Op.(Dependent); ok {
		sj.On = d.DependsOn()
	}
	if h, ok := s.Op.(Held); ok {
		sj.Held = h.HeldKey()
	}
	_, sj.Durable = s.Op.(Durable)
	return json.Marshal(sj)
}

// UnmarshalJSON decodes a step through the registry; a step of a kind
// this binary does not know, or marked for a newer format than Format, is
// decoded as Foreign (or ForeignHeld), never as what it is not.
func (s *Step) UnmarshalJSON(b []byte) error {
	var sj stepJSON
	if err := json.Unmarshal(b, &sj); err != nil {
		return err
	}
	if sj.Kind == "" || len(sj.Op) == 0 || string(sj.Op) == "null" {
		// no binary writes a step without its kind and operation: damage,
		// not a newer binary's step
		return fmt.Errorf("step without kind or operation (%d bytes)", len(b))
	}
	newOp, ok := registry[sj.Kind]
	if !ok || sj.Min > Format {
		s.Op = newForeign(sj, ok)
		return nil
	}
	op := newOp()
	if err := json.Unmarshal(sj.Op, op); err != nil {
		return fmt.Errorf("operation %q: %w", sj.Kind, err)
	}
	s.Op = op
	return nil
}

// NewOp decodes an operation of a registered kind from its JSON.
func NewOp(kind string, raw []byte) (Op, error) {
	var s Step
	b, err := json.Marshal(stepJSON{Kind: kind, Op: raw})
	if err == nil {
		err = s.UnmarshalJSON(b)
	}
	if _, ok := s.Op.(foreignOp); ok && err == nil {
		err = fmt.Errorf("unknown operation kind %q", kind)
	}
	return s.Op, err
}

// Steps wraps a plan for encoding.
func Steps(ops []Op) []Step {
	out := make([]Step, len(ops))
	for i, op := range ops {
		out[i] = Step{Op: op}
	}
	return out
}

// ErrGone marks an object that no longer exists; Undo treats it as success.
var ErrGone = errors.New("gone")

// ErrAbandoned marks an Undo that failed for a reason no retry can fix (a
// delegated plugin refusing its own journaled config, or failing again and
// again): Rollback drops the step, so DEL converges, and lists it in
// Env.Abandoned for the caller to report (log, Event).
var ErrAbandoned = errors.New("abandoned")

// Abandon wraps err as ErrAbandoned.
func Abandon(err error) error { return fmt.Errorf("%w: %w", ErrAbandoned, err) }

// PluginDelAttempts is how many DELs another CNI's plugin (a NAD's IPAM
// plugin, a delegate network's conflist) may fail, for a reason that is not
// plainly permanent, before spinneret stops asking: a pod must not stay
// Terminating forever because another plugin cannot release (a kubelet
// retries DEL within seconds; an API server a plugin needs that is down for
// longer leaves the address to that plugin's own cleanup, as whereabouts'
// reconciler does).
const PluginDelAttempts = 3

// permanentCodes are the CNI error codes a retry with the same journaled
// config and environment cannot change.
var permanentCodes = []uint{types.ErrIncompatibleCNIVersion, types.ErrUnsupportedField, types.ErrInvalidEnvironmentVariables, types.ErrDecodingFailure, types.ErrInvalidNetworkConfig}

// PluginDelFailed is the Undo error of another plugin's failed DEL, the
// failures before it counted in *failures (journaled with the step): given
// up on (ErrAbandoned) at once for a permanent CNI error code, or once it
// failed PluginDelAttempts times; else err, for the next DEL to retry.
func PluginDelFailed(err error, failures *int) error {
	*failures++
	var te *types.Error
	if errors.As(err, &te) && slices.Contains(permanentCodes, te.Code) {
		return Abandon(err)
	}
	if *failures >= PluginDelAttempts {
		return Abandon(fmt.Errorf("%w (failed %d times)", err, *failures))
	}
	return err
}

// StepError is the error of a failed ADD: which step failed, why, and whether
// the rollback left anything behind.
type StepError struct {
	Index, Total int
	Op           Op
	Err          error
	UndoErr      error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("step %d/%d (%s) failed: %v", e.Index+1, e.Total, e.Op, e.Err)
	if e.UndoErr != nil {
		msg += fmt.Sprintf("; rollback incomplete, journal kept for DEL: %v", e.UndoErr)
	}
	return msg
}

func (e *StepError) Unwrap() error { return e.Err }
