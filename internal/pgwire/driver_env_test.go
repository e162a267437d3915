package pgwire

import "os"

// AIRLOCK_PGWIRE_DRIVER=loop runs the package's whole suite on the event
// loop driver.
func init() {
	if d := os.Getenv("AIRLOCK_PGWIRE_DRIVER"); d != "" {
		defaultDriver = d
	}
}
