package audit

import "unsafe"

// prefetchLines asks the CPU to bring the prefetchSpan bytes at p into its
// cache, without waiting for them (PREFETCHT0; never faults).
//
//go:noescape
func prefetchLines(p unsafe.Pointer)

// prefetchLine is prefetchLines for the one cache line at p.
//
//go:noescape
func prefetchLine(p unsafe.Pointer)
