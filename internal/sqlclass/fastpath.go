package sqlclass

import "strings"

// FastPathCall classifies a protocol-level FunctionCall (the fast path
// libpq's large-object functions use), which names its function by OID and
// carries no SQL: the caller resolves the OID to the function's name
// (schema-qualified or not) and gets a Statement as for SELECT name(...).
// The arguments are binary values the classifier cannot read, so
// set_config counts as changing any setting, role included, and the
// functions that run SQL text count as opaque.
func FastPathCall(name string) *Statement {
	st := &Statement{
		Text: "FUNCTION CALL " + name, Redacted: "FUNCTION CALL " + name,
		Command: "FUNCTION CALL", Kind: KindRead, Functions: []string{name},
	}
	last := lastName(name)
	switch {
	case last == "set_config":
		st.Flags |= FlagSideEffect | FlagSecuritySetting | FlagRoleSwitch | FlagReadWrite
		st.SideEffects = []SideEffect{{Function: name, Reason: "changes a setting chosen at run time"}}
	case sideEffects[last] != "":
		st.Flags |= FlagSideEffect
		st.SideEffects = []SideEffect{{Function: name, Reason: sideEffects[last]}}
	}
	if sqlTextFunctions[last] {
		st.Flags |= FlagDynamicSQL | FlagOpaque
	}
	if connectionFunctions[last] {
		// A connection string may carry a password: never log the values.
		st.Flags |= FlagSecret
	}
	if strings.HasPrefix(last, "lo_") || last == "lowrite" || last == "loread" {
		st.Flags |= FlagSideEffect
	}
	return st
}
