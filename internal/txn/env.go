package txn

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/kube"
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
	// Kube gives the API client, for ledger entries of the kubernetes
	// IPAM backend; nil, or a nil client: no API server is configured.
	Kube func() (*kube.Client, error)
	// Abandoned lists the steps a Rollback gave up on (ErrAbandoned): what
	// the caller must report as not undone.
	Abandoned []error
	// LeftAlone lists the steps a Rollback of a journal of an earlier boot
	// did not undo (their objects went with that boot): what the caller
	// reports.
	LeftAlone []string
	// Foreign lists the steps a Rollback kept because this binary cannot
	// read them (a newer binary's): what the caller reports, keeping the
	// journal.
	Foreign []string

	podNS    netns.NsHandle
	podCNINS ns.NetNS // the same namespace, for ns.Do
	handles  map[string]*netlink.Handle
	// sysctlDirs are the /proc/sys/net/<x> directories OpenSysctl opened,
	// by the namespace they were opened in.
	sysctlDirs map[sysctlDir]int
}

// sysctlDir is a /proc/sys/net/<x> directory of one network namespace
// (its nsfs device and inode).
type sysctlDir struct {
	dev, ino uint64
	name     string
}

// NewEnv returns an Env for the given pod netns path.
func NewEnv(podNetNS string, ino uint64) *Env {
	return &Env{PodNetNS: podNetNS, PodNetNSIno: ino, podNS: -1, handles: map[string]*netlink.Handle{}}
}

// PodNetNSInode returns the inode that identifies the namespace an ADD is
// to fill, at path. It must be a network namespace, and neither the
// plugin's own (the node's: an ADD there would put pod links and addresses
// on the node itself) nor PID 1's.
func PodNetNSInode(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return 0, err
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); fs.Type != unix.NSFS_MAGIC || err != nil || t != unix.CLONE_NEWNET {
		return 0, errors.New("not a network namespace")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	for _, own := range []struct{ path, whose string }{
		{"/proc/self/ns/net", "the plugin's own network namespace (the node's)"},
		{"/proc/1/ns/net", "the network namespace of PID 1 (the node's)"},
	} {
		var o unix.Stat_t
		if err := unix.Stat(own.path, &o); err != nil {
			if errors.Is(err, os.ErrPermission) {
				// PID 1 of another user namespace (the plugin in a
				// container): not the namespace the plugin can reach
				continue
			}
			return 0, fmt.Errorf("compare with %s: %w", own.path, err)
		}
		if o.Dev == st.Dev && o.Ino == st.Ino {
			return 0, errors.New("is " + own.whose + ", not a pod's")
		}
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
func (e *Env) Handle(nsName string) (*netlink.Handle, error) {
	if h, ok := e.handles[nsName]; ok {
		return h, nil
	}
	var h *netlink.Handle
	var err error
	// rtnetlink only: without a family the library opens xfrm and
	// netfilter sockets too (in the pod's namespace each a setns there
	// and back), which no step uses
	switch nsName {
	case Host:
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	case Pod:
		if err = e.openPod(); err == nil {
			h, err = netlink.NewHandleAt(e.podNS, unix.NETLINK_ROUTE)
		}
	default:
		err = fmt.Errorf("unknown namespace %q", nsName)
	}
	if err != nil {
		return nil, err
	}
	e.handles[nsName] = h
	return h, nil
}

func (e *Env) logStep(msg string, i int, op Op, start time.Time, err error) {
	if e.Log != nil {
		e.Log.Debug(msg, "step", i+1, "op", op.String(), "us", time.Since(start).Microseconds(), "err", err)
	}
}

// In runs fn inside the named namespace (for /proc/sys/net and sockets,
// which belong to the namespace of the thread that opens them), with
// containernetworking's ns.Do, which also keeps a thread whose namespace
// could not be restored out of the runtime.
func (e *Env) In(nsName string, fn func() error) error {
	if nsName == Host {
		return fn()
	}
	if err := e.openPod(); err != nil {
		return err
	}
	if e.podCNINS == nil {
		n, err := ns.GetNS(e.PodNetNS)
		if err != nil {
			return fmt.Errorf("pod netns %s: %w", e.PodNetNS, err)
		}
		e.podCNINS = n
	}
	return e.podCNINS.Do(func(ns.NetNS) error { return fn() })
}

// OpenSysctl opens /proc/sys/<key> ("net/ipv4/conf/eth0/rp_filter") with
// flags, in the namespace the calling thread is in (the host's, or the one
// In entered). A key under net/<x>/ is opened relative to that directory,
// opened once per namespace (told by the thread's own
// /proc/thread-self/ns/net, not by who called) and kept. Every namespace's
// /proc/sys/net/ipv4 (and ipv6) is a dentry of the same name under the one
// shared /proc/sys/net, in one hash chain, newest first: a lookup compares
// its way down to its own namespace's, and a namespace's first lookup
// walks them all. With 1000 pods on the node an open took 16-48 us in a
// namespace looked up long before (BenchmarkFlat's probe pods; a retried
// ADD's pod), and every key was one such walk (proc_sys_compare, 135 perf
// samples over 60 ADDs; 88 with the kept directory, one walk per family).
// The first walk in a namespace is the kernel's and stays. The caller
// closes the returned descriptor.
func (e *Env) OpenSysctl(key string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	fail := func(err error) (int, error) {
		return -1, &os.PathError{Op: "open", Path: "/proc/sys/" + key, Err: err}
	}
	parts := strings.Split(key, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return fail(unix.EINVAL) // a key names a file under /proc/sys, nothing else
		}
	}
	if len(parts) < 3 || parts[0] != "net" {
		fd, err := unix.Open("/proc/sys/"+key, flags, 0)
		if err != nil {
			return fail(err)
		}
		return fd, nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return fail(err)
	}
	k := sysctlDir{dev: st.Dev, ino: st.Ino, name: parts[1]}
	dir, ok := e.sysctlDirs[k]
	if !ok {
		var err error
		if dir, err = unix.Open("/proc/sys/net/"+parts[1], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return fail(err)
		}
		if e.sysctlDirs == nil {
			e.sysctlDirs = map[sysctlDir]int{}
		}
		e.sysctlDirs[k] = dir
	}
	fd, err := unix.Openat(dir, key[len("net/")+len(parts[1])+1:], flags, 0)
	if err != nil {
		return fail(err)
	}
	return fd, nil
}

// Close releases handles and the pod namespace.
func (e *Env) Close() {
	for _, h := range e.handles {
		h.Close()
	}
	e.handles = map[string]*netlink.Handle{}
	for k, fd := range e.sysctlDirs {
		unix.Close(fd)
		delete(e.sysctlDirs, k)
	}
	if e.podNS >= 0 {
		e.podNS.Close()
		e.podNS = -1
	}
	if e.podCNINS != nil {
		e.podCNINS.Close()
		e.podCNINS = nil
	}
}
