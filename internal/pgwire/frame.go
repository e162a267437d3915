package pgwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
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
// they are rather than re-encoding, and shows each message to on. Only the
// bodies of message types in decode are handed to on; the rest are counted
// by length and may be streamed through without ever being held whole.
type pump struct {
	src io.Reader
	dst io.Writer
	on  func(typ byte, n int, body []byte) error
	// forwarded, if set, runs after each batch of messages that on saw has
	// been written to dst (or failed to be).
	forwarded func()
	// before, if set, runs before each batch of messages that on saw is
	// written to dst: what it records is durable before the peer sees it.
	before func()

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
}

func newPump(src io.Reader, dst io.Writer, on func(byte, int, []byte) error, decode string, decodeMax, maxLen int) *pump {
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
			if p.decode[typ] && n-4 <= p.decodeMax {
				if total > p.w-p.r {
					break // wait for the whole body
				}
				stop = p.on(typ, n, p.buf[p.r+5:p.r+total])
			} else {
				if total > p.w-p.r {
					break // streamed below
				}
				stop = p.on(typ, n, nil)
			}
			p.r += total
		}
		if p.before != nil && p.r > start {
			p.before()
		}
		err := p.forward(p.buf[start:p.r])
		if p.forwarded != nil && p.r > start {
			p.forwarded()
		}
		if err != nil {
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

// partial handles a message at buf[r] that is not all in the buffer.
func (p *pump) partial() error {
	typ := p.buf[p.r]
	n := int(binary.BigEndian.Uint32(p.buf[p.r+1:]))
	total := 1 + n
	if p.decode[typ] && n-4 <= p.decodeMax {
		if total <= bigBuf {
			return p.fill(total)
		}
		// Rare (a big query or Bind): hold just this message whole.
		msg := make([]byte, total)
		have := copy(msg, p.buf[p.r:p.w])
		p.r, p.w = 0, 0
		if _, err := io.ReadFull(p.src, msg[have:]); err != nil {
			return fmt.Errorf("read message body: %w", unexpected(err))
		}
		stop := p.on(typ, n, msg[5:])
		if p.before != nil {
			p.before()
		}
		err := p.forward(msg)
		if p.forwarded != nil {
			p.forwarded()
		}
		if err != nil {
			return err
		}
		return stop
	}
	if err := p.on(typ, n, nil); err != nil {
		return err
	}
	if p.before != nil {
		p.before()
	}
	// Stream the rest of the message through the buffer.
	remaining := total - (p.w - p.r)
	if err := p.forward(p.buf[p.r:p.w]); err != nil {
		return err
	}
	p.r, p.w = 0, 0
	p.midMsg = true
	p.takeBig()
	for remaining > 0 {
		m, err := p.src.Read(p.buf)
		if m > 0 {
			k := min(m, remaining)
			if werr := p.forward(p.buf[:k]); werr != nil {
				return werr
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
		if need > len(p.buf) {
			p.takeBig()
		}
		m, err := p.src.Read(p.buf[p.w:])
		p.w += m
		p.busy = m >= smallBuf
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
	n, err := p.dst.Write(b)
	p.moved += int64(n)
	if err != nil {
		p.midMsg = true // unknown how much of a message the peer got
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
