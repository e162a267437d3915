// Package policy decides what happens to a classified SQL string: allow it,
// deny it (the client gets an error, the server never sees it) or hold it
// for a person's approval. Rules come from a policy file (see Parse) and
// may be limited to connections, identity groups and process classes.
//
// The decision reads every statement, nested ones included (DO bodies,
// function bodies, CTEs, PREPARE's statement): each is decided on its own,
// the first matching rule winning, and the strictest decision over all of
// them is the string's. Rewording, splitting or wrapping a statement
// therefore does not get around a rule.
//
// Built-in rules, before the configured ones:
//   - unparseable: SQL PostgreSQL's grammar rejects is denied (a proxy that
//     cannot read a statement cannot vouch for it);
//   - role_changes: creating, altering, dropping or renaming roles, password
//     changes and membership changes are denied, whatever the spelling
//     (a session's role must not hand itself a credential usable outside
//     Airlock), and so is code the classifier cannot read, which could do
//     the same;
//   - fast_path: protocol FunctionCall messages name a function by OID,
//     which the proxy does not resolve: denied for agents, allowed for
//     people (libpq's large-object calls use them);
//
// and after them, for statements no configured rule matched:
//   - agent_holds: an agent's DDL and UPDATE/DELETE without WHERE are held.
package policy

import (
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/airlockhq/airlock/internal/sqlclass"
)

// Action is what happens to a statement.
type Action int

const (
	Allow Action = iota
	Deny
	Hold
)

func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case Hold:
		return "hold"
	}
	return "allow"
}

// strictness orders actions: a deny anywhere in a string beats a hold,
// which beats an allow.
func (a Action) strictness() int {
	switch a {
	case Deny:
		return 2
	case Hold:
		return 1
	}
	return 0
}

// Decision is the outcome for one SQL string (or protocol message).
type Decision struct {
	Action  Action
	Rule    string        // the rule that decided; empty for the default allow
	Reason  string        // for the client and the record
	Timeout time.Duration // for Hold: how long to wait for a person
}

// Built-in rule names, as they appear in decisions.
const (
	RuleUnparseable = "unparseable"
	RuleRoleChanges = "role_changes"
	RuleFastPath    = "fast_path"
	RuleAgentHolds  = "agent_holds"
)

// Process classes (the same strings as session.ClassAgent/ClassPerson).
const (
	ClassAgent  = "agent"
	ClassPerson = "person"
)

// Who is the session a decision is for.
type Who struct {
	Connection string
	Groups     []string
	Class      string // ClassAgent or ClassPerson
}

// Rule is one configured rule, compiled.
type Rule struct {
	Name    string
	Action  Action
	Reason  string
	Timeout time.Duration
	Line    int

	connections []string
	groups      []string
	class       string

	kinds     []sqlclass.Kind
	commands  []string
	tables    []string // lower case patterns
	functions []string // lower case patterns
	flags     []sqlclass.Flag
	regex     *regexp.Regexp
}

// Policy is a compiled policy file. It is immutable once built: reloads
// build a new one.
type Policy struct {
	Source string // the file it came from

	rules             []*Rule
	denyUnparseable   bool
	denyRoleChanges   bool
	agentHolds        bool
	agentHoldTimeout  time.Duration
	fastPathAgent     Action
	fastPathPerson    Action
	agentExecutables  []string
	unparseableReason string
	readsText         bool // a rule matches the text (regex)
}

// ReadsText reports whether a decision may depend on a statement's text
// beyond what the classifier says of it: a rule matches its regex against
// Statement.Text. Otherwise two statements alike in everything the
// classifier reports get the same decision, whatever their constants
// (sqlclass.Classifier.ClassifyShape).
func (p *Policy) ReadsText() bool { return p.readsText }

// Default is the policy with only the built-in rules, in force when no
// policy file is configured.
func Default() *Policy {
	p, err := Parse("(built-in)", nil)
	if err != nil {
		panic("policy: built-in defaults do not parse: " + err.Error())
	}
	return p
}

// AgentExecutables are the executables (names or absolute paths) whose
// processes count as agents wherever they run.
func (p *Policy) AgentExecutables() []string { return p.agentExecutables }

// Rules returns the configured rules, in order.
func (p *Policy) Rules() []*Rule { return p.rules }

func (r *Rule) applies(w Who) bool {
	if r.class != "" && r.class != w.Class {
		return false
	}
	if len(r.connections) > 0 && !contains(r.connections, w.Connection) {
		return false
	}
	if len(r.groups) > 0 {
		ok := false
		for _, g := range w.Groups {
			if contains(r.groups, g) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// matches reports whether the rule's conditions all hold for s. A rule
// with no condition matches every statement.
func (r *Rule) matches(s *sqlclass.Statement) bool {
	if len(r.kinds) > 0 {
		ok := false
		for _, k := range r.kinds {
			if s.Kind == k {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.commands) > 0 && !contains(r.commands, s.Command) {
		return false
	}
	if len(r.flags) > 0 {
		ok := false
		for _, f := range r.flags {
			if s.Flags.Has(f) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.tables) > 0 && !anyName(r.tables, s.TablesRead) && !anyName(r.tables, s.TablesWritten) {
		return false
	}
	if len(r.functions) > 0 && !anyName(r.functions, s.Functions) {
		return false
	}
	if r.regex != nil && !r.regex.MatchString(s.Text) {
		return false
	}
	return true
}

// anyName reports whether a name matches a pattern. Names come as written
// in the SQL: an unqualified name may resolve to any schema on the
// search_path, so it is compared with the table part of a qualified
// pattern (public.secrets matches secrets), except that a pattern naming a
// whole schema (secrets.*) matches an unqualified name only for schema
// public: otherwise it would match every unqualified name. A qualified
// name is compared with the whole pattern and, for an unqualified pattern,
// with its table part.
func anyName(patterns, names []string) bool {
	for _, n := range names {
		n = strings.ToLower(n)
		nSchema, nTable, nQual := splitName(n)
		for _, p := range patterns {
			pSchema, pTable, pQual := splitName(p)
			switch {
			case nQual && pQual:
				if ok, _ := path.Match(p, n); ok {
					return true
				}
				_ = nSchema
			case !nQual && pQual:
				if strings.Trim(pTable, "*") == "" {
					if ok, _ := path.Match(pSchema, "public"); !ok {
						continue
					}
				}
				if ok, _ := path.Match(pTable, nTable); ok {
					return true
				}
			case nQual && !pQual:
				if ok, _ := path.Match(pTable, nTable); ok {
					return true
				}
			default:
				if ok, _ := path.Match(p, n); ok {
					return true
				}
			}
		}
	}
	return false
}

func splitName(n string) (schema, table string, qualified bool) {
	if i := strings.LastIndexByte(n, '.'); i >= 0 {
		return n[:i], n[i+1:], true
	}
	return "", n, false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Decide decides a classified string. err is Classify's error (the SQL did
// not parse).
func (p *Policy) Decide(res *sqlclass.Result, err error, w Who) Decision {
	if err != nil || res == nil {
		if p.denyUnparseable {
			return Decision{Action: Deny, Rule: RuleUnparseable, Reason: "Airlock cannot read this SQL (" + errText(err) + "), so it does not let it through"}
		}
		return Decision{Action: Allow, Rule: RuleUnparseable}
	}
	if p.denyRoleChanges && res.ChangesRoleOrPassword() {
		reason := "changing roles, passwords or role memberships is not allowed through Airlock"
		if !res.Has(sqlclass.FlagRoleChange) && !res.Has(sqlclass.FlagPasswordChange) {
			reason = "this runs code Airlock cannot read (dynamic SQL or another language), which could change roles or passwords"
		}
		return Decision{Action: Deny, Rule: RuleRoleChanges, Reason: reason}
	}
	best := Decision{Action: Allow}
	for _, top := range res.Statements {
		// PREPARE runs nothing yet: it is refused if what it prepares
		// would be, but a hold waits for the EXECUTE that runs it
		// (DecidePrepared gives the decision the name keeps).
		prepare := top.Flags.Has(sqlclass.FlagPrepare)
		top.Walk(func(s *sqlclass.Statement) {
			d := p.decideStatement(s, w)
			if prepare && d.Action == Hold {
				return
			}
			if d.Action.strictness() > best.Action.strictness() ||
				(d.Action == best.Action && best.Rule == "" && d.Rule != "") {
				best = d
			}
		})
	}
	return best
}

// DecidePrepared is the decision an EXECUTE of a statement prepared by SQL
// PREPARE gets: the prepared statement's own, holds included.
func (p *Policy) DecidePrepared(prepare *sqlclass.Statement, w Who) Decision {
	best := Decision{Action: Allow}
	prepare.Walk(func(s *sqlclass.Statement) {
		d := p.decideStatement(s, w)
		if d.Action.strictness() > best.Action.strictness() ||
			(d.Action == best.Action && best.Rule == "" && d.Rule != "") {
			best = d
		}
	})
	return best
}

// DecideStatement decides one statement (a fast-path call's).
func (p *Policy) decideStatement(s *sqlclass.Statement, w Who) Decision {
	for _, r := range p.rules {
		if r.applies(w) && r.matches(s) {
			return Decision{Action: r.Action, Rule: r.Name, Reason: r.Reason, Timeout: r.Timeout}
		}
	}
	if p.agentHolds && w.Class == ClassAgent {
		switch {
		case s.Kind == sqlclass.KindDDL && !s.Flags.Has(sqlclass.FlagFunctionBody):
			return Decision{Action: Hold, Rule: RuleAgentHolds, Reason: "an agent's schema change (" + s.Command + ") waits for a person's approval", Timeout: p.agentHoldTimeout}
		case s.Flags.Has(sqlclass.FlagNoWhere) && !s.Flags.Has(sqlclass.FlagFunctionBody):
			// The flag is the classifier's for UPDATE/DELETE without
			// WHERE, also inside a CTE or a code block.
			return Decision{Action: Hold, Rule: RuleAgentHolds, Reason: "an agent's UPDATE or DELETE without WHERE (every row) waits for a person's approval", Timeout: p.agentHoldTimeout}
		}
	}
	return Decision{Action: Allow}
}

// DecideFastPath decides a protocol FunctionCall. name is the function's
// name when the caller resolved its OID, else empty.
func (p *Policy) DecideFastPath(name string, w Who) Decision {
	a := p.fastPathPerson
	if w.Class == ClassAgent {
		a = p.fastPathAgent
	}
	if a == Deny {
		return Decision{Action: Deny, Rule: RuleFastPath, Reason: "fast-path function calls are not allowed here; call the function in SQL instead"}
	}
	if name == "" {
		return Decision{Action: Allow, Rule: RuleFastPath}
	}
	st := sqlclass.FastPathCall(name)
	res := &sqlclass.Result{SQL: st.Text, Statements: []*sqlclass.Statement{st}}
	return p.Decide(res, nil, w)
}

func errText(err error) string {
	if err == nil {
		return "no statement"
	}
	return err.Error()
}
