package approval

import "github.com/airlockhq/airlock/internal/redact"

// Redact returns sql with secret-bearing constants replaced: approvers see
// the requester's statement, but a literal secret in it (a role's password,
// a connection string's password) must not travel to a webhook or another
// person's terminal.
func Redact(sql string) string { return redact.SQL(sql) }
