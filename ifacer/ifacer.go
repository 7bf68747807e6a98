// Package ifacer ensures the node-side parents pods' NICs need: a bond of
// physical slaves, a VLAN link on a master or on the bond. Parents are
// shared by every pod on them, so:
//
//   - all work happens under one node-wide lock;
//   - an existing parent is reused if it has the configured shape, and
//     refused, with what differs, if not (nothing is changed then);
//   - a parent spinneret creates has a record (<stateDir>/ifacer/<name>.json)
//     listing the attachments using it, written before the parent is
//     created; an attachment's undo (rollback or DEL) takes itself off the
//     list, and the last one off removes the parent (a bond's slaves get
//     their original state back). A parent spinneret did not create has no
//     record and is never removed.
package ifacer

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/statedir"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("ifacer.bond", func() txn.Op { return &Bond{} })
	txn.Register("ifacer.vlan", func() txn.Op { return &VLAN{} })
}

// record is what spinneret keeps of a parent it created.
type record struct {
	Kind  string   `json:"kind"`
	Users []string `json:"users"`
	// SlavesUp are the slaves that were up before they were enslaved.
	SlavesUp []string `json:"slavesUp,omitempty"`
	// Boot is the boot the parent was created in ("": written before
	// records had one, taken as this boot's).
	Boot string `json:"boot,omitempty"`
}

// stale reports whether the record is of an earlier boot.
func (r *record) stale() bool { return r.Boot != "" && txn.BootID() != "" && r.Boot != txn.BootID() }

func dir(env *txn.Env) string { return statedir.Ifacer(env.StateDir) }

func lock(env *txn.Env) (*fileutil.Lock, error) {
	if err := os.MkdirAll(dir(env), 0o700); err != nil {
		return nil, fmt.Errorf("ifacer: %w", err)
	}
	return fileutil.LockFile(filepath.Join(dir(env), "lock"))
}

func readRecord(env *txn.Env, name string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir(env), name+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ifacer: record of %s: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("ifacer: record of %s: %w", name, err)
	}
	return &r, nil
}

func writeRecord(env *txn.Env, name string, r *record) error {
	if r.Boot == "" {
		r.Boot = txn.BootID()
	}
	b, _ := json.Marshal(r)
	if err := fileutil.WriteAtomic(filepath.Join(dir(env), name+".json"), b); err != nil {
		return fmt.Errorf("ifacer: record of %s: %w", name, err)
	}
	return nil
}

func removeRecord(env *txn.Env, name string) error {
	err := os.Remove(filepath.Join(dir(env), name+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ifacer: record of %s: %w", name, err)
	}
	return nil
}

func addUser(r *record, user string) {
	if !slices.Contains(r.Users, user) {
		r.Users = append(r.Users, user)
	}
}

// release takes user off a created parent's record; the last one off
// removes the parent with remove (under the lock).
func release(env *txn.Env, name, user string, remove func(*record) error) error {
	l, err := lock(env)
	if err != nil {
		return err
	}
	defer l.Unlock()
	r, err := readRecord(env, name)
	if err != nil || r == nil {
		return err // not ours: never removed
	}
	r.Users = slices.DeleteFunc(r.Users, func(u string) bool { return u == user })
	if len(r.Users) > 0 {
		return writeRecord(env, name, r)
	}
	if r.stale() || remove == nil {
		// the parent it records went with its boot
		return removeRecord(env, name)
	}
	if err := remove(r); err != nil {
		return err
	}
	return removeRecord(env, name)
}

// ensure is the common part of Bond.Do and VLAN.Do, under the node lock:
// an existing link named name is reused if differs finds nothing (the
// attachment added to its record, if spinneret created it) and set up;
// otherwise prepare checks what the new parent needs and returns the
// record to keep (given the one left by an ADD that died before creating
// the link, if any) and how to create it. The record, with user on it, is
// written before create runs.
func ensure(env *txn.Env, name, user string, differs func(*netlink.Handle, netlink.Link) (string, error),
	prepare func(h *netlink.Handle, r *record) (*record, func() error, error)) error {
	h, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	l, err := lock(env)
	if err != nil {
		return err
	}
	defer l.Unlock()
	r, err := readRecord(env, name)
	if err != nil {
		return err
	}
	link, lerr := h.LinkByName(name)
	if r != nil && r.stale() {
		// made in an earlier boot: a link there now is not spinneret's
		// (its record would be of this boot), and none means a new one
		if lerr == nil {
			if err := removeRecord(env, name); err != nil {
				return err
			}
		}
		r = nil
	}
	if lerr == nil {
		why, err := differs(h, link)
		if err != nil {
			return err
		}
		if why != "" {
			return errors.New(why)
		}
		if r != nil {
			addUser(r, user)
			if err := writeRecord(env, name, r); err != nil {
				return err
			}
		}
		return netops.IgnoreGone(h.LinkSetUp(link))
	} else if !netops.Gone(lerr) {
		return lerr
	}
	r, create, err := prepare(h, r)
	if err != nil {
		return err
	}
	addUser(r, user)
	if err := writeRecord(env, name, r); err != nil {
		return err
	}
	return create()
}

// Bond ensures a bond of the slaves with the mode and options.
type Bond struct {
	Name    string            `json:"name"`
	Mode    string            `json:"mode"`
	Options map[string]string `json:"options,omitempty"`
	Slaves  []string          `json:"slaves"`
	// User is the attachment this ensures it for.
	User string `json:"user"`
}

func (o *Bond) Kind() string { return "ifacer.bond" }
func (o *Bond) String() string {
	return fmt.Sprintf("ensure bond %s (%s, slaves %s) on the node", o.Name, o.Mode, strings.Join(o.Slaves, ", "))
}

// differs says how an existing bond differs from the op ("" if it does not).
func (o *Bond) differs(h *netlink.Handle, l netlink.Link) (string, error) {
	b, ok := l.(*netlink.Bond)
	if !ok {
		return fmt.Sprintf("%s is a %s link, not a bond", o.Name, l.Type()), nil
	}
	var diffs []string
	if got := b.Mode.String(); got != o.Mode {
		diffs = append(diffs, fmt.Sprintf("mode %s, config %s", got, o.Mode))
	}
	links, err := netops.LinkList(h)
	if err != nil {
		return "", err
	}
	var slaves []string
	for _, s := range links {
		if s.Attrs().MasterIndex == b.Index {
			slaves = append(slaves, s.Attrs().Name)
		}
	}
	want := slices.Clone(o.Slaves)
	sort.Strings(slaves)
	sort.Strings(want)
	if !slices.Equal(slaves, want) {
		have := strings.Join(slaves, ", ")
		if have == "" {
			have = "none"
		}
		diffs = append(diffs, fmt.Sprintf("slaves %s, config %s", have, strings.Join(want, ", ")))
	}
	for _, k := range sortedKeys(o.Options) {
		if got := bondOption(b, k); got != o.Options[k] {
			diffs = append(diffs, fmt.Sprintf("%s %s, config %s", k, got, o.Options[k]))
		}
	}
	if len(diffs) == 0 {
		return "", nil
	}
	return fmt.Sprintf("bond %s exists with %s", o.Name, strings.Join(diffs, "; ")), nil
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// bondOption is the kernel's value of an option, as the config writes it.
func bondOption(b *netlink.Bond, k string) string {
	switch k {
	case "miimon":
		return strconv.Itoa(b.Miimon)
	case "updelay":
		return strconv.Itoa(b.UpDelay)
	case "downdelay":
		return strconv.Itoa(b.DownDelay)
	case "min_links":
		return strconv.Itoa(b.MinLinks)
	case "lacp_rate":
		return b.LacpRate.String()
	case "xmit_hash_policy":
		return b.XmitHashPolicy.String()
	}
	return ""
}

func (o *Bond) newLink() (*netlink.Bond, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = o.Name
	b := netlink.NewLinkBond(attrs)
	b.Mode = netlink.StringToBondMode(o.Mode)
	for k, v := range o.Options {
		n, _ := strconv.Atoi(v)
		switch k {
		case "miimon":
			b.Miimon = n
		case "updelay":
			b.UpDelay = n
		case "downdelay":
			b.DownDelay = n
		case "min_links":
			b.MinLinks = n
		case "lacp_rate":
			b.LacpRate = netlink.StringToBondLacpRate(v)
		case "xmit_hash_policy":
			b.XmitHashPolicy = netlink.StringToBondXmitHashPolicy(v)
		default:
			return nil, fmt.Errorf("bond %s: unknown option %q", o.Name, k)
		}
	}
	return b, nil
}

// Do ensures the bond: reused if it has the configured shape, created
// (record first) if it does not exist.
func (o *Bond) Do(env *txn.Env) error {
	return ensure(env, o.Name, o.User, o.differs, func(h *netlink.Handle, r *record) (*record, func() error, error) {
		var slaves []netlink.Link
		for _, s := range o.Slaves {
			sl, err := h.LinkByName(s)
			if err != nil {
				return nil, nil, fmt.Errorf("bond %s: slave %s: %w", o.Name, s, err)
			}
			if sl.Attrs().MasterIndex != 0 {
				m, _ := h.LinkByIndex(sl.Attrs().MasterIndex)
				owner := strconv.Itoa(sl.Attrs().MasterIndex)
				if m != nil {
					owner = m.Attrs().Name
				}
				return nil, nil, fmt.Errorf("bond %s: slave %s already belongs to %s", o.Name, s, owner)
			}
			slaves = append(slaves, sl)
		}
		bond, err := o.newLink()
		if err != nil {
			return nil, nil, err
		}
		if r == nil {
			r = &record{Kind: "bond"}
			for _, sl := range slaves {
				if sl.Attrs().Flags&net.FlagUp != 0 {
					r.SlavesUp = append(r.SlavesUp, sl.Attrs().Name)
				}
			}
		}
		return r, func() error { return o.create(h, bond, slaves) }, nil
	})
}

func (o *Bond) create(h *netlink.Handle, bond *netlink.Bond, slaves []netlink.Link) error {
	if err := h.LinkAdd(bond); err != nil {
		return fmt.Errorf("create bond %s: %w", o.Name, err)
	}
	for _, sl := range slaves {
		// a slave is enslaved down
		if err := h.LinkSetDown(sl); err != nil {
			return fmt.Errorf("bond %s: slave %s down: %w", o.Name, sl.Attrs().Name, err)
		}
		if err := h.LinkSetMasterByIndex(sl, bond.Index); err != nil {
			return fmt.Errorf("bond %s: enslave %s: %w", o.Name, sl.Attrs().Name, err)
		}
		if err := h.LinkSetUp(sl); err != nil {
			return fmt.Errorf("bond %s: slave %s up: %w", o.Name, sl.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(bond); err != nil {
		return fmt.Errorf("bond %s up: %w", o.Name, err)
	}
	return nil
}

// Undo takes the attachment off the bond's users; the last one removes the
// bond spinneret created and gives its slaves their original state.
func (o *Bond) Undo(env *txn.Env) error {
	h, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	return release(env, o.Name, o.User, func(r *record) error {
		if l, err := h.LinkByName(o.Name); err == nil {
			if err := h.LinkDel(l); err != nil && !netops.Gone(err) {
				return fmt.Errorf("delete bond %s: %w", o.Name, err)
			}
		} else if !netops.Gone(err) {
			return err
		}
		for _, s := range o.Slaves {
			sl, err := h.LinkByName(s)
			if err != nil {
				continue
			}
			if slices.Contains(r.SlavesUp, s) {
				h.LinkSetUp(sl)
			} else {
				h.LinkSetDown(sl)
			}
		}
		return nil
	})
}

// Check reports a missing, reshaped or down bond.
func (o *Bond) Check(env *txn.Env) error {
	h, l, err := netops.Link(env, txn.Host, o.Name)
	if err != nil {
		return err
	}
	why, err := o.differs(h, l)
	if err != nil {
		return err
	}
	if why != "" {
		return errors.New(why)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("bond %s is down", o.Name)
	}
	return nil
}

// VLAN ensures a VLAN link of the ID on the parent.
type VLAN struct {
	Name   string `json:"name"`
	Parent string `json:"parent"`
	ID     int    `json:"id"`
	User   string `json:"user"`
}

func (o *VLAN) Kind() string { return "ifacer.vlan" }
func (o *VLAN) String() string {
	return fmt.Sprintf("ensure VLAN %d on %s as %s on the node", o.ID, o.Parent, o.Name)
}

// VLANName is the VLAN link spinneret uses for id on parent.
func VLANName(parent string, id int) string { return parent + "." + strconv.Itoa(id) }

func (o *VLAN) differs(h *netlink.Handle, l netlink.Link) string {
	v, ok := l.(*netlink.Vlan)
	if !ok {
		return fmt.Sprintf("%s exists and is a %s link, not a VLAN", o.Name, l.Type())
	}
	parent, err := h.LinkByIndex(v.ParentIndex)
	pname := strconv.Itoa(v.ParentIndex)
	if err == nil {
		pname = parent.Attrs().Name
	}
	if v.VlanId != o.ID || pname != o.Parent {
		return fmt.Sprintf("%s exists as VLAN %d on %s, config VLAN %d on %s", o.Name, v.VlanId, pname, o.ID, o.Parent)
	}
	return ""
}

// Do ensures the VLAN link: reused if it is this VLAN on this parent,
// created (record first) if it does not exist; a VLAN of the ID on the
// parent under another name is refused.
func (o *VLAN) Do(env *txn.Env) error {
	differs := func(h *netlink.Handle, l netlink.Link) (string, error) { return o.differs(h, l), nil }
	return ensure(env, o.Name, o.User, differs, func(h *netlink.Handle, r *record) (*record, func() error, error) {
		parent, err := h.LinkByName(o.Parent)
		if err != nil {
			return nil, nil, fmt.Errorf("VLAN %d: parent %s: %w", o.ID, o.Parent, err)
		}
		links, err := netops.LinkList(h)
		if err != nil {
			return nil, nil, err
		}
		for _, x := range links {
			if v, ok := x.(*netlink.Vlan); ok && v.ParentIndex == parent.Attrs().Index && v.VlanId == o.ID {
				return nil, nil, fmt.Errorf("VLAN %d on %s exists as %s (spinneret's name for it is %s)", o.ID, o.Parent, v.Name, o.Name)
			}
		}
		if r == nil {
			r = &record{Kind: "vlan"}
		}
		return r, func() error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.ParentIndex = o.Name, parent.Attrs().Index
			v := &netlink.Vlan{LinkAttrs: attrs, VlanId: o.ID}
			if err := h.LinkAdd(v); err != nil {
				return fmt.Errorf("create VLAN %d on %s: %w", o.ID, o.Parent, err)
			}
			if err := h.LinkSetUp(v); err != nil {
				return fmt.Errorf("VLAN %s up: %w", o.Name, err)
			}
			return nil
		}, nil
	})
}

// UndoEarlierBoot takes an attachment of an earlier boot off the bond's
// record; no link is touched (txn.Durable).
func (o *Bond) UndoEarlierBoot(env *txn.Env) error { return release(env, o.Name, o.User, nil) }

// UndoEarlierBoot takes an attachment of an earlier boot off the VLAN's
// record; no link is touched (txn.Durable).
func (o *VLAN) UndoEarlierBoot(env *txn.Env) error { return release(env, o.Name, o.User, nil) }

// Undo takes the attachment off the VLAN's users; the last one removes the
// VLAN link spinneret created.
func (o *VLAN) Undo(env *txn.Env) error {
	h, err := env.Handle(txn.Host)
	if err != nil {
		return err
	}
	return release(env, o.Name, o.User, func(*record) error {
		l, err := h.LinkByName(o.Name)
		if err != nil {
			return netops.IgnoreGone(err)
		}
		if err := h.LinkDel(l); err != nil && !netops.Gone(err) {
			return fmt.Errorf("delete VLAN %s: %w", o.Name, err)
		}
		return nil
	})
}

// Check reports a missing, reshaped or down VLAN link.
func (o *VLAN) Check(env *txn.Env) error {
	h, l, err := netops.Link(env, txn.Host, o.Name)
	if err != nil {
		return err
	}
	if why := o.differs(h, l); why != "" {
		return errors.New(why)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("VLAN %s is down", o.Name)
	}
	return nil
}
