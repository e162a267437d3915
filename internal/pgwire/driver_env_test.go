package pgwire

import "os"

// AIRLOCK_PGWIRE_DRIVER=goroutines runs the package's whole suite on the
// goroutine driver (the event loop is the default).
func init() {
	if d := os.Getenv("AIRLOCK_PGWIRE_DRIVER"); d != "" {
		defaultDriver = d
	}
}
