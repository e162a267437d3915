package policy

import (
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// The policy file, strict YAML:
//
//	unparseable: deny          # deny | allow
//	role_changes: deny         # deny | allow
//	fast_path: {agent: deny, person: allow}
//	agent_holds: true          # agents' DDL and UPDATE/DELETE without WHERE wait for approval
//	agent_hold_timeout: 10m    # default: approvals.timeout of airlockd's configuration
//	agent_executables: [cursor, /usr/bin/claude]
//	rules:
//	  - name: no-copy-program
//	    action: deny            # deny | hold | allow
//	    reason: runs a shell command on the database server
//	    flags: [copy_program]
//	    connections: [prod]     # optional limits: all must hold
//	    groups: [contractors]
//	    class: agent            # agent | person
//	    # conditions (all must hold for a statement; none = every statement):
//	    kinds: [ddl]            # read write ddl dcl transaction session utility block execute
//	    commands: [DROP TABLE]
//	    tables: [public.secret_*]
//	    functions: [pg_read_file]
//	    regex: '(?i)\bpg_sleep\b'
//	    timeout: 5m             # hold rules: how long to wait (default: agent_hold_timeout, else approvals.timeout)
type file struct {
	Unparseable      string            `yaml:"unparseable"`
	RoleChanges      string            `yaml:"role_changes"`
	FastPath         map[string]string `yaml:"fast_path"`
	AgentHolds       *bool             `yaml:"agent_holds"`
	AgentHoldTimeout string            `yaml:"agent_hold_timeout"`
	AgentExecutables []string          `yaml:"agent_executables"`
	Rules            []fileRule        `yaml:"rules"`
}

type fileRule struct {
	Name        string   `yaml:"name"`
	Action      string   `yaml:"action"`
	Reason      string   `yaml:"reason"`
	Timeout     string   `yaml:"timeout"`
	Connections []string `yaml:"connections"`
	Groups      []string `yaml:"groups"`
	Class       string   `yaml:"class"`
	Kinds       []string `yaml:"kinds"`
	Commands    []string `yaml:"commands"`
	Tables      []string `yaml:"tables"`
	Functions   []string `yaml:"functions"`
	Flags       []string `yaml:"flags"`
	Regex       string   `yaml:"regex"`
}

var topKeys = keysOf("unparseable", "role_changes", "fast_path", "agent_holds", "agent_hold_timeout", "agent_executables", "rules")
var ruleKeys = keysOf("name", "action", "reason", "timeout", "connections", "groups", "class", "kinds", "commands", "tables", "functions", "flags", "regex")

func keysOf(k ...string) map[string]bool {
	m := map[string]bool{}
	for _, s := range k {
		m[s] = true
	}
	return m
}

// Error is a policy file error with its place: the configuration's own
// error type, so both read "file:line: key: message".
type Error = config.Error

// Load reads and parses a policy file.
func Load(name string) (*Policy, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(name, data)
}

// Parse parses and compiles a policy file's contents; name is for errors.
// An empty document is the built-in defaults.
func Parse(name string, data []byte) (*Policy, error) {
	var f file
	var lines []int // line of each rule
	if len(strings.TrimSpace(string(data))) > 0 {
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil, &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
		}
		if len(doc.Content) > 0 {
			root := doc.Content[0]
			if root.Kind != yaml.MappingNode {
				return nil, &Error{File: name, Line: root.Line, Msg: "a policy is a mapping (unparseable:, role_changes:, rules:, ...)"}
			}
			if err := checkKeys(name, root, topKeys, ""); err != nil {
				return nil, err
			}
			for i := 0; i+1 < len(root.Content); i += 2 {
				if root.Content[i].Value != "rules" {
					continue
				}
				rules := root.Content[i+1]
				if rules.Kind != yaml.SequenceNode {
					return nil, &Error{File: name, Line: rules.Line, Key: "rules", Msg: "a list of rules"}
				}
				for j, r := range rules.Content {
					lines = append(lines, r.Line)
					if r.Kind != yaml.MappingNode {
						return nil, &Error{File: name, Line: r.Line, Key: fmt.Sprintf("rules[%d]", j), Msg: "a rule is a mapping (name:, action:, ...)"}
					}
					if err := checkKeys(name, r, ruleKeys, fmt.Sprintf("rules[%d].", j)); err != nil {
						return nil, err
					}
				}
			}
			if err := root.Decode(&f); err != nil {
				return nil, &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
			}
		}
	}
	return compile(name, &f, lines)
}

func checkKeys(file string, m *yaml.Node, allowed map[string]bool, prefix string) error {
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := m.Content[i]
		if !allowed[k.Value] {
			return &Error{File: file, Line: k.Line, Key: prefix + k.Value, Msg: "unknown key"}
		}
	}
	return nil
}

func compile(name string, f *file, lines []int) (*Policy, error) {
	p := &Policy{Source: name, denyUnparseable: true, denyRoleChanges: true, agentHolds: true,
		fastPathAgent: Deny, fastPathPerson: Allow}
	var err error
	if p.denyUnparseable, err = denyOrAllow(f.Unparseable, true); err != nil {
		return nil, &Error{File: name, Key: "unparseable", Msg: err.Error()}
	}
	if p.denyRoleChanges, err = denyOrAllow(f.RoleChanges, true); err != nil {
		return nil, &Error{File: name, Key: "role_changes", Msg: err.Error()}
	}
	for k, v := range f.FastPath {
		d, err := denyOrAllow(v, true)
		if err != nil {
			return nil, &Error{File: name, Key: "fast_path." + k, Msg: err.Error()}
		}
		a := Allow
		if d {
			a = Deny
		}
		switch k {
		case ClassAgent:
			p.fastPathAgent = a
		case ClassPerson:
			p.fastPathPerson = a
		default:
			return nil, &Error{File: name, Key: "fast_path." + k, Msg: "unknown process class (agent or person)"}
		}
	}
	if f.AgentHolds != nil {
		p.agentHolds = *f.AgentHolds
	}
	if f.AgentHoldTimeout != "" {
		if p.agentHoldTimeout, err = parseTimeout(f.AgentHoldTimeout); err != nil {
			return nil, &Error{File: name, Key: "agent_hold_timeout", Msg: err.Error()}
		}
	}
	p.agentExecutables = f.AgentExecutables
	seen := map[string]bool{}
	for i, fr := range f.Rules {
		line := 0
		if i < len(lines) {
			line = lines[i]
		}
		r, err := compileRule(fr, p.agentHoldTimeout)
		if err != nil {
			return nil, &Error{File: name, Line: line, Key: fmt.Sprintf("rules[%d]", i), Msg: err.Error()}
		}
		if seen[r.Name] {
			return nil, &Error{File: name, Line: line, Key: fmt.Sprintf("rules[%d].name", i), Msg: fmt.Sprintf("rule %q is defined twice", r.Name)}
		}
		seen[r.Name] = true
		r.Line = line
		p.rules = append(p.rules, r)
		p.readsText = p.readsText || r.regex != nil
	}
	return p, nil
}

func denyOrAllow(v string, def bool) (bool, error) {
	switch v {
	case "":
		return def, nil
	case "deny":
		return true, nil
	case "allow":
		return false, nil
	}
	return false, fmt.Errorf("%q: write deny or allow", v)
}

func parseTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (write e.g. 30s, 5m, 1h)", s)
	}
	return d, nil
}

var builtinNames = keysOf(RuleUnparseable, RuleRoleChanges, RuleFastPath, RuleAgentHolds)

func compileRule(fr fileRule, holdTimeout time.Duration) (*Rule, error) {
	r := &Rule{Name: fr.Name, Reason: fr.Reason, connections: fr.Connections, groups: fr.Groups}
	if r.Name == "" {
		return nil, fmt.Errorf("name: every rule needs a name (errors and records quote it)")
	}
	if builtinNames[r.Name] {
		return nil, fmt.Errorf("name: %q is a built-in rule's name", r.Name)
	}
	switch fr.Action {
	case "deny":
		r.Action = Deny
	case "hold":
		r.Action = Hold
		r.Timeout = holdTimeout
	case "allow":
		r.Action = Allow
	case "":
		return nil, fmt.Errorf("action: missing (deny, hold or allow)")
	default:
		return nil, fmt.Errorf("action: %q: write deny, hold or allow", fr.Action)
	}
	if fr.Timeout != "" {
		if r.Action != Hold {
			return nil, fmt.Errorf("timeout: only hold rules wait")
		}
		d, err := parseTimeout(fr.Timeout)
		if err != nil {
			return nil, fmt.Errorf("timeout: %v", err)
		}
		r.Timeout = d
	}
	if r.Reason == "" {
		r.Reason = "policy rule " + r.Name
	}
	switch fr.Class {
	case "", ClassAgent, ClassPerson:
		r.class = fr.Class
	default:
		return nil, fmt.Errorf("class: %q: write agent or person", fr.Class)
	}
	for _, k := range fr.Kinds {
		switch sqlclass.Kind(k) {
		case sqlclass.KindRead, sqlclass.KindWrite, sqlclass.KindDDL, sqlclass.KindDCL, sqlclass.KindTransaction,
			sqlclass.KindSession, sqlclass.KindUtility, sqlclass.KindBlock, sqlclass.KindExecute:
			r.kinds = append(r.kinds, sqlclass.Kind(k))
		default:
			return nil, fmt.Errorf("kinds: %q: unknown kind (read, write, ddl, dcl, transaction, session, utility, block, execute)", k)
		}
	}
	for _, c := range fr.Commands {
		r.commands = append(r.commands, strings.ToUpper(strings.Join(strings.Fields(c), " ")))
	}
	for _, list := range []struct {
		in  []string
		out *[]string
		key string
	}{{fr.Tables, &r.tables, "tables"}, {fr.Functions, &r.functions, "functions"}} {
		for _, t := range list.in {
			t = strings.ToLower(t)
			if _, err := path.Match(t, ""); err != nil {
				return nil, fmt.Errorf("%s: %q is not a valid pattern (* ? [...])", list.key, t)
			}
			*list.out = append(*list.out, t)
		}
	}
	for _, fl := range fr.Flags {
		f, ok := sqlclass.FlagByName(fl)
		if !ok {
			return nil, fmt.Errorf("flags: %q: unknown flag (e.g. no_where, copy_program, side_effect, role_switch, dynamic_sql, opaque)", fl)
		}
		r.flags = append(r.flags, f)
	}
	if fr.Regex != "" {
		re, err := regexp.Compile(fr.Regex)
		if err != nil {
			return nil, fmt.Errorf("regex: %v", err)
		}
		r.regex = re
	}
	return r, nil
}
