package drivers

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/spinneret-cni/spinneret/internal/netops"
	"github.com/spinneret-cni/spinneret/internal/txn"
)

// childAttrs are the attributes of a link (macvlan, ipvlan) created on a
// host master directly inside the pod namespace (RTM_NEWLINK with
// IFLA_NET_NS_FD: no temporary name in the host and no move), in the pod's
// link group; with the host handle to create it with.
func childAttrs(env *txn.Env, kind, name, master string, mtu, txqlen int) (*netlink.Handle, netlink.LinkAttrs, error) {
	host, err := env.Handle(txn.Host)
	if err != nil {
		return nil, netlink.LinkAttrs{}, err
	}
	m, err := host.LinkByName(master)
	if err != nil {
		return nil, netlink.LinkAttrs{}, fmt.Errorf("%s %s: master %q: %w", kind, name, master, err)
	}
	fd, err := env.PodNSFd()
	if err != nil {
		return nil, netlink.LinkAttrs{}, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex, attrs.MTU, attrs.Namespace = name, m.Attrs().Index, mtu, netlink.NsFd(fd)
	attrs.Group = netops.PodLinkGroup
	if txqlen > 0 {
		attrs.TxQLen = txqlen
	}
	return host, attrs, nil
}

// deleteChild deletes the pod's link name if it is of kind; a link of
// another kind is not ours (ADD refuses a pod netns that already has the
// name), and one that is gone counts as deleted.
func deleteChild(env *txn.Env, kind, name string) error {
	h, l, err := netops.Link(env, txn.Pod, name)
	if err != nil {
		return netops.IgnoreGone(err)
	}
	if l.Type() != kind {
		return nil
	}
	return netops.IgnoreGone(h.LinkDel(l))
}
