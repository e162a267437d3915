package pgcred

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Admin connection pool limits. Opening an admin connection costs a backend
// start and a SCRAM exchange (tens of ms on a small VM), which used to sit on
// every session's setup path; the pool keeps a few open instead.
const (
	// adminPoolSize bounds the open connections to the admin database.
	// Drops (Release, retries, sweeps) may hold at most adminPoolSize-1 of
	// them at once, so that an Acquire never waits behind a slow drop.
	adminPoolSize = 4
	// otherPoolSize bounds the open connections to each other database
	// (REASSIGN/DROP OWNED after a 2BP01), otherIdleMax the idle ones kept
	// over all other databases.
	otherPoolSize = 2
	otherIdleMax  = 4
	// Idle connections to other databases are closed after otherIdleTTL;
	// idle admin connections beyond the first after adminIdleTTL (the first
	// stays open for the next session).
	otherIdleTTL = time.Minute
	adminIdleTTL = 5 * time.Minute
	// A connection idle for pingAfter is pinged before it is handed out.
	// A connection that died more recently is caught by the retry in do.
	pingAfter = time.Second
)

// connPool holds open admin connections, per database. A connection is
// checked out by one caller at a time; one that failed (closed, or left in a
// transaction) is discarded and the next get dials a new one. After close,
// get dials a one-shot connection that put closes: leases stay releasable.
type connPool struct {
	dial    func(ctx context.Context, db string) (*pgx.Conn, error)
	adminDB string // "" means the admin config's database

	mu     sync.Mutex
	dbs    map[string]*dbPool
	closed bool
	now    func() time.Time // tests
	pingAt time.Duration
}

type dbPool struct {
	slots chan struct{} // one token per open (idle or checked out) connection
	idle  []idleConn    // newest last; guarded by connPool.mu
}

type idleConn struct {
	c     *pgx.Conn
	since time.Time
}

// pooled is a checked-out connection.
type pooled struct {
	*pgx.Conn
	db     *dbPool // nil: one-shot, closed by put
	reused bool    // it served an earlier caller: it may have died while idle
}

func newConnPool(dial func(ctx context.Context, db string) (*pgx.Conn, error)) *connPool {
	return &connPool{dial: dial, dbs: map[string]*dbPool{}, now: time.Now, pingAt: pingAfter}
}

// get checks out a healthy connection to db ("" for the admin database),
// waiting for a free slot when db's connections are all in use.
func (p *connPool) get(ctx context.Context, db string) (*pooled, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c, err := p.dial(ctx, db)
		if err != nil {
			return nil, err
		}
		return &pooled{Conn: c}, nil
	}
	dp := p.dbs[db]
	if dp == nil {
		n := otherPoolSize
		if db == "" {
			n = adminPoolSize
		}
		dp = &dbPool{slots: make(chan struct{}, n)}
		p.dbs[db] = dp
	}
	p.mu.Unlock()

	select {
	case dp.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		var ic idleConn
		ok := len(dp.idle) > 0
		if ok {
			ic = dp.idle[len(dp.idle)-1]
			dp.idle = dp.idle[:len(dp.idle)-1]
		}
		p.mu.Unlock()
		if !ok {
			break
		}
		if ic.c.IsClosed() {
			continue
		}
		if p.now().Sub(ic.since) >= p.pingAt {
			if err := ic.c.Ping(ctx); err != nil {
				closeConn(ic.c)
				if ctx.Err() != nil {
					<-dp.slots
					return nil, ctx.Err()
				}
				continue
			}
		}
		return &pooled{Conn: ic.c, db: dp, reused: true}, nil
	}
	c, err := p.dial(ctx, db)
	if err != nil {
		<-dp.slots
		return nil, err
	}
	return &pooled{Conn: c, db: dp}, nil
}

// put returns pc to its pool, or closes it when it is one-shot, broken, not
// idle (a transaction left open) or the pool is closed or full of idle
// connections.
func (p *connPool) put(pc *pooled) {
	if pc.db == nil {
		closeConn(pc.Conn)
		return
	}
	var toClose []*pgx.Conn
	if pc.IsClosed() || pc.PgConn().IsBusy() || pc.PgConn().TxStatus() != 'I' {
		toClose = append(toClose, pc.Conn)
	} else {
		p.mu.Lock()
		if p.closed {
			toClose = append(toClose, pc.Conn)
		} else {
			pc.db.idle = append(pc.db.idle, idleConn{c: pc.Conn, since: p.now()})
			toClose = append(toClose, p.reapLocked()...)
		}
		p.mu.Unlock()
	}
	<-pc.db.slots
	for _, c := range toClose {
		closeConn(c)
	}
}

// discard closes pc, which failed, and frees its slot.
func (p *connPool) discard(pc *pooled) {
	closeConn(pc.Conn)
	if pc.db != nil {
		<-pc.db.slots
	}
}

// reap closes idle connections past their idle time.
func (p *connPool) reap() {
	p.mu.Lock()
	toClose := p.reapLocked()
	p.mu.Unlock()
	for _, c := range toClose {
		closeConn(c)
	}
}

// reapLocked takes out of the pool the idle connections past their idle
// time (admin: all but the newest after adminIdleTTL; others: after
// otherIdleTTL) and the oldest idle connections to other databases beyond
// otherIdleMax. The caller closes them outside the lock.
func (p *connPool) reapLocked() []*pgx.Conn {
	now := p.now()
	var out []*pgx.Conn
	type ref struct {
		dp *dbPool
		ic idleConn
	}
	var others []ref
	for db, dp := range p.dbs {
		ttl := otherIdleTTL
		keepNewest := 0
		if db == "" {
			ttl, keepNewest = adminIdleTTL, 1
		}
		kept := dp.idle[:0]
		for i, ic := range dp.idle {
			if now.Sub(ic.since) >= ttl && i < len(dp.idle)-keepNewest {
				out = append(out, ic.c)
				continue
			}
			kept = append(kept, ic)
		}
		clear(dp.idle[len(kept):])
		dp.idle = kept
		if db != "" {
			for _, ic := range dp.idle {
				others = append(others, ref{dp, ic})
			}
		}
	}
	if len(others) > otherIdleMax {
		slices.SortFunc(others, func(a, b ref) int { return a.ic.since.Compare(b.ic.since) })
		for _, r := range others[:len(others)-otherIdleMax] {
			r.dp.idle = slices.DeleteFunc(r.dp.idle, func(ic idleConn) bool { return ic.c == r.ic.c })
			out = append(out, r.ic.c)
		}
	}
	return out
}

// flush closes db's idle connections: one of them was found dead, and the
// others (of the same server) probably are too.
func (p *connPool) flush(db string) {
	p.mu.Lock()
	var toClose []*pgx.Conn
	if dp := p.dbs[db]; dp != nil {
		for _, ic := range dp.idle {
			toClose = append(toClose, ic.c)
		}
		dp.idle = nil
	}
	p.mu.Unlock()
	for _, c := range toClose {
		closeConn(c)
	}
}

// idleCount is how many idle connections db's pool holds (tests).
func (p *connPool) idleCount(db string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if dp := p.dbs[db]; dp != nil {
		return len(dp.idle)
	}
	return 0
}

// close closes the idle connections; checked-out ones are closed when put
// back, and later gets dial one-shot connections.
func (p *connPool) close() {
	p.mu.Lock()
	p.closed = true
	var toClose []*pgx.Conn
	for _, dp := range p.dbs {
		for _, ic := range dp.idle {
			toClose = append(toClose, ic.c)
		}
		dp.idle = nil
	}
	p.mu.Unlock()
	for _, c := range toClose {
		closeConn(c)
	}
}

// connLost reports an error after which c is unusable: the connection
// closed under the statement (an I/O error, a cancelled context, or a FATAL
// such as 57P01 from pg_terminate_backend or a server shutdown, on which
// pgx's default OnPgError closes the connection). Only the connection's own
// state counts: f's error may wrap failures of other connections.
func connLost(c *pgx.Conn, err error) bool {
	return err != nil && c.IsClosed()
}
