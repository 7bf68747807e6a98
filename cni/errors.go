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
)

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
	switch {
	case errors.As(err, &conflict):
		return ErrIPConflict
	case errors.Is(err, coordinator.ErrGatewayUnreachable):
		return ErrGatewayUnreachable
	case errors.As(err, &coded):
		return coded.code
	case errors.As(err, &refused):
		return ErrBadRequest
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
