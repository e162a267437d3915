package mask

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// TestSipHashVectors holds sum to SipHash-2-4's published test vectors
// (the reference implementation's vectors.h: key 00 01 .. 0f, messages
// 00 01 .. n-1), across every tail length and the 8-byte word boundary.
func TestSipHashVectors(t *testing.T) {
	var key [16]byte
	for i := range key {
		key[i] = byte(i)
	}
	k := newSipKey(key[:])
	for _, tt := range []struct {
		n    int
		want string // the output's bytes, little-endian, in hex
	}{
		{0, "310e0edd47db6f72"},
		{1, "fd67dc93c539f874"},
		{7, "37d1018bf50002ab"},
		{8, "6224939a79f5f593"},
		{9, "b0e4a90bdf82009e"},
		{15, "e545be4961ca29a1"},
		{16, "db9bc2577fcc2a3f"},
		{63, "724506eb4c328a95"},
	} {
		msg := make([]byte, tt.n)
		for i := range msg {
			msg[i] = byte(i)
		}
		var out [8]byte
		binary.LittleEndian.PutUint64(out[:], k.sum(msg))
		if got := hexOf(out[:]); got != tt.want {
			t.Errorf("SipHash-2-4 of %d bytes: %s, want %s", tt.n, got, tt.want)
		}
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestHashLetters holds the hash strategy's output to its definition: the
// 64 bits of the keyed SipHash, most significant nibble first, each nibble
// as a letter a-p (the hexadecimal digits 0-f moved to a-p).
func TestHashLetters(t *testing.T) {
	e := newEngine([]byte("0123456789abcdef0123456789abcdef"))
	hexToLetters := strings.NewReplacer("0", "a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "f", "6", "g", "7", "h",
		"8", "i", "9", "j", "a", "k", "b", "l", "c", "m", "d", "n", "e", "o", "f", "p")
	for _, tt := range []struct {
		v    string
		kind Kind
	}{
		{"", KindNone},
		{"user41000@corp-mail.com", KindEmail},
		{"4000000000041000", KindCard},
		{"a value longer than one SipHash word, and then some", KindNone},
	} {
		got := string(e.appendHash([]byte("prefix"), []byte(tt.v), tt.kind))
		want := "prefix[" + tt.kind.String() + ":" + hexToLetters.Replace(fmt.Sprintf("%016x", e.hash.sum([]byte(tt.v)))) + "]"
		if got != want {
			t.Errorf("appendHash(%q) = %q, want %q", tt.v, got, want)
		}
	}
	for _, x := range []uint32{0, 1, 0xf, 0x10, 0x89abcdef, 0xffffffff, 0x7f3e0a51} {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], nibbleLetters(x))
		if got, want := string(b[:]), hexToLetters.Replace(fmt.Sprintf("%08x", x)); got != want {
			t.Errorf("nibbleLetters(%#x) = %q, want %q", x, got, want)
		}
	}
}
