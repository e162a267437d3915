package approval

import "regexp"

// Approvers see the requester's own statement, but a literal secret in it
// (a role's password, a connection string's password) must not travel to a
// webhook or another person's terminal.
var secretLiterals = []*regexp.Regexp{
	regexp.MustCompile(`(?is)(\bpassword\s+)('(?:[^']|'')*'|\$[a-z_0-9]*\$.*?\$[a-z_0-9]*\$)`),
	regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^']|'')*'|[^\s';]+)`),
	regexp.MustCompile(`(?i)(://[^:/@\s']+:)([^@\s']+)`),
}

// Redact returns sql with literal secrets replaced by '***'.
func Redact(sql string) string {
	for _, re := range secretLiterals {
		sql = re.ReplaceAllString(sql, "${1}'***'")
	}
	return sql
}
