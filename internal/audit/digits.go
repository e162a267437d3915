package audit

import (
	"math/bits"
	"slices"
)

// Every statement record formats six to eight integers (time_ns's 19
// digits, rows, bytes, duration_us, the seq, the sample's oids), and
// strconv's formatting was a tenth of recording one: it formats into a
// buffer of its own and copies that in. These write the digits straight
// into b, two a step, the same bytes as strconv.AppendInt and AppendUint
// in base 10 (a test and a fuzz target hold them together).

// decimalPairs is the two digits of each number below 100.
const decimalPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// powersOf10 is 10^n for each n a uint64 holds.
var powersOf10 = [20]uint64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
	1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

// appendInt is strconv.AppendInt(b, v, 10).
func appendInt(b []byte, v int64) []byte {
	u := uint64(v)
	if v < 0 {
		b = append(b, '-')
		u = -u // two's complement: math.MinInt64 too
	}
	return appendUint(b, u)
}

// appendUint is strconv.AppendUint(b, v, 10).
func appendUint(b []byte, v uint64) []byte {
	if v < 10 {
		return append(b, byte('0'+v))
	}
	if v < 100 {
		return append(b, decimalPairs[2*v], decimalPairs[2*v+1])
	}
	// The digit count from the bit length (log10(2) ≈ 1233/4096), one
	// too many at most.
	n := bits.Len64(v)*1233>>12 + 1
	if v < powersOf10[n-1] {
		n--
	}
	l := len(b)
	b = slices.Grow(b, n)[:l+n]
	d := b[l : l+n]
	i := n
	for v >= 1e8 {
		q := v / 1e8
		put8Digits(d[i-8:i], uint32(v-q*1e8))
		i -= 8
		v = q
	}
	// The rest, at most eight digits, in 32-bit arithmetic.
	r := uint32(v)
	for r >= 100 {
		q := r / 100
		k := (r - q*100) * 2
		i -= 2
		d[i], d[i+1] = decimalPairs[k], decimalPairs[k+1]
		r = q
	}
	if r >= 10 {
		d[0], d[1] = decimalPairs[2*r], decimalPairs[2*r+1]
	} else {
		d[0] = byte('0' + r)
	}
	return b
}

// put8Digits writes r (below 10^8) as eight digits, leading zeros kept.
func put8Digits(d []byte, r uint32) {
	_ = d[7]
	hi, lo := r/10000, r%10000
	a, c := hi/100*2, hi%100*2
	e, g := lo/100*2, lo%100*2
	d[0], d[1] = decimalPairs[a], decimalPairs[a+1]
	d[2], d[3] = decimalPairs[c], decimalPairs[c+1]
	d[4], d[5] = decimalPairs[e], decimalPairs[e+1]
	d[6], d[7] = decimalPairs[g], decimalPairs[g+1]
}
