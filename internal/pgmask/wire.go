package pgmask

import (
	"bytes"
	"encoding/binary"
)

// The client messages the stage reads on every statement are walked in
// place, not decoded into pgproto3 structs (which allocate their slices
// and strings each time): only the portal name is taken, and a message is
// accepted exactly when pgproto3 would decode it.

// bindPortal is a Bind's destination portal; ok is false when the Bind is
// malformed.
func bindPortal(b []byte) (portal []byte, ok bool) {
	z := bytes.IndexByte(b, 0)
	if z < 0 {
		return nil, false
	}
	portal, b = b[:z], b[z+1:]
	if z = bytes.IndexByte(b, 0); z < 0 { // the prepared statement
		return nil, false
	}
	b = b[z+1:]
	if len(b) < 2 { // parameter format codes
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if b = b[2:]; len(b) < 2*n {
		return nil, false
	}
	b = b[2*n:]
	if len(b) < 2 { // parameters
		return nil, false
	}
	n = int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for range n {
		if len(b) < 4 {
			return nil, false
		}
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l == -1 {
			continue
		}
		if l < 0 || len(b) < l {
			return nil, false
		}
		b = b[l:]
	}
	if len(b) < 2 { // result format codes
		return nil, false
	}
	n = int(binary.BigEndian.Uint16(b))
	if len(b[2:]) < 2*n {
		return nil, false
	}
	return portal, true
}

// executePortal is an Execute's portal; ok is false when it is malformed.
func executePortal(b []byte) (portal []byte, ok bool) {
	z := bytes.IndexByte(b, 0)
	if z < 0 || len(b[z+1:]) < 4 {
		return nil, false
	}
	return b[:z], true
}

// describedPortal is the portal a Describe names; ok is false for a
// Describe of a statement, or a malformed one.
func describedPortal(b []byte) (portal []byte, ok bool) {
	if len(b) < 2 || b[0] != 'P' {
		return nil, false
	}
	if bytes.IndexByte(b[1:], 0) != len(b)-2 {
		return nil, false // the name's end is the message's
	}
	return b[1 : len(b)-1], true
}
