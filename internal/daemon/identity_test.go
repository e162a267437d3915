package daemon

import (
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/control"
)

// The uid a control call acts on comes from the kernel's peer record; only
// root may name another.
func TestSubject(t *testing.T) {
	u := func(n uint32) *uint32 { return &n }
	cases := []struct {
		name    string
		peer    uint32
		forUID  *uint32
		want    uint32
		wantErr string
	}{
		{"self", 1000, nil, 1000, ""},
		{"self named", 1000, u(1000), 1000, ""},
		{"other user for another", 1000, u(1001), 0, "only root"},
		{"other user for root", 1000, u(0), 0, "only root"},
		{"root for a user", 0, u(1001), 1001, ""},
		{"root", 0, nil, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := subject(control.Peer{UID: c.peer, PID: 42}, c.forUID)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("subject = %d, %v; want error %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("subject = %d, %v; want %d", got, err, c.want)
			}
		})
	}
}
