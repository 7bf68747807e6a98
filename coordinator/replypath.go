package coordinator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

func init() {
	txn.Register("replypath.add", func() txn.Op { return &ReplyPath{} })
}

// Reply path constants: connections that arrive through veth0 (NodePort
// with externalTrafficPolicy Local, where the node forwards a client's
// packet unchanged) are marked, and their replies routed back through
// veth0 by a fwmark rule into ReplyTable, instead of leaving by the
// underlay NIC that the client's address would otherwise route to.
const (
	ReplyMark         = 0x1
	ReplyTable        = 100
	ReplyRulePriority = 1000
	nftTable          = "spinneret"
)

// ReplyPath installs, in the pod's namespace and over netlink (nf_tables;
// no iptables binary is run), what Spiderpool does with iptables connmark:
// a NEW connection arriving on veth0 gets conntrack mark ReplyMark, and the
// pod's own packets of a marked connection get it as their fwmark.
type ReplyPath struct {
	Veth string `json:"veth"`
}

func (o *ReplyPath) Kind() string { return "replypath.add" }
func (o *ReplyPath) String() string {
	return fmt.Sprintf("mark connections arriving on %s (nftables inet %s) in pod", o.Veth, nftTable)
}

func (o *ReplyPath) conn(env *txn.Env) (*nftables.Conn, error) {
	fd, err := env.PodNSFd()
	if err != nil {
		return nil, err
	}
	return nftables.New(nftables.WithNetNSFd(fd))
}

func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// Do creates the table, its two chains and their rules in one batch.
func (o *ReplyPath) Do(env *txn.Env) error {
	c, err := o.conn(env)
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	// iifname "veth0" ct state new ct mark set 0x1
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(o.Veth)},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
		&expr.Immediate{Register: 1, Data: u32(ReplyMark)},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
	}})
	// ct mark 0x1 meta mark set ct mark (a route chain: the packet is routed
	// again with its new mark)
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(ReplyMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table inet %s: %w", nftTable, err)
	}
	return nil
}

// Undo deletes the table with its chains and rules.
func (o *ReplyPath) Undo(env *txn.Env) error {
	c, err := o.conn(env)
	if err != nil {
		if errors.Is(err, txn.ErrGone) {
			return nil
		}
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete nftables table inet %s: %w", nftTable, err)
	}
	return nil
}

// Check reports a missing table or chain.
func (o *ReplyPath) Check(env *txn.Env) error {
	c, err := o.conn(env)
	if err != nil {
		return err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	found := 0
	for _, ch := range chains {
		if ch.Table.Name == nftTable && (ch.Name == "prerouting" || ch.Name == "output") {
			found++
		}
	}
	if found != 2 {
		return fmt.Errorf("nftables table inet %s: %d of its 2 chains present", nftTable, found)
	}
	return nil
}
