// Package netlab builds throwaway network namespaces for spinneret's tests
// and demo: a "switch" (a bridge), a "node" whose uplink is a switch port, a
// "gateway" on the switch, and empty "pod" namespaces. It never touches the
// namespace it is called from, and everything it made is removed by Close.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a named network namespace (/run/netns/<Name>).
type NS struct {
	Name string
	h    netns.NsHandle
	nl   *netlink.Handle
	cni  ns.NetNS
}

// NewNS creates a named namespace "<prefix>-<random>" with lo up.
func NewNS(prefix string) (*NS, error) {
	var b [3]byte
	rand.Read(b[:])
	name := prefix + "-" + hex.EncodeToString(b[:])
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name) // switches this thread into the new ns
	if serr := netns.Set(orig); serr != nil {
		panic("netlab: cannot return to the original netns: " + serr.Error())
	}
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	n := &NS{Name: name, h: h}
	if n.nl, err = netlink.NewHandleAt(h); err != nil {
		n.Close()
		return nil, err
	}
	lo, err := n.nl.LinkByName("lo")
	if err == nil {
		err = n.nl.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return n, nil
}

// Path is the namespace's bind mount, as a runtime passes it in CNI_NETNS.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// NL is a netlink handle inside the namespace.
func (n *NS) NL() *netlink.Handle { return n.nl }

// Do runs fn inside the namespace (containernetworking's ns.Do: on a
// thread of its own). Processes started from fn (such as a CNI plugin run
// by libcni) inherit it.
func (n *NS) Do(fn func() error) error {
	if n.cni == nil {
		c, err := ns.GetNS(n.Path())
		if err != nil {
			return err
		}
		n.cni = c
	}
	return n.cni.Do(func(ns.NetNS) error { return fn() })
}

// RemoveStale deletes named namespaces whose names start with one of the
// prefixes (left by a run that was killed) and returns how many it removed.
// A name that goes on with a process ID ("<prefix><pid>-...", see
// OwnedPrefix) is a live run's while that process exists, and is kept: two
// runs on one machine must not take each other's namespaces away.
func RemoveStale(prefixes ...string) (int, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		for _, p := range prefixes {
			if !strings.HasPrefix(e.Name(), p) {
				continue
			}
			if pid, _, ok := strings.Cut(e.Name()[len(p):], "-"); ok && pid != "" && strings.Trim(pid, "0123456789") == "" {
				if _, err := os.Stat("/proc/" + pid); err == nil {
					break // its run is alive
				}
			}
			if err := netns.DeleteNamed(e.Name()); err != nil {
				return n, err
			}
			n++
			break
		}
	}
	return n, nil
}

// OwnedPrefix is kind followed by this process's ID ("spntest-4242"): the
// prefix for the namespaces of a run that RemoveStale(kind+"-") of
// another run leaves alone while this process lives.
func OwnedPrefix(kind string) string { return kind + "-" + strconv.Itoa(os.Getpid()) }

// Sysctl writes /proc/sys/<key> inside the namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		// /proc/sys/net resolves to the namespace of the thread that opens it
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// SysctlValue reads /proc/sys/<key> inside the namespace, without its
// trailing newline.
func (n *NS) SysctlValue(key string) (string, error) {
	var b []byte
	err := n.Do(func() (err error) {
		b, err = os.ReadFile(filepath.Join("/proc/sys", key))
		return err
	})
	return strings.TrimSpace(string(b)), err
}

// Release closes this process's descriptors of the namespace (its handle
// and netlink sockets) and keeps the namespace: a pod a test only holds,
// reached by its path as a runtime does. NL and Handle are gone after it;
// Do reopens the namespace by its path; Close still deletes it.
func (n *NS) Release() {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.cni != nil {
		n.cni.Close()
		n.cni = nil
	}
	if n.h >= 0 {
		n.h.Close()
		n.h = -1
	}
}

// Close deletes the namespace; links inside it go with it.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	n.Release()
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Handle is the namespace's file descriptor (for IFLA_NET_NS_FD).
func (n *NS) Handle() int { return int(n.h) }
