package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
)

// Sweeper cleans up after the runtime: containerd and CRI-O never call CNI
// GC, so an attachment whose DEL never came (the runtime crashed, its
// state was lost, the node restarted under it) keeps its journal, its
// addresses, its share of the ifacer's parents and its VF state for ever.
// A sweep finds the attachments of the installed conflist's network whose
// sandbox the runtime no longer lists and runs spinneret's own GC (libcni,
// CNI_COMMAND=GC) with every other attachment valid, so that GC removes
// exactly those.
//
// Never one whose ADD may be in flight: the runtime is asked first, and an
// attachment whose journal or address record changed less than MinAge
// before that is valid (a sandbox whose ADD has just returned may not be
// listed yet); spinneret's GC itself skips an attachment whose lock an
// ADD or DEL holds.
type Sweeper struct {
	// Conflist is the installed conflist; its spinneret entry names the
	// node conf (the state dir) and the network.
	Conflist string
	// BinDirs are where libcni finds spinneret (and a delegate's plugins).
	BinDirs []string
	// CacheDir is libcni's cache for the agent's own calls: not the
	// runtime's, whose entries are the runtime's to act on.
	CacheDir  string
	MinAge    time.Duration
	Sandboxes Sandboxes
	Log       *slog.Logger
	now       func() time.Time
}

// Attachment is one of spinneret's attachments on the node.
type Attachment struct {
	ContainerID, IfName string
	// Changed is when its journal or address record last changed.
	Changed time.Time
}

// Report is what a sweep found and did.
type Report struct {
	// Sandboxes is how many the runtime listed.
	Sandboxes int
	// Stale are the attachments without a sandbox, older than MinAge:
	// GC ran for them.
	Stale []Attachment
	// Left are those of Stale still there after GC (an ADD or DEL held
	// the lock, or the undo failed: the next sweep tries again).
	Left []Attachment
}

// Sweep runs one sweep.
func (s *Sweeper) Sweep(ctx context.Context) (*Report, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	// the runtime first: an attachment made after this is younger than
	// asked, and valid
	asked := now()
	live, err := s.Sandboxes(ctx)
	if err != nil {
		return nil, fmt.Errorf("no sweep: %w", err)
	}
	list, spin, err := s.conflist()
	if err != nil {
		return nil, err
	}
	node, err := conf.LoadNode(spin.NodeConfPath, spin.NodeConfExplicit)
	if err != nil {
		return nil, err
	}
	atts, err := attachments(node.StateDir, list.Name)
	if err != nil {
		return nil, err
	}
	rep := &Report{Sandboxes: len(live)}
	var valid []types.GCAttachment
	for id := range live {
		valid = append(valid, types.GCAttachment{ContainerID: id, IfName: "eth0"})
	}
	for _, a := range atts {
		switch {
		case live[a.ContainerID]:
			valid = append(valid, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
		case a.Changed.After(asked.Add(-s.MinAge)):
			s.Log.Info("sweep: no sandbox yet, too young to remove", "container", a.ContainerID, "ifname", a.IfName, "changed", a.Changed.Format(time.RFC3339))
			valid = append(valid, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
		default:
			rep.Stale = append(rep.Stale, a)
		}
	}
	if len(rep.Stale) == 0 {
		return rep, nil
	}
	for _, a := range rep.Stale {
		s.Log.Info("sweep: the runtime has no sandbox for this attachment: GC", "container", a.ContainerID, "ifname", a.IfName, "changed", a.Changed.Format(time.RFC3339))
	}
	gcErr := libcni.NewCNIConfigWithCacheDir(s.BinDirs, s.CacheDir, nil).GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	after, err := attachments(node.StateDir, list.Name)
	if err != nil {
		return rep, errors.Join(gcErr, err)
	}
	for _, a := range rep.Stale {
		if slices.ContainsFunc(after, func(b Attachment) bool { return b.ContainerID == a.ContainerID && b.IfName == a.IfName }) {
			rep.Left = append(rep.Left, a)
		}
	}
	if gcErr != nil {
		return rep, fmt.Errorf("GC: %w", gcErr)
	}
	return rep, nil
}

// conflist reads the installed conflist, as a list of its spinneret
// entry alone at CNI 1.1.0 (the version with GC, which spinneret always
// speaks; another plugin chained after it is not the agent's to call),
// and that entry's config.
func (s *Sweeper) conflist() (*libcni.NetworkConfigList, *conf.Config, error) {
	b, err := os.ReadFile(s.Conflist)
	if err != nil {
		return nil, nil, err
	}
	spin, err := conf.ParseFile(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Conflist, err)
	}
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Conflist, err)
	}
	i := slices.IndexFunc(list.Plugins, func(p *libcni.PluginConfig) bool { return p.Network.Type == "spinneret" })
	if i < 0 {
		return nil, nil, fmt.Errorf("%s: no spinneret plugin", s.Conflist)
	}
	list.Plugins = list.Plugins[i : i+1]
	list.CNIVersion = "1.1.0"
	return list, spin, nil
}

// attachments are the network's attachments in the state dir: those with
// a journal and those holding local addresses, each once, with the time
// its records last changed.
func attachments(stateDir, network string) ([]Attachment, error) {
	journals, err := txn.ListJournalFiles(stateDir, network)
	if err != nil {
		return nil, err
	}
	var out []Attachment
	at := map[string]int{} // txn.Key -> index in out
	add := func(id, ifname string, changed time.Time) {
		k := txn.Key(id, ifname)
		if i, ok := at[k]; ok {
			if changed.After(out[i].Changed) {
				out[i].Changed = changed
			}
			return
		}
		at[k] = len(out)
		out = append(out, Attachment{ContainerID: id, IfName: ifname, Changed: changed})
	}
	for _, j := range journals {
		add(j.ContainerID, j.IfName, j.Changed)
	}
	store := ipam.NewLocal(stateDir)
	owners, err := store.Owners()
	if err != nil {
		return nil, err
	}
	for _, o := range owners {
		if o.Network != network {
			continue
		}
		t, err := store.OwnerChanged(o)
		if err != nil {
			continue // released since
		}
		add(o.ContainerID, o.IfName, t)
	}
	return out, nil
}
