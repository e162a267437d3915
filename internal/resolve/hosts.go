package resolve

import (
	"bufio"
	"bytes"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// maxHostsFile bounds how much of a hosts file is read.
const maxHostsFile = 16 << 20

// parseHosts parses hosts(5) text: "address name [aliases...]" lines, with
// '#' comments. Names are lower-cased without a trailing dot; an address's
// zone is dropped (a zoned address cannot be redirected by address alone);
// lines whose address does not parse are skipped. Each name maps to its
// addresses in file order, without duplicates.
func parseHosts(b []byte) map[string][]netip.Addr {
	m := map[string][]netip.Addr{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		addr, err := netip.ParseAddr(f[0])
		if err != nil {
			continue
		}
		addr = addr.WithZone("")
		for _, name := range f[1:] {
			name = normalize(name)
			if name == "" {
				continue
			}
			if !containsAddr(m[name], addr) {
				m[name] = append(m[name], addr)
			}
		}
	}
	// A line too long for the scanner ends the file; what was read stands.
	return m
}

func containsAddr(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// hostsFile is a hosts file re-read whenever its size or mtime changes.
type hostsFile struct {
	path string

	mu      sync.Mutex
	size    int64
	mtime   time.Time
	entries map[string][]netip.Addr
	loaded  bool
}

// lookup returns the addresses for name (normalized), or nil. A missing or
// unreadable file has no entries.
func (h *hostsFile) lookup(name string) []netip.Addr {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	fi, err := os.Stat(h.path)
	if err != nil {
		h.entries, h.loaded = nil, false
		return nil
	}
	if !h.loaded || fi.Size() != h.size || !fi.ModTime().Equal(h.mtime) {
		b, err := readLimited(h.path, maxHostsFile)
		if err != nil {
			h.entries, h.loaded = nil, false
			return nil
		}
		h.entries, h.size, h.mtime, h.loaded = parseHosts(b), fi.Size(), fi.ModTime(), true
	}
	return h.entries[name]
}

func readLimited(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}
