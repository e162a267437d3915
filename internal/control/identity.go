package control

import (
	"context"
	"time"
)

// LoginRequest hands the tokens from `airlock login` to the daemon. They
// are secrets: the daemon never logs or echoes them.
type LoginRequest struct {
	IDToken      string `json:"id_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// IssuerInfo is a trusted issuer as the CLI needs it to run a login flow.
type IssuerInfo struct {
	Name     string   `json:"name"`
	URL      string   `json:"url"`
	ClientID string   `json:"client_id,omitempty"`
	Kind     string   `json:"kind"` // people | workload
	Scopes   []string `json:"scopes,omitempty"`
}

// IdentityInfo is who a uid is to Airlock (`airlock whoami`).
type IdentityInfo struct {
	UID         uint32             `json:"uid"`
	Name        string             `json:"name"`
	Email       string             `json:"email,omitempty"`
	Issuer      string             `json:"issuer,omitempty"`
	Subject     string             `json:"subject,omitempty"`
	Groups      []string           `json:"groups,omitempty"`
	Expires     time.Time          `json:"expires,omitzero"`
	Renewable   bool               `json:"renewable"`
	LoggedInBy  uint32             `json:"logged_in_by"`
	Local       bool               `json:"local,omitempty"` // no identity section: the local account stands for the person
	Connections []ConnectionAccess `json:"connections"`
}

// ConnectionAccess says whether the person may open a connection, and
// with which upstream roles.
type ConnectionAccess struct {
	Name    string   `json:"name"`
	Targets []string `json:"targets"`
	Allowed bool     `json:"allowed"`
	Roles   []string `json:"roles,omitempty"`
	Reason  string   `json:"reason,omitempty"`
}

// IdentityHandler is implemented by daemons that bind identities to uids.
// The uid acted on is the peer's, or ForUID when the peer is root.
type IdentityHandler interface {
	Issuers(ctx context.Context, p Peer) ([]IssuerInfo, error)
	Login(ctx context.Context, p Peer, forUID *uint32, req *LoginRequest) (*IdentityInfo, error)
	Whoami(ctx context.Context, p Peer, forUID *uint32) (*IdentityInfo, error)
	Logout(ctx context.Context, p Peer, forUID *uint32) error
}
