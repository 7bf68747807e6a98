//go:build !testhooks

// Package testhook is spinneret's one fault-injection mechanism. A test
// build (tag testhooks) can fail a plan step, or kill the process at a
// plan step or at a named crash point, to prove that a failure or a crash
// there leaves nothing a rollback or a later DEL cannot clean. In
// production builds both hooks do nothing (and are inlined away).
package testhook

// Point is a named crash point.
func Point(name string) {}

// BootID is the node's boot identity: real, read from the kernel. A test
// build may name another boot, to test what a DEL does after a reboot.
func BootID(real string) string { return real }

// Step is called before plan step i runs (i = the plan's length after the
// last); an error fails that step.
func Step(i int) error { return nil }
