package pgmask

import (
	"bytes"
	"testing"
)

func TestScrubValues(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`invalid input syntax for type integer: "Alice Zephyrine"`, `invalid input syntax for type integer: "[redacted]"`},
		{`invalid value "Alic" for "YYYY"`, `invalid value "[redacted]"`},
		{`Key (email)=(alice@x.com) already exists.`, `Key (email)=([redacted]) already exists.`},
		{`Failing row contains (1, Alice, null).`, `Failing row contains ([redacted]).`},
		{`Token "Al"ice" is invalid.`, `Token "[redacted]" is invalid.`},
		{`value 'O'Brien' here`, `value '[redacted]' here`},
		{`unterminated "Alice`, `unterminated "[redacted]"`},
		{`Key (a, b)=(x, "y)z") conflicts`, `Key (a, b)=([redacted]) conflicts`},
		{`JSON data, line 1: Alice...`, ``}, // nothing quoted: left to the detectors
		{`division by zero`, ``},
	} {
		got, ok := scrubValues([]byte(c.in))
		if c.want == "" {
			if ok {
				t.Errorf("%q: scrubbed to %q, want it left alone", c.in, got)
			}
			continue
		}
		if !ok || string(got) != c.want {
			t.Errorf("%q: got %q %v, want %q", c.in, got, ok, c.want)
		}
	}
}

// FuzzScrubValues: whatever a server text holds, what is left of it after
// the scrub has at most the two quotes around the marker, everything that
// was between the outermost quotes is gone, and a second scrub changes
// nothing more.
func FuzzScrubValues(f *testing.F) {
	for _, s := range []string{`a "b" c`, `Key (k)=(v) x`, `Failing row contains (1, 2).`, `'`, `"''"`, `x)=(`, `contains (`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		out, ok := scrubValues(v)
		if !ok {
			if bytes.ContainsAny(v, `"'`) || bytes.Contains(v, []byte(")=(")) || bytes.Contains(v, []byte("contains (")) {
				t.Fatalf("%q: something quoted was left", v)
			}
			return
		}
		// out is a head of v, the marker, and a tail of v (or one
		// closing character); nothing between the first quote and the
		// last is in the head or the tail.
		i := bytes.Index(out, []byte(scrubMarker))
		if i < 0 {
			t.Fatalf("%q → %q: no marker", v, out)
		}
		head, tail := out[:i], out[i+len(scrubMarker):]
		if !bytes.HasPrefix(v, head) || !bytes.HasSuffix(v, tail) && len(tail) != 1 {
			t.Fatalf("%q → %q: not a head, the marker and a tail", v, out)
		}
		first := bytes.IndexAny(v, `"'`)
		last := bytes.LastIndexAny(v, `"'`)
		if first >= 0 && (len(head) > first+1 || bytes.HasSuffix(v, tail) && len(v)-len(tail) < last) {
			t.Fatalf("%q → %q: a quoted run survived", v, out)
		}
		if n := bytes.Count(out, []byte(`"`)) + bytes.Count(out, []byte(`'`)); n > 2 {
			t.Fatalf("%q → %q: %d quotes left", v, out, n)
		}
		again, _ := scrubValues(out)
		if again != nil && !bytes.Equal(again, out) {
			t.Fatalf("%q → %q → %q: not stable", v, out, again)
		}
	})
}
