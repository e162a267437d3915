package pgwire

import (
	"encoding/binary"
)

// BatchStage sees an extended-protocol batch as one unit: the messages from
// the first after a Sync up to and including the next Sync. A Flush (the
// client waits for answers so far), a message of another protocol, or
// maxUnit bytes end a unit early (Complete is then false).
type BatchStage interface {
	// Batch answers Forward (each message then goes through the client
	// stages), Reply (the whole unit fails as if its first message had),
	// Hold, Drop or Replace for the unit as a whole.
	Batch(b *Batch) Verdict
}

// Batch is one unit of extended-protocol messages.
type Batch struct {
	Msgs     []ClientMsg // b, its messages and bodies are valid only during the call
	Complete bool        // ends with Sync
}

// maxUnit bounds the bytes of a unit held before it is decided.
const maxUnit = 4 << 20

// unit is the batch being gathered or played.
type unit struct {
	buf   []byte // whole messages, as received
	msgs  []ClientMsg
	k     int    // next message to play
	out   []byte // what goes to the server for the unit
	wait  bool
	err   error
	stage int // batch stage to run next
	// batch is what the batch stages are shown: a field so that the
	// pointer they get does not cost an allocation per unit.
	batch Batch
}

// extended reports the message types that make up an extended batch.
func extended(typ byte) bool {
	switch typ {
	case 'P', 'B', 'D', 'E', 'C', 'S', 'H':
		return true
	}
	return false
}

// gather takes a client message into the unit when batch stages run; it
// returns false when the message is not part of one.
func (pl *pipe) gather(typ byte, body []byte) (act, bool) {
	u := &pl.unit
	if len(u.buf) == 0 && (!extended(typ) || typ == 'S' || typ == 'H') {
		return act{}, false // nothing gathered: decide it alone
	}
	u.buf = append(u.buf, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(u.buf[len(u.buf)-4:], uint32(len(body)+4))
	u.buf = append(u.buf, body...)
	if extended(typ) && typ != 'S' && typ != 'H' && len(u.buf) < maxUnit {
		return act{kind: actDrop}, true // held back until the unit is whole
	}
	u.msgs = u.msgs[:0]
	tx := pl.tx()
	_ = splitMessages(u.buf, func(t byte, _, b []byte) {
		u.msgs = append(u.msgs, ClientMsg{Type: t, Body: b, TxStatus: tx, Session: pl.sess, pl: pl})
	})
	u.k, u.out, u.wait, u.err, u.stage = 0, u.out[:0], false, nil, 0
	return pl.decideUnit(), true
}

// decideUnit runs the batch stages from u.stage, then plays the unit.
func (pl *pipe) decideUnit() act {
	u := &pl.unit
	b := &u.batch
	*b = Batch{Msgs: u.msgs, Complete: u.msgs[len(u.msgs)-1].Type == 'S'}
	for ; u.stage < len(pl.stages.Batch); u.stage++ {
		v := pl.stages.Batch[u.stage].Batch(b)
		switch v.Action {
		case Forward:
			continue
		case Hold:
			if v.Hold != nil {
				return act{kind: actHold, hold: v.Hold, stage: u.stage}
			}
			v = Refuse(codeInternal, "Airlock: a stage held a batch without a hold")
		}
		return pl.unitDecided(v, "")
	}
	return pl.playUnit()
}

// unitDecided applies a batch stage's Reply, Drop or Replace to the unit.
func (pl *pipe) unitDecided(v Verdict, why string) act {
	u := &pl.unit
	first := u.msgs[0]
	var a act
	switch v.Action {
	case Drop:
		a = act{kind: actDrop}
	case Replace:
		a = pl.decided(v, first.Type, first.Body, why)
	default:
		// The unit fails at its first message; the server skips the
		// rest up to Sync, which still goes so the client gets its
		// ReadyForQuery.
		a = pl.decided(v, first.Type, first.Body, why)
		if last := u.msgs[len(u.msgs)-1]; last.Type == 'S' && len(u.msgs) > 1 {
			s := pl.track('S', nil)
			a.out = append(append([]byte(nil), a.out...), 'S', 0, 0, 0, 4)
			a.wait = a.wait || s.wait
		}
	}
	pl.resetUnit()
	return a
}

// playUnit runs each message of an accepted unit through the client
// stages, resumably: a message stage may hold in the middle.
func (pl *pipe) playUnit() act {
	u := &pl.unit
	for ; u.k < len(u.msgs); u.k++ {
		m := u.msgs[u.k]
		a := pl.clientFrom(0, m.Type, m.Body)
		if a.kind == actHold {
			a.stage += len(pl.stages.Batch)
			return a
		}
		pl.unitAppend(a, m)
	}
	a := act{kind: actReplace, out: u.out, wait: u.wait, err: u.err}
	pl.resetUnit()
	return a
}

func (pl *pipe) unitAppend(a act, m ClientMsg) {
	u := &pl.unit
	switch a.kind {
	case actForward:
		u.out = append(u.out, m.Type, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(u.out[len(u.out)-4:], uint32(len(m.Body)+4))
		u.out = append(u.out, m.Body...)
	case actReplace:
		u.out = append(u.out, a.out...)
	}
	u.wait = u.wait || a.wait
	if a.err != nil {
		u.err = a.err
	}
}

// resumeUnit continues a unit parked on a hold.
func (pl *pipe) resumeUnit(a act, v Verdict) act {
	u := &pl.unit
	nb := len(pl.stages.Batch)
	if a.stage < nb {
		// A batch stage held the unit.
		if v.Action == Forward {
			pl.decision = "approved"
			u.stage = a.stage + 1
			return pl.decideUnit()
		}
		if v.Action == Hold {
			v = Refuse(codeInternal, "Airlock: a hold was resolved with another hold")
		}
		return pl.unitDecided(v, "denied")
	}
	// A message stage held message k of a played unit.
	m := u.msgs[u.k]
	r := pl.resumeMsg(a.stage-nb, v, m.Type, m.Body)
	if r.kind == actHold {
		r.stage += nb
		return r
	}
	pl.unitAppend(r, m)
	u.k++
	return pl.playUnit()
}

// inUnit reports whether a unit is being decided or played: a hold then is
// within it. Its messages are kept from gather until the unit is done, and
// nothing else reaches the stages meanwhile (the client is not read while
// a hold is parked).
func (pl *pipe) inUnit() bool { return len(pl.unit.msgs) > 0 }

func (pl *pipe) resetUnit() {
	u := &pl.unit
	if cap(u.buf) > 64<<10 {
		u.buf, u.out = nil, nil // a big unit's memory is not kept
	} else {
		u.buf, u.out = u.buf[:0], u.out[:0]
	}
	clear(u.msgs)
	u.msgs = u.msgs[:0]
}
