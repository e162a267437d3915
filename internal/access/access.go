// Package access decides, from a person's groups, whether they may open a
// connection and which upstream group roles their session gets.
package access

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/airlockhq/airlock/internal/identity"
)

// Rule gives one group a connection and the roles its sessions get.
type Rule struct {
	Group string
	Roles []string
}

// Rules are one connection's access rules.
type Rules struct {
	Connection string
	Rules      []Rule
	// Enforce: deny a person no rule admits. Set when identity is
	// configured or rules are written; otherwise every local user gets
	// the connection's default roles, as before identity existed.
	Enforce bool
}

// Decision is what a person gets on a connection.
type Decision struct {
	Groups []string // the person's groups that admitted them
	Roles  []string // union of those groups' roles, sorted; nil: the connection's defaults
}

// Decide admits p or says why not and what to do.
func (r Rules) Decide(p identity.Person) (Decision, error) {
	if !r.Enforce {
		return Decision{}, nil
	}
	if len(r.Rules) == 0 {
		return Decision{}, fmt.Errorf("connection %s admits no group yet: ask your Airlock admin to add access rules for it", r.Connection)
	}
	var d Decision
	for _, rule := range r.Rules {
		if !slices.Contains(p.Groups, rule.Group) {
			continue
		}
		d.Groups = append(d.Groups, rule.Group)
		for _, role := range rule.Roles {
			if !slices.Contains(d.Roles, role) {
				d.Roles = append(d.Roles, role)
			}
		}
	}
	if len(d.Groups) == 0 {
		groups := "none"
		if len(p.Groups) > 0 {
			groups = strings.Join(p.Groups, ", ")
		}
		return Decision{}, fmt.Errorf("%s (groups: %s) is not in a group allowed on connection %s (allowed: %s): ask to be added to one of them, then run `airlock login` again",
			p.Name, groups, r.Connection, strings.Join(r.Groups(), ", "))
	}
	sort.Strings(d.Roles)
	if d.Roles == nil {
		d.Roles = []string{}
	}
	return d, nil
}

// Groups lists the groups admitted.
func (r Rules) Groups() []string {
	out := make([]string, len(r.Rules))
	for i, rule := range r.Rules {
		out[i] = rule.Group
	}
	return out
}

// AllRoles lists every role some rule grants, for checking at start.
func (r Rules) AllRoles() []string {
	var out []string
	for _, rule := range r.Rules {
		for _, role := range rule.Roles {
			if !slices.Contains(out, role) {
				out = append(out, role)
			}
		}
	}
	sort.Strings(out)
	return out
}
