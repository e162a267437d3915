//go:build !amd64

package audit

import "unsafe"

// prefetchLines does nothing here: only amd64 has the instruction wired.
func prefetchLines(unsafe.Pointer) {}

// prefetchLine does nothing here.
func prefetchLine(unsafe.Pointer) {}
