// Package identity says which person stands behind a local uid.
//
// Until OIDC login lands, a person is the uid's local account. The seam is
// the Resolver interface: the OIDC implementation replaces LocalUsers without
// touching the proxies.
package identity

import (
	"context"
	"fmt"
	"os/user"
	"strconv"
)

// Person is who a session acts for.
type Person struct {
	Name   string   `json:"name"`
	UID    uint32   `json:"uid"`
	Groups []string `json:"groups,omitempty"`
	// Set for identities proven by an OIDC token (empty for local users).
	Issuer  string `json:"issuer,omitempty"`
	Subject string `json:"subject,omitempty"`
	Email   string `json:"email,omitempty"`
}

// LocalUsers resolves a uid to its account in the local user database.
type LocalUsers struct{}

// Resolve returns the local account of uid. A uid with no account is an
// error: an anonymous person must never get a session.
func (LocalUsers) Resolve(_ context.Context, uid uint32) (Person, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return Person{}, fmt.Errorf("look up local user of uid %d: %w", uid, err)
	}
	p := Person{Name: u.Username, UID: uid}
	if gids, err := u.GroupIds(); err == nil {
		for _, gid := range gids {
			if g, err := user.LookupGroupId(gid); err == nil {
				p.Groups = append(p.Groups, g.Name)
			}
		}
	}
	return p, nil
}
