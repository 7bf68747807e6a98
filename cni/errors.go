package cni

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/spinneret-cni/spinneret/coordinator"
	"github.com/spinneret-cni/spinneret/facts"
	"github.com/spinneret-cni/spinneret/internal/kube"
	"github.com/spinneret-cni/spinneret/internal/txn"
	"github.com/spinneret-cni/spinneret/ipam"
)

// Plugin-specific CNI error codes (100+ are free for plugins).
const (
	ErrPoolExhausted      uint = 101 // no free address in the network's pools
	ErrStepFailed         uint = 102 // a plan step failed; everything was rolled back
	ErrRollbackIncomplete uint = 103 // a step failed and its rollback did not finish; DEL retries it
	ErrBadRequest         uint = 104 // the pod's annotations (or CNI_ARGS) ask for something invalid
	ErrIPConflict         uint = 105 // another host answers for the pod's address; it is quarantined
	ErrGatewayUnreachable uint = 106 // a gateway did not answer ARP/NDP probes
	ErrAPIUnauthorized    uint = 107 // the API server refused the node's credentials (401): its kubeconfig
	ErrAPIForbidden       uint = 108 // the API server forbade the request (403): the node's RBAC
)

// apiCode is the code of an API server's answer that is not the pod's
// doing: its credentials refused or forbidden, or the server throttling
// (429) or failing (5xx), which a retry may mend (11). A 404 or 409 is
// decided where it is met.
func apiCode(err error) (uint, bool) {
	var se *kube.StatusError
	if !errors.As(err, &se) {
		return 0, false
	}
	switch {
	case se.Code == 401:
		return ErrAPIUnauthorized, true
	case se.Code == 403:
		return ErrAPIForbidden, true
	case se.Code == 429, se.Code >= 500:
		return types.ErrTryAgainLater, true
	}
	return 0, false
}

// codedError is a failure whose code is decided where it happened.
type codedError struct {
	code uint
	error
}

func (e *codedError) Unwrap() error { return e.error }

// errorCode is the CNI code of a failed ADD's cause, first match wins.
func errorCode(err error) uint {
	var (
		conflict *coordinator.ConflictError
		coded    *codedError
		step     *txn.StepError
		plugin   *ipam.DelegateError
		te       *types.Error
		refused  *facts.RefusedError
	)
	api, isAPI := apiCode(err)
	switch {
	case errors.As(err, &conflict):
		return ErrIPConflict
	case errors.Is(err, coordinator.ErrGatewayUnreachable):
		return ErrGatewayUnreachable
	case errors.As(err, &coded):
		return coded.code
	case errors.As(err, &refused):
		return ErrBadRequest
	case isAPI:
		return api
	case errors.As(err, &step), errors.As(err, &plugin):
		return ErrStepFailed
	case errors.As(err, &te):
		return te.Code
	case errors.Is(err, ipam.ErrExhausted):
		return ErrPoolExhausted
	case errors.Is(err, ipam.ErrStaticTaken), errors.Is(err, ipam.ErrStaticOutside), errors.Is(err, ipam.ErrStaticRefused):
		return ErrBadRequest
	case errors.Is(err, kube.ErrUnreachable):
		return types.ErrTryAgainLater
	}
	return types.ErrIOFailure
}
