package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Break kinds, in the words `airlock audit verify` uses.
const (
	BreakEdited    = "edited"
	BreakDeleted   = "deleted"
	BreakReordered = "reordered"
	BreakTruncated = "truncated"
	BreakForged    = "forged" // a checkpoint or key whose signature does not hold
)

// Break is a place where the record is not what its daemon wrote.
type Break struct {
	Daemon  string `json:"daemon"`
	Seq     int64  `json:"seq"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// ChainReport is the outcome for one daemon's chain.
type ChainReport struct {
	Daemon      string    `json:"daemon"`
	Records     int64     `json:"records"`
	First       int64     `json:"first_seq"`
	Last        int64     `json:"last_seq"`
	Checkpoints int       `json:"checkpoints"`
	SealedTo    int64     `json:"sealed_to"` // newest checkpoint seq that matched
	SealedAt    time.Time `json:"sealed_at,omitempty"`
	Keys        []string  `json:"keys"`
	Breaks      []Break   `json:"breaks,omitempty"`
}

// Report is the outcome of a verification.
type Report struct {
	OK     bool          `json:"ok"`
	Chains []ChainReport `json:"chains"`
	First  *Break        `json:"first_break,omitempty"` // the first break of the first broken chain
}

// Expect is what a daemon knows about its own chain beyond the store: the
// last checkpoint it signed and the last record it stored. With them verify
// also catches a store whose checkpoints were deleted along with its tail.
type Expect struct {
	Daemon     string
	Checkpoint *Checkpoint
	Stored     int64
	Hash       string
}

const maxBreaks = 20

// Verify checks every chain in the store (or only daemon's), its signing
// keys and its checkpoints. It only reads: a broken store is reported, never
// repaired.
func Verify(ctx context.Context, s *Store, daemon string, expect *Expect) (*Report, error) {
	daemons := []string{daemon}
	if daemon == "" {
		var err error
		if daemons, err = s.Daemons(ctx); err != nil {
			return nil, err
		}
	}
	rep := &Report{OK: true}
	for _, d := range daemons {
		var ex *Expect
		if expect != nil && expect.Daemon == d {
			ex = expect
		}
		cr, err := verifyChain(ctx, s, d, ex)
		if err != nil {
			return nil, err
		}
		if len(cr.Breaks) > 0 {
			if rep.OK {
				b := cr.Breaks[0]
				rep.First = &b
			}
			rep.OK = false
		}
		rep.Chains = append(rep.Chains, *cr)
	}
	return rep, nil
}

func verifyChain(ctx context.Context, s *Store, daemon string, ex *Expect) (*ChainReport, error) {
	cr := &ChainReport{Daemon: daemon}
	found := 0 // breaks found, also past maxBreaks
	add := func(seq int64, kind, format string, args ...any) {
		found++
		if len(cr.Breaks) < maxBreaks {
			cr.Breaks = append(cr.Breaks, Break{Daemon: daemon, Seq: seq, Kind: kind, Message: fmt.Sprintf(format, args...)})
		}
	}

	// Keys: the first is taken as the daemon's (compare it with the key the
	// daemon exports); every later one must be signed by the one before.
	keys, err := s.Keys(ctx, daemon)
	if err != nil {
		return nil, err
	}
	pubs := map[string]bool{}
	byID := map[string]Key{}
	for i, k := range keys {
		cr.Keys = append(cr.Keys, k.KeyID)
		pub, err := k.public()
		if err != nil || keyIDOf(pub) != k.KeyID {
			add(k.Seq, BreakForged, "signing key %s does not match its id", k.KeyID)
			continue
		}
		if i > 0 {
			prev, ok := byID[k.PreviousKey]
			if !ok || k.Signature == "" {
				add(k.Seq, BreakForged, "signing key %s came into use without a signature from the key before it (%s)", k.KeyID, keys[i-1].KeyID)
			} else if pp, err := prev.public(); err != nil || !verifySig(pp, keyMessage(daemon, k.KeyID, k.PublicKey), k.Signature) {
				add(k.Seq, BreakForged, "rotation to signing key %s is not signed by key %s", k.KeyID, k.PreviousKey)
			}
		}
		byID[k.KeyID], pubs[k.KeyID] = k, true
	}

	cps, err := s.Checkpoints(ctx, daemon)
	if err != nil {
		return nil, err
	}
	if ex != nil && ex.Checkpoint != nil {
		found := false
		for _, c := range cps {
			found = found || (c.Seq == ex.Checkpoint.Seq && c.Signature == ex.Checkpoint.Signature)
		}
		if !found {
			cps = append(cps, *ex.Checkpoint)
		}
	}
	cpAt := map[int64]Checkpoint{}
	for _, c := range cps {
		k, ok := byID[c.KeyID]
		pub, err := k.public()
		if !ok || err != nil || !verifySig(pub, c.message(), c.Signature) {
			add(c.Seq, BreakForged, "checkpoint at seq %d has a signature that does not verify with key %s: it was forged or edited", c.Seq, c.KeyID)
			continue
		}
		cpAt[c.Seq] = c
		cr.Checkpoints++
	}

	// First pass: where each hash sits, to tell a moved record from a
	// lost one.
	where := map[[8]byte]int64{}
	key := func(h string) (k [8]byte) {
		b, _ := hex.DecodeString(h)
		copy(k[:], b)
		return k
	}
	err = s.eachBlock(ctx, daemon, 0, func(b *block) (bool, error) {
		for _, r := range b.Records {
			where[key(r.Hash)] = r.Seq
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}

	// Second pass: each block against its index rows, each record against
	// itself, its predecessor and the checkpoints.
	starts, err := s.sessionStarts(ctx, daemon)
	if err != nil {
		return nil, err
	}
	seenStart := map[int64]bool{}
	blocks := map[int64]bool{}
	var prev *storedRecord
	err = s.eachBlock(ctx, daemon, 0, func(b *block) (bool, error) {
		blocks[b.First] = true
		before := found
		lost := errors.Is(b.TextErr, errTextCut) || errors.Is(b.TextErr, errTextMissing)
		if b.Err != nil && !lost { // text cut short does not parse to its end: reported as lost below
			why := b.Err.Error()
			if b.TextErr != nil {
				why += "; " + b.TextErr.Error()
			}
			add(b.First, BreakEdited, "the block of records stored from seq %d was edited: it no longer reads as records (%s)", b.First, why)
		}
		if n := len(b.Records); n > 0 && (b.Records[0].Seq != b.First || (!lost && b.Records[n-1].Seq != b.Last)) {
			add(b.First, BreakEdited, "the block stored as seq %d to %d holds records %d to %d: its columns were edited", b.First, b.Last, b.Records[0].Seq, b.Records[n-1].Seq)
		}
		idx, err := s.sessionBlocks(ctx, daemon, b.First)
		if err != nil {
			return false, err
		}
		if !lost && !sameSessionBlocks(sessionBlocksOf(b.Records), idx) {
			add(b.First, BreakEdited, "the session index of the block from seq %d to %d no longer matches its records: it was edited", b.First, b.Last)
		}
		for i := range b.Records {
			r := &storedRecord{Record: b.Records[i], cols: indexCols{uid: -1, pid: -1}}
			if r.Kind == kindStart {
				seenStart[r.Seq] = true
				if row, ok := starts[r.Seq]; ok && row.Session == r.Session && row.TimeNS == r.Time.UnixNano() && row.Data == string(r.Data) {
					r.cols = row.cols
				} else {
					r.cols = indexCols{uid: -2} // no row, or not this record's: colsOf never gives uid -2
				}
			}
			cr.Records++
			if cr.First == 0 {
				cr.First = r.Seq
			}
			cr.Last = r.Seq
			checkRow(r, prev, cpAt, where, key, add)
			if c, ok := cpAt[r.Seq]; ok {
				if c.Hash != r.Hash {
					add(r.Seq, BreakEdited, "seq %d does not match the checkpoint signed at %s: records up to it were rewritten (hashes recomputed)", r.Seq, c.Time.Format(time.RFC3339))
				} else {
					cr.SealedTo, cr.SealedAt = c.Seq, c.Time
				}
			}
			prev = r
		}
		switch {
		case lost:
			// The records after what is left of the text are gone; each
			// line that is left was checked above like any other.
			from := b.First
			if n := len(b.Records); n > 0 {
				from = b.Records[n-1].Seq + 1
			}
			add(from, BreakDeleted, "seq %d to %d were deleted: the text of the block stored from seq %d to %d is gone (%v)", from, b.Last, b.First, b.Last, b.TextErr)
		case b.TextErr != nil && found == before:
			// Nothing in the records themselves shows it (their hashes
			// and links hold): the checksum of the block's text does.
			add(b.First, BreakEdited, "the block of records stored from seq %d to %d was edited: %v", b.First, b.Last, b.TextErr)
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	// The tail: nothing signed or stored may be missing at the end.
	var lastCP *Checkpoint
	for _, c := range cpAt {
		if lastCP == nil || c.Seq > lastCP.Seq {
			c := c
			lastCP = &c
		}
	}
	if lastCP != nil && lastCP.Seq > cr.Last {
		add(cr.Last+1, BreakTruncated, "tail truncated: a checkpoint signed at %s covers records through seq %d, but the store ends at seq %d",
			lastCP.Time.Format(time.RFC3339), lastCP.Seq, cr.Last)
	} else if ex != nil && ex.Stored > cr.Last {
		add(cr.Last+1, BreakTruncated, "tail truncated: the daemon stored records through seq %d, but the store ends at seq %d", ex.Stored, cr.Last)
	}
	// Index rows that no record accounts for would list sessions or count
	// statements that never were. Checked after the tail, so that a cut
	// tail is named as such rather than by the index rows it left behind.
	for _, seq := range slices.Sorted(maps.Keys(starts)) {
		if !seenStart[seq] {
			add(seq, BreakEdited, "the session list has session %s starting at seq %d, which is not a session.start in the chain: it was added, or its record removed", starts[seq].Session, seq)
		}
	}
	orphans, err := s.sessionBlockFirsts(ctx, daemon)
	if err != nil {
		return nil, err
	}
	for _, first := range orphans {
		if !blocks[first] {
			add(first, BreakEdited, "the session index names a block from seq %d that is not in the store: it was added, or the block removed", first)
		}
	}
	sortBreaks(cr.Breaks)
	return cr, nil
}

func checkRow(r, prev *storedRecord, cpAt map[int64]Checkpoint, where map[[8]byte]int64, key func(string) [8]byte,
	add func(int64, string, string, ...any)) {
	if hashRecord(r.PrevHash, &r.Record) != r.Hash {
		add(r.Seq, BreakEdited, "seq %d (%s, session %s) was edited: its content no longer matches its hash", r.Seq, r.Kind, r.Session)
	} else if c := colsOf(r.Kind, r.Data); c != r.cols {
		add(r.Seq, BreakEdited, "seq %d (%s, session %s) was edited: its search columns no longer match its hashed data", r.Seq, r.Kind, r.Session)
	}
	if prev == nil {
		switch {
		case r.Seq == 1 && r.PrevHash == genesis:
		case r.Seq > 1 && cpAt[r.Seq-1].Hash == r.PrevHash && cpAt[r.Seq-1].Hash != "":
			// A pruned prefix, sealed by a signed checkpoint.
		case r.Seq > 1:
			add(r.Seq, BreakDeleted, "records before seq %d were deleted (the chain starts there and no signed checkpoint covers the missing prefix)", r.Seq)
		default:
			add(r.Seq, BreakEdited, "seq 1 does not start the chain")
		}
		return
	}
	if r.PrevHash == prev.Hash {
		if r.Seq != prev.Seq+1 {
			add(r.Seq, BreakReordered, "seq %d follows seq %d in the chain but was renumbered", r.Seq, prev.Seq)
		}
		return
	}
	if r.Seq != prev.Seq+1 {
		add(prev.Seq+1, BreakDeleted, "seq %d to %d were deleted", prev.Seq+1, r.Seq-1)
		return
	}
	if at, ok := where[key(r.PrevHash)]; ok && at != prev.Seq {
		add(r.Seq, BreakReordered, "seq %d was reordered: it was written right after the record now at seq %d, not after seq %d", r.Seq, at, prev.Seq)
		return
	}
	if r.PrevHash == prev.PrevHash {
		add(r.Seq, BreakReordered, "seq %d and seq %d follow the same record: one was moved or duplicated", prev.Seq, r.Seq)
		return
	}
	add(r.Seq, BreakDeleted, "the chain breaks between seq %d and seq %d: a record there was deleted (and later ones renumbered) or seq %d was replaced", prev.Seq, r.Seq, prev.Seq)
}

func sortBreaks(bs []Break) {
	for i := 1; i < len(bs); i++ {
		for j := i; j > 0 && bs[j].Seq < bs[j-1].Seq; j-- {
			bs[j], bs[j-1] = bs[j-1], bs[j]
		}
	}
}

// sameSessionBlocks compares a block's derived index rows with the stored
// ones, in any order.
func sameSessionBlocks(want, got []sessionBlock) bool {
	if len(want) != len(got) {
		return false
	}
	m := make(map[string]sessionBlock, len(want))
	for _, sb := range want {
		m[sb.Session] = sb
	}
	for _, sb := range got {
		if w, ok := m[sb.Session]; !ok || w != sb {
			return false
		}
		delete(m, sb.Session)
	}
	return len(m) == 0
}
