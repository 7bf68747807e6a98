// Package statedir is the layout of the node's state dir (node conf
// stateDir): where each part of spinneret keeps what it must find again in
// a later call, after a crash or after an upgrade. Every path directly
// under the state dir is named here, and only here; a part owns what is
// under its own path (the local IPAM store its files under IPAM).
package statedir

import (
	"fmt"
	"hash/fnv"
	"path/filepath"
)

// Journal is the directory of one network's journals (internal/txn).
func Journal(stateDir, network string) string { return filepath.Join(stateDir, "journal", network) }

// IPAM is the local IPAM store (ipam.Local).
func IPAM(stateDir string) string { return filepath.Join(stateDir, "ipam") }

// KubePoolCache is the kubernetes IPAM backend's node copy of the IPPool
// and ReservedIP lists.
func KubePoolCache(stateDir string) string { return filepath.Join(IPAM(stateDir), "kube-pools.json") }

// KubeViews holds the kubernetes IPAM backend's node view of each pool
// (its allocations list and the node's own picks).
func KubeViews(stateDir string) string { return filepath.Join(IPAM(stateDir), "kube-views") }

// Locks holds the lock files: the attachments' stripes and HostRulesLock.
func Locks(stateDir string) string { return filepath.Join(stateDir, "locks") }

// lockStripes is how many lock files attachments hash onto. A file per
// attachment would cost a file creation per pod; with stripes the files
// exist after the first few pods, and two attachments share a lock only
// rarely (they then wait for each other, or GC retries one next time).
const lockStripes = 64

// AttachmentLock is the lock file (a stripe) of the attachment of key
// (txn.Key): ADD, DEL and GC of one attachment hold it.
func AttachmentLock(stateDir, key string) string {
	h := fnv.New32a()
	h.Write([]byte(key))
	return filepath.Join(Locks(stateDir), fmt.Sprintf("%02d", h.Sum32()%lockStripes))
}

// HostRulesLock serialises changes to the node's shared policy rule.
func HostRulesLock(stateDir string) string { return filepath.Join(Locks(stateDir), "host-rules") }

// HostRuleUsers holds a file per route that uses the node's shared rule
// "from all lookup <table>" of a family (netlink.FAMILY_V4 or _V6): the
// coordinator's count of who needs that rule.
func HostRuleUsers(stateDir string, table, family int) string {
	v := "v4"
	if family != 2 { // unix.AF_INET
		v = "v6"
	}
	return filepath.Join(stateDir, "host-rules", fmt.Sprintf("%d-%s", table, v))
}

// ClusterNetwork is the node's copy of the cluster CIDRs the controller
// published.
func ClusterNetwork(stateDir string) string { return filepath.Join(stateDir, "cluster-network.json") }

// SRIOV holds the per-VF locks and records of the sriov driver.
func SRIOV(stateDir string) string { return filepath.Join(stateDir, "sriov") }

// Ifacer holds the records of the bonds and VLAN links the ifacer created
// and the attachments using each.
func Ifacer(stateDir string) string { return filepath.Join(stateDir, "ifacer") }

// Delegate is libcni's result cache of delegate networks (their DEL and
// CHECK get the ADD's result from it).
func Delegate(stateDir string) string { return filepath.Join(stateDir, "delegate") }

// APISessions holds the API client's TLS sessions, one file per API
// server and identity, for the next process to resume.
func APISessions(stateDir string) string { return filepath.Join(stateDir, "api-sessions") }
