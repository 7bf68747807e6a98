package cni

import (
	"encoding/json"
	"fmt"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/spinneret-cni/spinneret/internal/txn"
)

// summary is what the one line a call ends with says of the attachment
// besides the call itself: the pod's NICs and addresses, how many
// journal steps the call ran or undid, the step that failed, and for GC
// how many attachments it removed. An operator reads an ADD or a DEL from
// that one line; the lines before it are the detail.
type summary struct {
	nics, addrs []string
	steps       int
	failed      *txn.StepError
	removed     int
}

// fromResult takes the NICs ("eth0", "net1", ...) and their addresses
// ("net1=192.0.2.10/24") from a result of spinneret's.
func (s *summary) fromResult(res *current.Result) {
	if res == nil {
		return
	}
	s.nics, s.addrs = nil, nil
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			s.nics = append(s.nics, i.Name)
		}
	}
	for _, ip := range res.IPs {
		name := "?"
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(res.Interfaces) {
			name = res.Interfaces[*ip.Interface].Name
		}
		s.addrs = append(s.addrs, name+"="+ip.Address.String())
	}
}

// fromJournal takes the summary of an attachment's journal: its steps,
// and its NICs and addresses when its ADD committed a result.
func (s *summary) fromJournal(j *txn.Journal) {
	s.steps = len(j.Steps)
	if len(j.Result) == 0 {
		return
	}
	var res current.Result
	if json.Unmarshal(j.Result, &res) == nil {
		s.fromResult(&res)
	}
}

// attrs are the summary's log attributes; those with nothing to say are
// left out.
func (s *summary) attrs() []any {
	var a []any
	if len(s.nics) > 0 {
		a = append(a, "nics", strings.Join(s.nics, ","))
	}
	if len(s.addrs) > 0 {
		a = append(a, "addresses", strings.Join(s.addrs, ","))
	}
	if s.steps > 0 {
		a = append(a, "steps", s.steps)
	}
	if s.removed > 0 {
		a = append(a, "removed", s.removed)
	}
	if f := s.failed; f != nil {
		a = append(a, "failed-step", fmt.Sprintf("%d/%d %s", f.Index+1, f.Total, f.Op))
	}
	return a
}
