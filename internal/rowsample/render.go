package rowsample

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Type OIDs rendered from the binary format.
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidXML         = 142
	oidFloat4      = 700
	oidFloat8      = 701
	oidBPChar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTimestamp   = 1114
	oidTimestampTZ = 1184
	oidUUID        = 2950
	oidJSONB       = 3802
)

var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

const ellipsis = "…"

// textOID is whether a binary value of type oid is its text.
func textOID(oid uint32) bool {
	switch oid {
	case oidText, oidVarchar, oidBPChar, oidName, oidJSON, oidXML, oidChar:
		return true
	}
	return false
}

// appendRendered appends one result value as a sample shows it, at most
// limit bytes (cut reports that it was shortened). Text-format values are
// kept as the client got them; binary values of common types are rendered
// as their text form would read, any other binary value as \x hex.
func appendRendered(dst, v []byte, oid uint32, format int16, limit int) ([]byte, bool) {
	if format != 1 || textOID(oid) {
		return appendText(dst, v, limit)
	}
	switch oid {
	case oidJSONB:
		if len(v) > 0 && v[0] == 1 {
			return appendText(dst, v[1:], limit)
		}
	case oidBool:
		if len(v) == 1 {
			if v[0] != 0 {
				return append(dst, 't'), false
			}
			return append(dst, 'f'), false
		}
	case oidInt2:
		if len(v) == 2 {
			return strconv.AppendInt(dst, int64(int16(binary.BigEndian.Uint16(v))), 10), false
		}
	case oidInt4:
		if len(v) == 4 {
			return strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(v))), 10), false
		}
	case oidOID:
		if len(v) == 4 {
			return strconv.AppendUint(dst, uint64(binary.BigEndian.Uint32(v)), 10), false
		}
	case oidInt8:
		if len(v) == 8 {
			return strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(v)), 10), false
		}
	case oidFloat4:
		if len(v) == 4 {
			return strconv.AppendFloat(dst, float64(math.Float32frombits(binary.BigEndian.Uint32(v))), 'g', -1, 32), false
		}
	case oidFloat8:
		if len(v) == 8 {
			return strconv.AppendFloat(dst, math.Float64frombits(binary.BigEndian.Uint64(v)), 'g', -1, 64), false
		}
	case oidUUID:
		if len(v) == 16 {
			dst = hex.AppendEncode(dst, v[:4])
			for _, part := range [][]byte{v[4:6], v[6:8], v[8:10], v[10:]} {
				dst = hex.AppendEncode(append(dst, '-'), part)
			}
			return dst, false
		}
	case oidDate:
		if len(v) == 4 {
			d := int32(binary.BigEndian.Uint32(v))
			switch d {
			case math.MaxInt32:
				return append(dst, "infinity"...), false
			case math.MinInt32:
				return append(dst, "-infinity"...), false
			}
			return pgEpoch.AddDate(0, 0, int(d)).AppendFormat(dst, "2006-01-02"), false
		}
	case oidTimestamp, oidTimestampTZ:
		if len(v) == 8 {
			us := int64(binary.BigEndian.Uint64(v))
			switch us {
			case math.MaxInt64:
				return append(dst, "infinity"...), false
			case math.MinInt64:
				return append(dst, "-infinity"...), false
			}
			t := pgEpoch.Add(time.Duration(us/1e6) * time.Second).Add(time.Duration(us%1e6) * time.Microsecond)
			if oid == oidTimestampTZ {
				return t.AppendFormat(dst, "2006-01-02 15:04:05.999999Z07:00"), false
			}
			return t.AppendFormat(dst, "2006-01-02 15:04:05.999999"), false
		}
	}
	return appendHex(dst, v, limit)
}

// textCut is how many bytes of v a text rendering of at most limit bytes
// keeps: all of v, or a prefix ending at a rune boundary with room left
// for the ellipsis.
func textCut(v []byte, limit int) (int, bool) {
	if len(v) <= limit {
		return len(v), false
	}
	cut := max(limit-len(ellipsis), 0)
	for cut > 0 && cut < len(v) && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return cut, true
}

// hexCut is how many bytes of v a \x hex rendering of at most limit bytes
// keeps.
func hexCut(v []byte, limit int) (int, bool) {
	if 2+2*len(v) <= limit {
		return len(v), false
	}
	return max((limit-2-len(ellipsis))/2, 0), true
}

// appendText appends v as text, cut at a rune boundary to at most limit
// bytes (an ellipsis, counted, marks the cut).
func appendText(dst, v []byte, limit int) ([]byte, bool) {
	n, cut := textCut(v, limit)
	dst = append(dst, v[:n]...)
	if cut {
		dst = append(dst, ellipsis...)
	}
	return dst, cut
}

// appendHex appends v as \x hex (PostgreSQL's bytea output), cut to limit
// bytes.
func appendHex(dst, v []byte, limit int) ([]byte, bool) {
	n, cut := hexCut(v, limit)
	dst = hex.AppendEncode(append(dst, `\x`...), v[:n])
	if cut {
		dst = append(dst, ellipsis...)
	}
	return dst, cut
}
