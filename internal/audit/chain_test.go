package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hashRecordSpec is the chain link exactly as docs/AUDIT.md defines it,
// written the plain way: hashRecord must give the same for any record, or
// every stored chain stops verifying.
func hashRecordSpec(prev string, r *Record) string {
	h := sha256.New()
	pb, _ := hex.DecodeString(prev)
	h.Write(pb)
	h.Write([]byte(Schema + "\n" + r.Daemon + "\n" + strconv.FormatInt(r.Time.UnixNano(), 10) + "\n" +
		r.Kind + "\n" + r.Session + "\n" + strconv.Itoa(len(r.Data)) + "\n"))
	h.Write(r.Data)
	return hex.EncodeToString(h.Sum(nil))
}

func TestHashRecordMatchesSpec(t *testing.T) {
	at := time.Date(2026, 11, 30, 11, 0, 0, 123, time.UTC)
	cases := []struct {
		name string
		prev string
		r    Record
	}{
		{"genesis", genesis, Record{Daemon: "d", Time: at, Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)}},
		{"no session, no data", strings.Repeat("ab", 32), Record{Daemon: "d", Time: at, Kind: KindKey}},
		{"bad hex in prev", strings.Repeat("ab", 10) + "zz" + strings.Repeat("cd", 21), Record{Daemon: "d", Time: at, Kind: "x", Data: json.RawMessage(`1`)}},
		{"odd prev", "abc", Record{Daemon: "d", Time: at, Kind: "x"}},
		{"long prev", strings.Repeat("0f", 600), Record{Daemon: "d", Time: at, Kind: "x"}},
		{"large data", genesis, Record{Daemon: "host-1", Time: at, Kind: "statement", Session: "é\n",
			Data: json.RawMessage(`{"sql":"` + strings.Repeat("x", 5000) + `"}`)}},
		{"before 1970", genesis, Record{Daemon: "d", Time: time.Unix(-5, 0), Kind: "x"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := hashRecord(tc.prev, &tc.r), hashRecordSpec(tc.prev, &tc.r); got != want {
				t.Fatalf("hashRecord = %s, the definition gives %s", got, want)
			}
		})
	}
}

func FuzzHashRecord(f *testing.F) {
	f.Add(genesis, "d", int64(1), "statement", "s", []byte(`{"sql":"SELECT 1"}`))
	f.Add("abc", "", int64(-1), "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, prev, daemon string, ns int64, kind, sess string, data []byte) {
		r := Record{Daemon: daemon, Time: time.Unix(0, ns), Kind: kind, Session: sess, Data: data}
		if got, want := hashRecord(prev, &r), hashRecordSpec(prev, &r); got != want {
			t.Fatalf("hashRecord = %s, the definition gives %s", got, want)
		}
	})
}

func TestHexSumMatchesHex(t *testing.T) {
	var count, ones, mixed [sha256.Size]byte
	for i := range count {
		count[i], ones[i], mixed[i] = byte(i), 0xff, byte(i*37+11)
	}
	for _, sum := range [][sha256.Size]byte{{}, count, ones, mixed, sha256.Sum256([]byte("airlock"))} {
		var got [2 * sha256.Size]byte
		hexSum(&got, &sum)
		if want := hex.EncodeToString(sum[:]); string(got[:]) != want {
			t.Fatalf("hexSum(%x) = %s, want %s", sum, got, want)
		}
	}
}

// chainRecords is the shipper's form of hashRecord: it must link every
// record exactly as hashRecord does, whatever the previous hash is.
func TestChainRecordsMatchesHashRecord(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	mk := func(n int) []Record {
		recs := make([]Record, n)
		for i := range recs {
			recs[i] = Record{Schema: Schema, Daemon: "d1", Seq: int64(i + 1), Time: at.Add(time.Duration(i)), Kind: kindStatement,
				Session: fmt.Sprintf("s%d", i%3), Data: json.RawMessage(fmt.Sprintf(`{"sql":"SELECT %d"}`, i))}
		}
		if n > 2 {
			// Longer than the hash's stack buffer.
			recs[2].Data = json.RawMessage(`{"sql":"` + strings.Repeat("x", 900) + `"}`)
		}
		if n > 3 {
			// Another, longer, through the same reused digest.
			recs[3].Data = json.RawMessage(`{"sql":"` + strings.Repeat("y", 5000) + `"}`)
		}
		return recs
	}
	for _, tc := range []struct {
		name string
		prev string
		n    int
	}{
		{"genesis", genesis, 5},
		{"one record", genesis, 1},
		{"none", genesis, 0},
		{"a stored head", hashRecord(genesis, &mk(1)[0]), 4},
		{"short prev", "abcd", 3},
		{"long prev", genesis + "00", 3},
		{"bad hex digit", strings.Repeat("a", 30) + "zz" + strings.Repeat("b", 32), 3},
		{"a hash's length, not hex, escaped in a line", strings.Repeat("a", 30) + "<&" + strings.Repeat("b", 32), 3},
		{"not hex, escaped in a line", "<prev>", 3},
		{"empty prev", "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := mk(tc.n)
			last := chainRecords(tc.prev, recs)
			prev := tc.prev
			for i := range recs {
				if recs[i].PrevHash != prev {
					t.Fatalf("record %d: prev_hash %q, want %q", i, recs[i].PrevHash, prev)
				}
				want := hashRecord(prev, &recs[i])
				if recs[i].Hash != want {
					t.Fatalf("record %d: hash %s, want %s", i, recs[i].Hash, want)
				}
				// Its line quotes the hashes unseen only where
				// that is what quoting them would give.
				plain := recs[i]
				plain.hexLinks = false
				if got, want := appendLine(nil, &recs[i]), appendLine(nil, &plain); string(got) != string(want) {
					t.Fatalf("record %d: line %s, want %s", i, got, want)
				}
				prev = want
			}
			if last != prev {
				t.Fatalf("returned %s, want %s", last, prev)
			}
		})
	}
}

// BenchmarkLinkForms compares the two ways linker.link hashes a record:
// one Sum256 over a joined stack buffer, and the reused streaming digest
// over the header and the data where they lie. They cost about the same
// per byte (the joined form a little less when small); what the streaming
// form spares above linkJoined is the buffer the joined one had to
// allocate there.
func BenchmarkLinkForms(b *testing.B) {
	prev := make([]byte, sha256.Size)
	for _, size := range []int{100, 300, 450, 1300} {
		r := Record{Daemon: "3f0c9a2e", Time: time.Unix(1764500000, 123456789), Kind: kindStatement,
			Session: "0f3c9a2e5b7d1c4a", Data: json.RawMessage(strings.Repeat("x", size))}
		b.Run(fmt.Sprintf("data=%d/joined", size), func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 2048)
			for range b.N {
				buf = appendLinkHeader(buf[:0], prev, &r)
				_ = sha256.Sum256(append(buf, r.Data...))
			}
		})
		b.Run(fmt.Sprintf("data=%d/streamed", size), func(b *testing.B) {
			b.ReportAllocs()
			l := linker{d: sha256.New()}
			for range b.N {
				l.hdr = appendLinkHeader(l.hdr[:0], prev, &r)
				l.d.Reset()
				l.d.Write(l.hdr)
				l.d.Write(r.Data)
				l.sum = l.d.Sum(l.sum[:0])
			}
		})
	}
}
