package pgwire

import (
	"bytes"
	"io"

	"github.com/airlockhq/airlock/internal/session"
)

// TxDriver runs a pipe over fixed client and server bytes the way the
// daemon's pumps do, so that benchmarks outside this package (which can
// import the stages: guard, pgmask) measure the whole per-transaction path.
type TxDriver struct {
	pl             *pipe
	cr, sr         *bytes.Reader
	cp, sp         *pump
	client, server []byte
}

// NewTxDriver wires sess's pipe with st and a sampler as the proxy makes.
func NewTxDriver(sess *session.Session, st Stages, sampleRows, sampleBytes int) *TxDriver {
	pl := newPipe(sess, st, 0)
	pl.samp = newSampler(sampleRows, sampleBytes)
	d := &TxDriver{pl: pl, cr: bytes.NewReader(nil), sr: bytes.NewReader(nil)}
	d.cp = newPump(d.cr, io.Discard, pl.fromClient, pl.clientTypes(), 1<<20, 0)
	d.sp = newPump(d.sr, io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
	return d
}

// Run sends client to the pipe, then server as the answer, and flushes the
// statement events to the session's sink.
func (d *TxDriver) Run(client, server []byte) {
	d.cr.Reset(client)
	_ = d.cp.run()
	d.sr.Reset(server)
	_ = d.sp.run()
	d.pl.flush()
}
