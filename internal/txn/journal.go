package txn

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
)

// Journal states.
const (
	StateApplying  = "applying"  // steps are being applied; a crash leaves this
	StateCommitted = "committed" // ADD returned success
)

// Journal is the durable record of one attachment (container ID + ifname):
// every step of its plan, written before the step runs.
type Journal struct {
	Network     string          `json:"network"`
	ContainerID string          `json:"containerID"`
	IfName      string          `json:"ifname"`
	NetNS       string          `json:"netns"`
	NetNSIno    uint64          `json:"netnsInode,omitempty"`
	State       string          `json:"state"`
	Steps       []Step          `json:"steps"`
	Result      json.RawMessage `json:"result,omitempty"`

	path string
}

// JournalDir is where the journals of one network live.
func JournalDir(stateDir, network string) string {
	return filepath.Join(stateDir, "journal", network)
}

// Key names an attachment in file names; ':' is valid in neither a
// container ID nor an interface name, so keys cannot collide.
func Key(containerID, ifname string) string { return containerID + ":" + ifname }

// JournalPath is the journal file of one attachment.
func JournalPath(stateDir, network, containerID, ifname string) string {
	return filepath.Join(JournalDir(stateDir, network), Key(containerID, ifname)+".json")
}

// NewJournal returns an empty journal for an attachment; nothing is written yet.
func NewJournal(stateDir, network, containerID, ifname, netnsPath string, ino uint64) *Journal {
	return &Journal{
		Network: network, ContainerID: containerID, IfName: ifname,
		NetNS: netnsPath, NetNSIno: ino, State: StateApplying,
		path: JournalPath(stateDir, network, containerID, ifname),
	}
}

// LoadJournal reads a journal file. A missing file gives an error matching
// os.ErrNotExist.
func LoadJournal(path string) (*Journal, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j := &Journal{path: path}
	if err := json.Unmarshal(b, j); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return j, nil
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
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
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

// Path is the journal's file.
func (j *Journal) Path() string { return j.path }

// Save writes the journal atomically and durably.
func (j *Journal) Save() error {
	if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(j.path, b)
}

// Commit marks the journal committed with the ADD's result. It adds no step,
// so it is written atomically but without waiting for the disk: after a
// power cut the pod namespaces are gone and the journal's steps, which are
// durable, are all a DEL or GC needs.
func (j *Journal) Commit(result []byte) error {
	j.State, j.Result = StateCommitted, result
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return fileutil.Replace(j.path, b)
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
