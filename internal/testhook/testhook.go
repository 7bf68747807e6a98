//go:build !testhooks

// Package testhook marks the points where a test build (tag testhooks) can
// kill the process, to prove that a crash at that point leaves nothing a
// later DEL cannot clean. In production builds Point does nothing.
package testhook

// Point is a named crash point.
func Point(name string) {}
