// Package cni implements spinneret's CNI verbs: ADD, DEL, CHECK, GC, STATUS
// (VERSION is answered by skel), and maps errors to CNI codes
// (errors.go). An ADD (add.go) runs the stages in turn: the request
// (package request), what of it needs the node or the cluster (IPPools,
// VFs), the node facts (package facts), every address at once (the IPAM
// front, package ipam, its ledger in the journal), the plan (package
// plan), applied as one journaled transaction (package txn), and the
// report (the CNI result, network-status, events); a failure after the
// first address is taken ends in abort, which rolls the journal back. DEL,
// GC and CHECK replay the journal: rolling it back undoes the plan, then
// releases the ledger.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/logfile"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
	"github.com/spinneret-cni/spinneret/ipam/kubeipam"
	"github.com/spinneret-cni/spinneret/request"
)

// Main runs the plugin for the CNI_COMMAND in the environment.
func Main(about string) {
	shortLived()
	if c := os.Getenv("CNI_COMMAND"); c != "" && c != "VERSION" {
		if err := boundStdin(); err != nil {
			types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "").Print()
			os.Exit(1)
		}
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: bounded(cmdAdd), Del: bounded(cmdDel), Check: bounded(cmdCheck), GC: bounded(cmdGC), Status: bounded(cmdStatus)},
		version.PluginSupports(conf.SupportedVersions...), about)
}

// shortLived tunes the Go runtime for a process that lives tens of
// milliseconds and allocates a few MiB: no collection (a plugin call's
// heap is garbage as a whole when it exits), bounded by a memory limit
// that starts the collector only for a pathological call (a 1 MiB config
// of hundreds of networks); one P, as the process is pinned to one CPU
// (internal/cpupin) and a second P would only spin.
func shortLived() {
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	runtime.GOMAXPROCS(1)
}

// MaxConfigBytes bounds the config spinneret reads from stdin; a larger
// one is refused before it is parsed (a catalogue of 200 networks with
// their pools is ~100 KiB).
const MaxConfigBytes = 1 << 20

// MaxErrorBytes bounds an error's message and details as printed to the
// runtime and logged: user values in errors are excerpts already
// (conf.Excerpt), this bounds the sum of them.
const MaxErrorBytes = 4 << 10

// boundStdin reads at most MaxConfigBytes of stdin and gives skel, which
// reads all of stdin, a file with exactly that (an in-memory one).
func boundStdin() error {
	data, err := io.ReadAll(io.LimitReader(os.Stdin, MaxConfigBytes+1))
	if err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	if len(data) > MaxConfigBytes {
		return fmt.Errorf("stdin: the config is larger than %d bytes", MaxConfigBytes)
	}
	fd, err := unix.MemfdCreate("cni-config", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	f := os.NewFile(uintptr(fd), "stdin")
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	os.Stdin = f
	return nil
}

// bounded cuts the error a verb returns to MaxErrorBytes.
func bounded(fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error { return boundError(fn(args)) }
}

func boundError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if !errors.As(err, &te) {
		te = types.NewError(types.ErrInternal, err.Error(), "")
	}
	if len(te.Msg) <= MaxErrorBytes && len(te.Details) <= MaxErrorBytes {
		return err
	}
	return types.NewError(te.Code, cut(te.Msg, MaxErrorBytes), cut(te.Details, MaxErrorBytes))
}

// cut is s cut to at most n bytes at a rune boundary, marked when cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + fmt.Sprintf("... (%d bytes cut)", len(s)-n)
}

// plugin is one invocation: validated config, node conf, logger, store.
type plugin struct {
	cfg   *conf.Config
	node  *conf.Node
	log   *slog.Logger
	store *ipam.Local
	close func()
	// phases are "name", milliseconds pairs for the final log line, and
	// sum the rest of what it says
	phases []any
	sum    summary
	mark   time.Time
	args   request.Args // CNI_ARGS, parsed once
	kube   *kube.Client // loaded on first use, with a kubeconfig
	pod    *kube.Pod    // the pod as the API server has it, once read
	// coord is the coordinator of the pod's primary network (the
	// config's, or the one the pod's default-network annotation names),
	// once the ADD has the pod's NICs
	coord conf.Coordinator
	kipam *kubeipam.Backend // the kubernetes IPAM backend, once needed
	// nads and newAllocator replace the API server's NADs and the IPAM
	// front (tests without a cluster or root); nil: the real ones
	nads         request.NADs
	newAllocator func(*txn.Journal, *skel.CmdArgs) ipam.Allocator
	// apiDown is set once the API server did not answer: no further
	// request waits out its timeout again
	apiDown bool
}

// phase records how long the work since the last mark took.
func (p *plugin) phase(name string) {
	now := time.Now()
	p.phases = append(p.phases, name+"-ms", float64(now.Sub(p.mark).Microseconds())/1000)
	p.mark = now
}

func load(stdin []byte) (*plugin, error) {
	start := time.Now()
	cfg, err := conf.Parse(stdin)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid config: "+err.Error(), "")
	}
	node, err := conf.LoadNode(cfg.NodeConfPath, cfg.NodeConfExplicit)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	p := &plugin{cfg: cfg, node: node, store: ipam.NewLocal(node.StateDir), mark: start}
	p.log, p.close = newLogger(node)
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		kube.Trace = p.logRequest
	}
	p.phase("load")
	return p, nil
}

// logRequest logs one API request (at debug level): what it asked, how
// long it took, and what its connection cost if it made one.
func (p *plugin) logRequest(r kube.Request) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	attrs := []any{"method", r.Method, "path", r.Path, "code", r.Code, "ms", ms(r.Took)}
	if r.TLS > 0 {
		attrs = append(attrs, "dial-ms", ms(r.Dial), "tls-ms", ms(r.TLS), "resumed", r.Resumed)
	}
	p.log.Debug("api request", attrs...)
}

// loadForDel reads just the network name and node conf path from a config
// that failed validation; the journal and the IPAM owner records hold the
// rest of what DEL needs.
func loadForDel(stdin []byte, cause error) (*plugin, error) {
	var minimal struct {
		Name     string `json:"name"`
		NodeConf string `json:"nodeConf"`
	}
	if json.Unmarshal(stdin, &minimal) != nil || utils.ValidateNetworkName(minimal.Name) != nil {
		return nil, cause
	}
	cfg := &conf.Config{Name: minimal.Name, NodeConfPath: conf.DefaultNodeConf}
	if minimal.NodeConf != "" {
		cfg.NodeConfPath, cfg.NodeConfExplicit = minimal.NodeConf, true
	}
	// a node conf broken since the ADD still names where the journals are
	node, known, err := conf.LoadNodeForDel(cfg.NodeConfPath, cfg.NodeConfExplicit)
	if !known {
		// the journals may be elsewhere: fixing the node conf helps
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	p := &plugin{cfg: cfg, node: node, store: ipam.NewLocal(node.StateDir), mark: time.Now()}
	p.log, p.close = newLogger(node)
	if err != nil {
		p.log.Warn("node conf is invalid; DEL works from the journal in its state dir", "stateDir", node.StateDir, "err", err)
	}
	if _, cerr := conf.Parse(stdin); cerr != nil {
		p.log.Warn("config is invalid; DEL works from the journal alone", "err", cerr)
	}
	return p, nil
}

// newLogger logs to the node conf's log file (rotated by size: see
// internal/logfile), or to standard error when it says so or the file
// cannot be opened (the reason is the first line there).
func newLogger(n *conf.Node) (*slog.Logger, func()) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(n.LogLevel))
	var w io.Writer = os.Stderr
	closeFn := func() {}
	var openErr error
	if !n.LogStderr() {
		f, err := logfile.Open(n.LogFile, logfile.Options{MaxBytes: int64(n.LogMaxSizeMB) << 20, MaxBackups: n.LogMaxBackups})
		if err == nil {
			w, closeFn = f, func() { f.Close() }
		}
		openErr = err
	}
	l := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})).With("pid", os.Getpid())
	if openErr != nil {
		l.Warn("log file not opened; logging to stderr", "logFile", n.LogFile, "err", openErr)
	}
	return l, closeFn
}

// attachmentLock serialises ADD, DEL and GC of one attachment; GC does not
// wait for it (wait false) and skips an attachment whose ADD is in flight.
func (p *plugin) attachmentLock(containerID, ifname string, wait bool) (*fileutil.Lock, error) {
	if err := os.MkdirAll(statedir.Locks(p.node.StateDir), 0o700); err != nil {
		return nil, err
	}
	path := statedir.AttachmentLock(p.node.StateDir, txn.Key(containerID, ifname))
	if wait {
		return fileutil.LockFile(path)
	}
	return fileutil.TryLockFile(path)
}

func (p *plugin) journalPath(containerID, ifname string) string {
	return txn.JournalPath(p.node.StateDir, p.cfg.Name, containerID, ifname)
}

// newEnv returns an Env for a pod namespace that logs to p and reaches
// the state dir and the API server (for the ledger's releases).
func (p *plugin) newEnv(netnsPath string, ino uint64) *txn.Env {
	e := txn.NewEnv(netnsPath, ino)
	e.Log, e.StateDir, e.Kube = p.log, p.node.StateDir, p.kubeClient
	return e
}

// envFor returns newEnv's Env for a journal's pod namespace.
func (p *plugin) envFor(j *txn.Journal) *txn.Env { return p.newEnv(j.NetNS, j.NetNSIno) }

// teardown undoes an attachment's journal, its plan and then its ledger
// (every address it holds, of every backend), and removes the journal.
// The journal is kept (with what is left) if the undo failed; what the
// undo gave up on is reported (log, and an Event on pod when known) and no
// longer holds DEL back.
func (p *plugin) teardown(j *txn.Journal, pod *kube.Pod) error {
	p.sum.fromJournal(j)
	env := p.envFor(j)
	defer env.Close()
	err := txn.Rollback(env, j)
	p.reportAbandoned(j, pod, env.Abandoned)
	p.reportLeftAlone(j, env)
	if err != nil {
		if serr := j.Save(); serr != nil {
			err = errors.Join(err, serr)
		}
		return err
	}
	p.phase("undo")
	if j.Kept() {
		// a newer binary's steps (a node rolled back with pods running):
		// DEL converges on what this binary can undo, and the journal
		// keeps the rest, with the addresses, for a binary that can
		p.log.Warn("journal of a newer spinneret: what this binary understands is undone; the rest, and the attachment's addresses, stay in the journal for a spinneret that can undo them (upgrade the node again, then GC or DEL)",
			"container", j.ContainerID, "ifname", j.IfName, "journal-format", j.Format, "format", txn.Format, "kept", strings.Join(env.Foreign, "; "), "journal", j.Path())
		return j.Save()
	}
	return j.Remove()
}

// reportLeftAlone logs what the undo of a journal of an earlier boot did
// not undo: the kernel objects it records went with that boot, and what
// now bears their names (a VF, a host route, a parent link) is another
// attachment's or the admin's.
func (p *plugin) reportLeftAlone(j *txn.Journal, env *txn.Env) {
	if len(env.LeftAlone) == 0 {
		return
	}
	p.log.Warn("attachment of an earlier boot: its addresses and records are released; its kernel objects went with that boot, and what now bears their names is left alone",
		"container", j.ContainerID, "ifname", j.IfName, "journal-boot", j.BootID, "boot", txn.BootID(), "left-alone", strings.Join(env.LeftAlone, "; "))
}

// reportAbandoned records the steps an undo gave up on: each is logged,
// and the pod (when DEL names one and a kubeconfig is set) gets a Warning
// event, so the operator learns what to release by hand.
func (p *plugin) reportAbandoned(j *txn.Journal, pod *kube.Pod, abandoned []error) {
	if len(abandoned) == 0 {
		return
	}
	for _, a := range abandoned {
		p.log.Error("not undone; retrying cannot help, so DEL goes on without it", "container", j.ContainerID, "ifname", j.IfName, "err", a)
	}
	c, err := p.kubeClient()
	if err != nil || c == nil || pod == nil {
		return
	}
	msg := fmt.Sprintf("sandbox %s: not released, release by hand: %v", j.ContainerID, errors.Join(abandoned...))
	if err := c.PodEvent(context.Background(), pod, "ReleaseFailed", msg); err != nil {
		p.log.Warn("event not recorded", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

// done writes the one line a call ends with: the verb, the pod and the
// attachment, what the summary has (NICs, addresses, steps, the failed
// step), the duration and its phases, and the error.
func (p *plugin) done(verb string, args *skel.CmdArgs, start time.Time, err error) {
	attrs := []any{"verb", verb, "network", p.cfg.Name}
	if pod := p.args.Pod(); pod != nil {
		attrs = append(attrs, "pod", pod.Namespace+"/"+pod.Name)
	}
	attrs = append(attrs, "container", args.ContainerID, "ifname", args.IfName)
	attrs = append(attrs, p.sum.attrs()...)
	attrs = append(attrs, "ms", float64(time.Since(start).Microseconds())/1000)
	attrs = append(attrs, p.phases...)
	if err != nil {
		p.log.Error("failed", append(attrs, "err", cut(err.Error(), MaxErrorBytes))...)
	} else {
		p.log.Info("ok", attrs...)
	}
	p.close()
}

func cmdDel(args *skel.CmdArgs) (err error) {
	p, err := load(args.StdinData)
	if err != nil {
		// a config broken after ADD must not leave pods stuck terminating:
		// DEL needs only the network's name and the node conf
		if p, err = loadForDel(args.StdinData, err); err != nil {
			return err
		}
	}
	defer func(t time.Time) { p.done("DEL", args, t, err) }(time.Now())
	if p.args, err = request.ParseArgs(args.Args); err != nil {
		// DEL works from the journal; only the release by pod UID and the
		// event need the pod
		p.log.Warn("CNI_ARGS unreadable; DEL goes on without the pod's identity", "err", err)
	}
	lk, err := p.attachmentLock(args.ContainerID, args.IfName, true)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer lk.Unlock()
	j, err := txn.LoadJournal(p.journalPath(args.ContainerID, args.IfName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		// a journal no retry can read as a whole (not a line torn by a
		// crash, which reads): DEL must still converge. A copy is kept
		// for the operator, and DEL undoes the sound prefix; what the
		// rest recorded is left, and said so
		path := p.journalPath(args.ContainerID, args.IfName)
		if b, rerr := os.ReadFile(path); rerr == nil {
			os.WriteFile(path+".unreadable", b, 0o600)
		}
		pj, damage, perr := txn.LoadJournalPrefix(path)
		if perr != nil {
			return types.NewError(types.ErrIOFailure, err.Error(), "")
		}
		p.log.Error("journal damaged: undoing what it records up to the damage; a copy is kept", "container", args.ContainerID, "ifname", args.IfName, "journal", path+".unreadable", "err", damage)
		j, err = pj, nil // (its ledger comes first: the prefix holds it)
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		// never added, or added and deleted; or, by a binary before
		// journal format 1, killed before journaling: addresses may
		// still be held
		j = txn.NewJournal(p.node.StateDir, p.cfg.Name, args.ContainerID, args.IfName, "", 0)
		j.Carry(p.sandboxLedger(args.ContainerID, args.IfName))
		err = p.teardown(j, kubePod(p.args))
	case err != nil:
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	default:
		err = p.teardown(j, kubePod(p.args))
	}
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("DEL %s/%s: %v", args.ContainerID, args.IfName, err), "")
	}
	return nil
}
