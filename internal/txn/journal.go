package txn

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/testhook"
)

// Journal states.
const (
	StateApplying  = "applying"  // steps are being applied; a crash leaves this
	StateCommitted = "committed" // ADD returned success
)

// journalExt ends a journal's file name.
const journalExt = ".journal"

// Format is the journal format this binary writes. Format 0 ("v0", the
// journals of eb2b641 and before) had no version, no ledger and the
// kubernetes backend's objects in the header's "ipam" field; LoadJournal
// reads it as format 1 (upgradeV0). A later change adds fields (and kinds
// of steps), not formats: a reader ignores a field it does not know.
//
// Across releases (a node rolled back with pods running, its journals
// written by the newer binary): a journal of a newer format is read, not
// refused. A step of a kind this binary does not know, or one its writer
// marked with the format that reads it right ("min": for a step of a known
// kind whose meaning changed, which the format number then rises for), is
// read as Foreign: never acted on, undone as far as its hints say
// (Rollback), and written back as it was, for the binary that wrote it.
// A newer format adds no kind of record (a line other than header, step,
// amend and commit is damage, read up to); its header is kept as written.
//
// Format 1: a header line (network, container ID, ifname, pod netns path
// and inode, boot ID, format), then step lines, each {"kind","op"}, amend
// lines that replace an earlier step (a ledger entry completed after its
// backend ran: {"amend":{"index":N,"step":...}}), and, for a committed ADD,
// a commit line with its result. The steps are the attachment's ledger
// (txn.Held: every address it holds, one entry per backend or delegated
// IPAM run, journaled before the allocation) followed by the plan; each
// host-side step names the object it created by what identifies it as
// this attachment's (its name, and the pod netns inode for the pod side).
const Format = 1

// Journal is the durable record of one attachment (container ID + ifname):
// every step of its plan, written before the step runs.
//
// On disk it is an append-only log of JSON lines: a header, one line per
// step, and a commit line with the ADD's result. A step is appended and
// fsynced before it runs; appending costs far less than rewriting a file
// (a file creation costs ~1.2 ms on the test machine, an fsync'd append
// ~0.14 ms). A line torn by a crash is ignored when the journal is read: its
// step never ran, since steps run only after their line is on disk.
type Journal struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	NetNS       string `json:"netns"`
	NetNSIno    uint64 `json:"netnsInode,omitempty"`
	// Pod (namespace/name) and PodUID are the pod the runtime named, for
	// the operator (spinneret inspect POD); an older binary ignores them.
	Pod    string `json:"pod,omitempty"`
	PodUID string `json:"podUID,omitempty"`
	// BootID is the node's boot the ADD ran in
	// (/proc/sys/kernel/random/boot_id): a journal of an earlier boot
	// describes objects that are gone.
	BootID string `json:"bootID,omitempty"`
	Format int    `json:"format,omitempty"`
	// IPAM is format 0's record of the kubernetes backend's objects; read
	// only, as a ledger entry (upgradeV0).
	IPAM   json.RawMessage `json:"ipam,omitempty"`
	State  string          `json:"-"`
	Steps  []Step          `json:"-"`
	Result json.RawMessage `json:"-"`

	path      string
	rawHeader json.RawMessage // a newer format's header, as read
	written   int             // steps already on disk
	created   bool            // the file exists with its header
}

// record is one line of the journal file.
type record struct {
	Header *Journal        `json:"header,omitempty"`
	Step   *Step           `json:"step,omitempty"`
	Commit json.RawMessage `json:"commit,omitempty"` // the result
	Amend  *amend          `json:"amend,omitempty"`
}

// amend replaces step Index with Step.
type amend struct {
	Index int  `json:"index"`
	Step  Step `json:"step"`
}

// bootID is this boot's identity, read once per process.
var bootID = func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return testhook.BootID(string(bytes.TrimSpace(b)))
}()

// BootID is the node's current boot ID ("" if the kernel gives none).
func BootID() string { return bootID }

// EarlierBoot reports whether the journal was written in an earlier boot
// of the node: the kernel objects its steps created went with that boot,
// and any object now bearing their names is another attachment's (or the
// admin's). A journal without a boot ID (format 0) is taken as this boot's.
func (j *Journal) EarlierBoot() bool { return j.BootID != "" && bootID != "" && j.BootID != bootID }

// JournalDir is where the journals of one network live.
func JournalDir(stateDir, network string) string {
	return statedir.Journal(stateDir, network)
}

// Key names an attachment in file names; ':' is valid in neither a
// container ID nor an interface name, so keys cannot collide.
func Key(containerID, ifname string) string { return containerID + ":" + ifname }

// JournalPath is the journal file of one attachment.
func JournalPath(stateDir, network, containerID, ifname string) string {
	return filepath.Join(JournalDir(stateDir, network), Key(containerID, ifname)+journalExt)
}

// NewJournal returns an empty journal for an attachment; nothing is written
// until the first Append.
func NewJournal(stateDir, network, containerID, ifname, netnsPath string, ino uint64) *Journal {
	return &Journal{
		Network: network, ContainerID: containerID, IfName: ifname,
		NetNS: netnsPath, NetNSIno: ino, BootID: bootID, Format: Format, State: StateApplying,
		path: JournalPath(stateDir, network, containerID, ifname),
	}
}

// LoadJournal reads a journal file. A missing file gives an error matching
// os.ErrNotExist.
func LoadJournal(path string) (*Journal, error) {
	j, _, err := loadJournal(path, false)
	return j, err
}

// LoadJournalPrefix reads a journal LoadJournal refuses as far as it is
// sound: up to its first record that is no record (as a line torn by a
// crash is read), which damage says. It is for DEL, which must converge:
// undoing the sound prefix leaves less behind than undoing nothing.
func LoadJournalPrefix(path string) (j *Journal, damage error, err error) {
	return loadJournal(path, true)
}

func loadJournal(path string, lenient bool) (*Journal, error, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	j := &Journal{path: path, State: StateApplying, created: true}
	var damage error
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for line := 1; sc.Scan() && damage == nil; line++ {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			var syn *json.SyntaxError
			if errors.As(err, &syn) || errors.Is(err, bufio.ErrTooLong) {
				break // a line torn by a crash: its step never ran
			}
			damage = fmt.Errorf("journal %s: line %d: %w", path, line, err)
			break
		}
		switch {
		case r.Header != nil:
			r.Header.path, r.Header.State, r.Header.created = path, StateApplying, true
			*j = *r.Header
		case r.Step != nil:
			if r.Step.Op == nil {
				damage = fmt.Errorf("journal %s: line %d: step %d has no operation", path, line, len(j.Steps))
				break
			}
			j.Steps = append(j.Steps, *r.Step)
		case r.Amend != nil:
			if r.Amend.Index < 0 || r.Amend.Index >= len(j.Steps) {
				damage = fmt.Errorf("journal %s: line %d: amend of step %d of %d", path, line, r.Amend.Index, len(j.Steps))
			} else if r.Amend.Step.Op == nil {
				damage = fmt.Errorf("journal %s: line %d: amend of step %d has no operation", path, line, r.Amend.Index)
			} else {
				j.Steps[r.Amend.Index] = r.Amend.Step
			}
		case r.Commit != nil:
			j.State, j.Result = StateCommitted, r.Commit
		default:
			// a kind of record a newer binary wrote: not skipped, for
			// it may matter (a format adds records only with a reader
			// that knows them; this is damage, read up to it)
			damage = fmt.Errorf("journal %s: line %d: a record this binary does not know", path, line)
		}
		if r.Header != nil && j.Format > Format {
			// written back as it is (Save): its fields this binary
			// does not know are the newer binary's
			var raw struct{ Header json.RawMessage }
			json.Unmarshal(sc.Bytes(), &raw)
			j.rawHeader = raw.Header
		}
	}
	if damage != nil && !lenient {
		return nil, nil, damage
	}
	if j.Format == 0 {
		if err := j.upgradeV0(); err != nil {
			return nil, nil, fmt.Errorf("journal %s (format 0): %w", path, err)
		}
	}
	j.written = len(j.Steps)
	return j, damage, nil
}

// upgradeV0 reads a format 0 journal as format 1: its ADD allocated
// before journaling, so it holds the local store's addresses of its owner
// and the kubernetes objects its header lists; both become ledger entries
// (of the kinds package ipam and ipam/kubeipam register) ahead of its
// steps. The file stays as it is until the journal is saved again.
func (j *Journal) upgradeV0() error {
	local, err := json.Marshal(map[string]string{"network": j.Network, "containerID": j.ContainerID, "ifname": j.IfName})
	if err != nil {
		return err
	}
	op, err := NewOp("ipam.local", local)
	if err != nil {
		return err
	}
	steps := []Step{{Op: op}}
	if len(j.IPAM) > 0 {
		if op, err = NewOp("ipam.kube", []byte(`{"objects":`+string(j.IPAM)+`,"complete":true}`)); err != nil {
			return err
		}
		steps = append(steps, Step{Op: op})
	}
	j.Steps = append(steps, j.Steps...)
	j.IPAM, j.Format = nil, Format
	return nil
}

// ListJournals loads every journal of a network.
func ListJournals(stateDir, network string) ([]*Journal, error) {
	dir := JournalDir(stateDir, network)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Journal
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), journalExt) || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		j, err := LoadJournal(filepath.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a concurrent DEL
		}
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// JournalFile is an attachment's journal as its file name says it:
// which attachment, where, when last written.
type JournalFile struct {
	ContainerID, IfName, Path string
	Changed                   time.Time
}

// ListJournalFiles lists the network's journals by their file names
// alone, without reading them: for a binary that does not link the
// operations the steps name (the node agent, the doctor), and for one
// older than the journals' format.
func ListJournalFiles(stateDir, network string) ([]JournalFile, error) {
	dir := JournalDir(stateDir, network)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []JournalFile
	for _, e := range ents {
		key, ok := strings.CutSuffix(e.Name(), journalExt)
		id, ifname, ok2 := strings.Cut(key, ":")
		if !ok || !ok2 || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed by a concurrent DEL
		}
		out = append(out, JournalFile{ContainerID: id, IfName: ifname, Path: filepath.Join(dir, e.Name()), Changed: fi.ModTime()})
	}
	return out, nil
}

// Path is the journal's file.
func (j *Journal) Path() string { return j.path }

// Append records steps: they are added to j.Steps and written, with the
// header if the file is new (and the steps Carry gave it), in one fsync'd
// write.
func (j *Journal) Append(steps ...Step) error {
	return j.write(nil, steps)
}

// Hold records a ledger entry before it takes effect, in one fsync'd
// write: appended, or, when the ledger has an entry of the same key,
// replacing it (an amend line).
func (j *Journal) Hold(h Held) error {
	i := j.heldIndex(h.HeldKey())
	switch {
	case i < 0:
		return j.write(nil, []Step{{Op: h}})
	case i >= j.written:
		j.Steps[i].Op = h // not on disk yet: written as it is now
		return j.write(nil, nil)
	}
	if err := j.write(&amend{Index: i, Step: Step{Op: h}}, nil); err != nil {
		return err
	}
	j.Steps[i].Op = h
	return nil
}

// Note puts a ledger entry in the journal, replacing one of the same key,
// without writing: an entry not yet on disk goes with the next write
// (Append, Hold), and a replaced one that is on disk changes there only
// with Save. For a backend whose own durable record, written before it
// takes anything, already lets a DEL without journal release it (the
// local store's owner record), it saves an fsync'd write per ADD; and for
// an entry a failed ADD narrows before its rollback (saved if that is
// left incomplete).
func (j *Journal) Note(h Held) {
	if i := j.heldIndex(h.HeldKey()); i >= 0 {
		j.Steps[i].Op = h
		return
	}
	j.Steps = append(j.Steps, Step{Op: h})
}

// heldIndex is the index of the ledger entry of key in j.Steps, or -1.
func (j *Journal) heldIndex(key string) int {
	return slices.IndexFunc(j.Steps, func(s Step) bool {
		o, ok := s.Op.(Held)
		return ok && o.HeldKey() == key
	})
}

// Ledger is the journal's held entries, in order.
func (j *Journal) Ledger() []Step { return j.stepsHeld(true) }

// Plan is the journal's steps that are not the ledger's, in order.
func (j *Journal) Plan() []Step { return j.stepsHeld(false) }

func (j *Journal) stepsHeld(held bool) []Step {
	var out []Step
	for _, s := range j.Steps {
		if _, ok := s.Op.(Held); ok == held {
			out = append(out, s)
		}
	}
	return out
}

// Carry makes steps (an earlier journal's ledger, for an ADD repeated
// without DEL) the first steps of j, written with its next write.
func (j *Journal) Carry(steps []Step) {
	j.Steps = append(slices.Clone(steps), j.Steps...)
}

func (j *Journal) write(am *amend, steps []Step) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	flags := os.O_WRONLY | os.O_APPEND
	pending := j.Steps[min(j.written, len(j.Steps)):]
	if !j.created {
		if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
			return err
		}
		if err := enc.Encode(record{Header: j}); err != nil {
			return err
		}
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		pending = j.Steps
	}
	for _, s := range [][]Step{pending, steps} {
		for i := range s {
			if err := enc.Encode(record{Step: &s[i]}); err != nil {
				return err
			}
		}
	}
	if am != nil {
		if err := enc.Encode(record{Amend: am}); err != nil {
			return err
		}
	}
	if err := fileutil.WriteSync(j.path, flags, buf.Bytes()); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	j.created = true
	j.Steps = append(j.Steps, steps...)
	j.written = len(j.Steps)
	return nil
}

// Commit marks the journal committed with the ADD's result.
func (j *Journal) Commit(result []byte) error {
	b, err := json.Marshal(record{Commit: result})
	if err != nil {
		return err
	}
	if err := fileutil.WriteSync(j.path, os.O_WRONLY|os.O_APPEND, append(b, '\n')); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	j.State, j.Result = StateCommitted, result
	return nil
}

// Save rewrites the journal as it is in memory (after a rollback left only
// some steps), atomically and durably.
func (j *Journal) Save() error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if j.rawHeader != nil {
		enc.Encode(struct {
			Header json.RawMessage `json:"header"`
		}{j.rawHeader})
	} else {
		enc.Encode(record{Header: j})
	}
	for i := range j.Steps {
		if err := enc.Encode(record{Step: &j.Steps[i]}); err != nil {
			return err
		}
	}
	if j.State == StateCommitted {
		enc.Encode(record{Commit: j.Result})
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
		return err
	}
	if err := fileutil.WriteAtomic(j.path, buf.Bytes()); err != nil {
		return err
	}
	j.created, j.written = true, len(j.Steps)
	return nil
}

// Remove deletes the journal; a missing file is not an error.
func (j *Journal) Remove() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Env returns an Env for the journal's pod namespace.
func (j *Journal) Env() *Env { return NewEnv(j.NetNS, j.NetNSIno) }
