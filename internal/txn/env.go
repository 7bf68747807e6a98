package txn

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespaces as plans name them: plans stay independent of the netns path.
const (
	Host = "host"
	Pod  = "pod"
)

// Env gives operations their netlink handles. The pod namespace is opened
// lazily; if it no longer exists (or another namespace now sits at the same
// path) Handle returns an error wrapping ErrGone.
type Env struct {
	PodNetNS    string // path of the pod netns, may be empty on DEL
	PodNetNSIno uint64 // inode recorded at ADD; 0 = do not check
	// Log receives one debug line per step done or undone; nil: no logging.
	Log *slog.Logger
	// StateDir is the node's state dir, for operations that lock across
	// processes (shared node objects).
	StateDir string

	podNS   netns.NsHandle
	handles map[string]*netlink.Handle
}

// NewEnv returns an Env for the given pod netns path.
func NewEnv(podNetNS string, ino uint64) *Env {
	return &Env{PodNetNS: podNetNS, PodNetNSIno: ino, podNS: -1, handles: map[string]*netlink.Handle{}}
}

// NetNSInode returns the inode that identifies the namespace at path.
func NetNSInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (e *Env) openPod() error {
	if e.podNS >= 0 {
		return nil
	}
	if e.PodNetNS == "" {
		return fmt.Errorf("pod netns: no path: %w", ErrGone)
	}
	h, err := netns.GetFromPath(e.PodNetNS)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pod netns %s: %w", e.PodNetNS, ErrGone)
		}
		return fmt.Errorf("open pod netns %s: %w", e.PodNetNS, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return fmt.Errorf("stat pod netns %s: %w", e.PodNetNS, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(h), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		h.Close()
		return fmt.Errorf("pod netns %s: not a network namespace", e.PodNetNS)
	}
	if e.PodNetNSIno != 0 && st.Ino != e.PodNetNSIno {
		h.Close()
		return fmt.Errorf("pod netns %s was replaced: %w", e.PodNetNS, ErrGone)
	}
	e.podNS = h
	return nil
}

// PodNSFd returns the pod namespace's file descriptor (owned by Env).
func (e *Env) PodNSFd() (int, error) {
	if err := e.openPod(); err != nil {
		return -1, err
	}
	return int(e.podNS), nil
}

// Handle returns a netlink handle for the named namespace (Host or Pod).
func (e *Env) Handle(ns string) (*netlink.Handle, error) {
	if h, ok := e.handles[ns]; ok {
		return h, nil
	}
	var h *netlink.Handle
	var err error
	switch ns {
	case Host:
		h, err = netlink.NewHandle()
	case Pod:
		if err = e.openPod(); err == nil {
			h, err = netlink.NewHandleAt(e.podNS)
		}
	default:
		err = fmt.Errorf("unknown namespace %q", ns)
	}
	if err != nil {
		return nil, err
	}
	e.handles[ns] = h
	return h, nil
}

func (e *Env) logStep(msg string, i int, op Op, start time.Time, err error) {
	if e.Log != nil {
		e.Log.Debug(msg, "step", i+1, "op", op.String(), "us", time.Since(start).Microseconds(), "err", err)
	}
}

// In runs fn with the calling goroutine's thread in the named namespace
// (for /proc/sys/net and sockets, which belong to the namespace of the
// thread that opens them).
func (e *Env) In(ns string, fn func() error) error {
	if ns == Host {
		return fn()
	}
	if err := e.openPod(); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(e.podNS); err != nil {
		return fmt.Errorf("enter pod netns: %w", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("txn: cannot return to the node's netns: " + err.Error())
		}
	}()
	return fn()
}

// Close releases handles and the pod namespace.
func (e *Env) Close() {
	for _, h := range e.handles {
		h.Close()
	}
	e.handles = map[string]*netlink.Handle{}
	if e.podNS >= 0 {
		e.podNS.Close()
		e.podNS = -1
	}
}
