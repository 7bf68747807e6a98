// Package doctor checks a node (and, with a kubeconfig, the cluster) for
// what stops spinneret from giving pods their NICs, and says how to fix
// each finding: `spinneret doctor`. It reads and never changes anything.
// It is in spinneret-node (it speaks the CRI), not in the plugin.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spinneret-cni/spinneret/conf"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/nodeagent"
)

// Status is a finding's verdict.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn" // works, but an operator should know
	Fail Status = "fail" // pods will not get (some of) their NICs
)

// Finding is one check's result on one subject.
type Finding struct {
	Check   string `json:"check"`
	Subject string `json:"subject,omitempty"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// Report is every finding, node checks first.
type Report struct {
	Node     string    `json:"node,omitempty"`
	Findings []Finding `json:"findings"`
}

// Failed reports whether any finding failed.
func (r *Report) Failed() bool {
	for _, f := range r.Findings {
		if f.Status == Fail {
			return true
		}
	}
	return false
}

func (r *Report) add(check, subject string, s Status, msg, fix string) {
	r.Findings = append(r.Findings, Finding{Check: check, Subject: subject, Status: s, Message: msg, Fix: fix})
}

func (r *Report) ok(check, subject, msg string) { r.add(check, subject, OK, msg, "") }

// Options say where to look.
type Options struct {
	// Conflist is the installed conflist.
	Conflist string
	// Root prefixes the node's /etc paths (tests; "" is /).
	Root string
	// Sandboxes lists the runtime's sandboxes; RuntimeVersion asks the
	// runtime its name and version, and its CNI status. Nil: not asked.
	Sandboxes nodeagent.Sandboxes
	Runtime   func(ctx context.Context) (*RuntimeInfo, error)
	// Cluster checks are skipped with NoCluster, or when neither
	// Kubeconfig nor the node conf names a kubeconfig (Kubeconfig wins:
	// the node's credential may read too little for them).
	NoCluster  bool
	Kubeconfig string
	// LeaseStale is how old the controller's Lease may be (default 1m).
	LeaseStale time.Duration
}

// Run runs every check.
func Run(ctx context.Context, o Options) *Report {
	r := &Report{}
	cfg, node := r.config(o)
	if node != nil {
		r.Node = node.NodeName
		r.masters(cfg, node)
		r.sysctls(cfg)
		r.managers(o.Root)
		r.hostRule(cfg)
		r.journals(ctx, o, cfg, node)
	}
	if cfg != nil {
		r.runtime(ctx, o, cfg)
	}
	if node != nil && !o.NoCluster {
		kc := node.Kubeconfig
		if o.Kubeconfig != "" {
			kc = o.Kubeconfig
		}
		if kc == "" {
			r.ok("cluster", "", "no kubeconfig in the node conf: cluster checks skipped")
		} else if c, err := kube.Load(kc, node.APITimeout); err != nil {
			r.add("cluster", kc, Fail, "the kubeconfig: "+err.Error(),
				"the installer writes it (spinneret install); check /etc/spinneret and the spinneret-node ServiceAccount")
		} else {
			r.cluster(ctx, o, c, cfg, node)
		}
	}
	return r
}

// Text writes the report for a reader: each finding with its fix, fails
// first, then a summary line.
func (r *Report) Text(w io.Writer) {
	order := map[Status]int{Fail: 0, Warn: 1, OK: 2}
	fs := append([]Finding(nil), r.Findings...)
	sort.SliceStable(fs, func(i, j int) bool { return order[fs[i].Status] < order[fs[j].Status] })
	n := map[Status]int{}
	for _, f := range fs {
		n[f.Status]++
		subj := ""
		if f.Subject != "" {
			subj = " " + f.Subject
		}
		fmt.Fprintf(w, "%-4s  %s%s: %s\n", strings.ToUpper(string(f.Status)), f.Check, subj, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
	node := ""
	if r.Node != "" {
		node = " on node " + r.Node
	}
	fmt.Fprintf(w, "\n%d failed, %d warnings, %d ok%s\n", n[Fail], n[Warn], n[OK], node)
}

// JSON writes the report as JSON.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// masterLinks are the node links the catalogue's networks hang off, by
// network: each master (a VLAN's parent), or a bond's slaves, resolved by
// the node conf; delegate networks have none.
func masterLinks(cfg *conf.Config, node *conf.Node) map[string][]string {
	out := map[string][]string{}
	for _, n := range cfg.Networks {
		if n.Delegate != nil {
			continue
		}
		logical := []string{n.Master}
		if n.Bond != nil {
			logical = n.Bond.Slaves
		}
		for _, l := range logical {
			if l == "" {
				continue
			}
			real, err := node.ResolveMaster(l)
			if err != nil {
				real = "!" + err.Error()
			}
			out[n.Name] = append(out[n.Name], real)
		}
	}
	return out
}
