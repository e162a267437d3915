package pgwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Buffer sizes of a pump. An idle session holds only the small inline
// buffer of each pump; the big ones are pooled and taken while data flows,
// so thousands of idle sessions cost little memory.
const (
	smallBuf = 512
	bigBuf   = 16 << 10
)

var bigPool = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

// errTooLong is a client message over the configured limit.
type errTooLong struct{ n, max int }

func (e errTooLong) Error() string {
	return fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", e.n, e.max)
}

var (
	errClientTerminate = errors.New("client sent Terminate")
	errBadLength       = errors.New("invalid message length")
)

// pump relays whole protocol messages from src to dst, forwarding bytes as
// they are rather than re-encoding, and shows each message to on, which says
// what to do with it. Only the bodies of message types in decode are handed
// to on; the rest are counted by length and may be streamed through without
// ever being held whole. Runs of forwarded messages go out in one write.
type pump struct {
	src io.Reader
	dst io.Writer
	on  func(typ byte, n int, body []byte) act
	// hold parks a message on's act says to hold, and returns what to do
	// with it once decided (the message stays in the buffer meanwhile).
	hold func(a act, typ byte, body []byte) act
	// space waits until the pipe can take more requests.
	space func() error
	// forwarded, if set, runs after each batch of messages that on saw has
	// been written to dst (or failed to be).
	forwarded func()
	// before, if set, runs before every write to dst: what it records (the
	// events of statements the bytes complete) is durable before the peer
	// can see them. Every path that writes (runs, holds, replacements,
	// streamed bodies) goes through forward, so none can skip it.
	before func()
	// drain, when set, turns a failed write into a discarded one: the
	// peer is gone but what is still coming must be read and recorded.
	drain *atomic.Bool
	gone  bool // a write failed under drain: discard the rest

	bytes, msgs *atomic.Int64 // live counters (session stats); may be nil

	decode    [256]bool
	decodeMax int // bodies larger than this are not decoded (nil body)
	maxLen    int // bodies larger than this end the pump with errTooLong; 0 = no limit

	small  [smallBuf]byte
	big    *[]byte
	buf    []byte
	r, w   int  // buf[r:w] is read and not yet forwarded
	busy   bool // the last read was large: keep the big buffer
	midMsg bool // dst has part of a message: nothing may be injected
	moved  int64

	out      []byte // replacements and the runs before them, not yet written
	gathered bool   // out was written since the last forwarded call
}

func newPump(src io.Reader, dst io.Writer, on func(byte, int, []byte) act, decode string, decodeMax, maxLen int) *pump {
	p := &pump{src: src, dst: dst, on: on, decodeMax: decodeMax, maxLen: maxLen}
	for i := 0; i < len(decode); i++ {
		p.decode[decode[i]] = true
	}
	p.buf = p.small[:]
	return p
}

// run relays until src or dst fails or on returns an error. Messages that on
// saw before an error, the failing one included, are forwarded first.
func (p *pump) run() error {
	defer p.releaseBig()
	for {
		start := p.r
		var stop error
		var msgs int64
		for stop == nil && p.w-p.r >= 5 {
			typ := p.buf[p.r]
			n := int(binary.BigEndian.Uint32(p.buf[p.r+1:]))
			if n < 4 {
				stop = errBadLength
				break
			}
			if p.maxLen > 0 && n-4 > p.maxLen {
				stop = errTooLong{n - 4, p.maxLen}
				break
			}
			total := 1 + n
			if total > p.w-p.r {
				break // wait for the whole body, or stream it below
			}
			var body []byte
			if p.decode[typ] && n-4 <= p.decodeMax {
				body = p.buf[p.r+5 : p.r+total]
			}
			msgs++
			a := p.on(typ, n, body)
			if a.kind == actHold {
				// What came before the held message goes now: its
				// answers must not wait on the hold.
				if err := p.flushOut(p.buf[start:p.r]); err != nil {
					return err
				}
				start = p.r
				a = p.hold(a, typ, body)
			}
			if a.kind != actForward {
				// Replacements are gathered with the run before them
				// and written together: a result whose every row is
				// rewritten costs one write per read, not per row.
				p.out = append(p.out, p.buf[start:p.r]...)
				if a.kind == actReplace {
					p.out = append(p.out, a.out...)
				}
				p.r += total
				start = p.r
				if len(p.out) >= maxGathered {
					if err := p.flushOut(nil); err != nil {
						return err
					}
				}
			} else {
				p.r += total
			}
			stop = a.err
			if a.wait && stop == nil {
				if err := p.flushRun(start, &msgs); err != nil {
					return err
				}
				start = p.r
				if err := p.space(); err != nil {
					return err
				}
			}
		}
		if err := p.flushRun(start, &msgs); err != nil {
			return err
		}
		if stop != nil {
			return stop
		}
		if p.w-p.r >= 5 {
			if err := p.partial(); err != nil {
				return err
			}
			continue
		}
		if err := p.fill(5); err != nil {
			return err
		}
	}
}

// flushRun forwards buf[start:r] and publishes the counts.
func (p *pump) flushRun(start int, msgs *int64) error {
	// Counted before they go out: whoever sees the answer to a message
	// must find it counted.
	if p.msgs != nil && *msgs > 0 {
		p.msgs.Add(*msgs)
		*msgs = 0
	}
	moved := p.r > start || p.gathered
	err := p.flushOut(p.buf[start:p.r])
	if p.forwarded != nil && moved {
		p.gathered = false
		p.forwarded()
	}
	return err
}

// maxGathered bounds the replacements held before they are written.
const maxGathered = 64 << 10

// flushOut writes what was gathered, then b.
func (p *pump) flushOut(b []byte) error {
	if len(p.out) == 0 {
		return p.forward(b)
	}
	p.out = append(p.out, b...)
	err := p.forward(p.out)
	p.gathered = true // for forwarded, even when b was empty
	if cap(p.out) > 4*maxGathered {
		p.out = nil
	} else {
		p.out = p.out[:0]
	}
	return err
}

// partial handles a message at buf[r] that is not all in the buffer.
func (p *pump) partial() error {
	typ := p.buf[p.r]
	n := int(binary.BigEndian.Uint32(p.buf[p.r+1:]))
	total := 1 + n
	if p.decode[typ] && n-4 <= p.decodeMax {
		if total <= bigBuf {
			return p.fill(total)
		}
		if p.msgs != nil {
			p.msgs.Add(1)
		}
		// Rare (a big query or Bind): hold just this message whole.
		msg := make([]byte, total)
		have := copy(msg, p.buf[p.r:p.w])
		p.r, p.w = 0, 0
		if _, err := io.ReadFull(p.src, msg[have:]); err != nil {
			return fmt.Errorf("read message body: %w", unexpected(err))
		}
		a := p.on(typ, n, msg[5:])
		if a.kind == actHold {
			a = p.hold(a, typ, msg[5:])
		}
		var err error
		switch a.kind {
		case actForward:
			err = p.forward(msg)
		case actReplace:
			err = p.forward(a.out)
		}
		if p.forwarded != nil {
			p.forwarded()
		}
		if err != nil {
			return err
		}
		if a.wait && a.err == nil {
			if err := p.space(); err != nil {
				return err
			}
		}
		return a.err
	}
	if p.msgs != nil {
		p.msgs.Add(1)
	}
	a := p.on(typ, n, nil)
	if a.err != nil {
		return a.err
	}
	// Stream the rest of the message through the buffer, or skip it when
	// a stage replaced it unseen.
	skip := a.kind != actForward
	if a.kind == actReplace {
		if err := p.forward(a.out); err != nil {
			return err
		}
	}
	remaining := total - (p.w - p.r)
	if !skip {
		if err := p.forward(p.buf[p.r:p.w]); err != nil {
			return err
		}
	}
	p.r, p.w = 0, 0
	p.midMsg = !skip
	p.takeBig()
	for remaining > 0 {
		m, err := p.src.Read(p.buf)
		if m > 0 {
			k := min(m, remaining)
			if !skip {
				if werr := p.forward(p.buf[:k]); werr != nil {
					return werr
				}
			}
			remaining -= k
			p.r, p.w = k, m
		}
		if err != nil && remaining > 0 {
			return fmt.Errorf("read message body: %w", unexpected(err))
		}
	}
	p.midMsg = false
	return nil
}

// fill reads until buf[r:] holds at least need bytes.
func (p *pump) fill(need int) error {
	for p.w-p.r < need {
		switch {
		case p.r == p.w:
			p.r, p.w = 0, 0
			if p.busy {
				p.takeBig()
			} else {
				p.releaseBig()
			}
		case p.r > 0:
			p.w = copy(p.buf, p.buf[p.r:p.w])
			p.r = 0
		}
		if need > len(p.buf) || p.busy {
			// Also when the last read filled the buffer: a message
			// it cut in two is the start of a larger answer, and
			// reading the rest 512 bytes at a time would cost a read
			// and a write each (decoded rows of a masked result).
			p.takeBig()
		}
		m, err := p.src.Read(p.buf[p.w:])
		p.w += m
		p.busy = m >= smallBuf || p.w == len(p.buf)
		if err != nil {
			if p.w-p.r >= need {
				return nil
			}
			if p.w == p.r && errors.Is(err, io.EOF) {
				return io.EOF // between messages: a clean end
			}
			return fmt.Errorf("read message: %w", unexpected(err))
		}
	}
	return nil
}

func (p *pump) takeBig() {
	if p.big != nil {
		return
	}
	p.big = bigPool.Get().(*[]byte)
	n := copy(*p.big, p.buf[p.r:p.w])
	p.buf, p.r, p.w = *p.big, 0, n
}

// releaseBig returns the big buffer when the pump holds nothing in it.
func (p *pump) releaseBig() {
	if p.big == nil || p.w != p.r {
		return
	}
	bigPool.Put(p.big)
	p.big, p.buf, p.r, p.w = nil, p.small[:], 0, 0
}

func (p *pump) forward(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if p.before != nil {
		p.before()
	}
	if p.gone {
		return nil
	}
	n, err := p.dst.Write(b)
	p.moved += int64(n)
	if p.bytes != nil {
		p.bytes.Add(int64(n))
	}
	if err != nil {
		p.midMsg = true // unknown how much of a message the peer got
		if p.drain != nil && p.drain.Load() {
			p.gone = true
			return nil
		}
		return &writeError{err}
	}
	return nil
}

// writeError tells the relay which side failed.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
