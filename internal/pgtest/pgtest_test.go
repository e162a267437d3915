package pgtest

import (
	"testing"

	"github.com/airlockhq/airlock/internal/testnet"
)

func TestStartInNamespace(t *testing.T) {
	h := testnet.NewHost(t)
	s := Start(t, Options{Host: h, SSL: true})
	if got := s.Psql(t, "postgres", "select 1+1"); got != "2" {
		t.Fatalf("select 1+1 = %q, want 2", got)
	}
	if got := s.Psql(t, "postgres", "show ssl"); got != "on" {
		t.Fatalf("ssl = %q, want on", got)
	}
}
