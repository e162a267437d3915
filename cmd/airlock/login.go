package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/oauth2"

	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/login"
)

type loginFlags struct {
	issuer      string
	device      bool
	idTokenFile string
	noBrowser   bool
	forUID      int64
	timeout     time.Duration
}

func newLoginCmd() *cobra.Command {
	var f loginFlags
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Prove who you are to Airlock (OIDC), for this uid",
		Long: `airlock login obtains an ID token from your identity provider and hands it
to airlockd, which verifies it (signature, issuer, audience, expiry) and binds
it to your uid as the kernel reports it. From then on, the database sessions
your processes open (and those of agents you run) act for you, with the
rights your groups give on each connection (see "airlock whoami").

FLOWS
  (default)          authorization code with PKCE: a browser opens your
                     provider's login page (the URL is printed too); it
                     redirects back to http://127.0.0.1:PORT/callback.
  --device           device code: for SSH sessions and headless machines.
                     Open the printed address on any device and enter the code.
  --id-token-file F  pipelines and service accounts: F holds a workload
                     identity token from the CI provider ("-" reads stdin).

The daemon keeps the tokens encrypted and readable by root only, and renews
the identity from the refresh token before it expires. One uid can never use
another's identity; root may log in for another uid with --for-uid, which is
recorded.

  airlock login
  airlock login --device
  airlock login --id-token-file "$CI_ID_TOKEN_FILE"
  printf %s "$TOKEN" | airlock login --id-token-file -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runLogin(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.issuer, "issuer", "", "issuer name from airlockd's configuration (default: the first people issuer)")
	fl.BoolVar(&f.device, "device", false, "use the device-code flow (no browser on this machine)")
	fl.StringVar(&f.idTokenFile, "id-token-file", "", "log in with the ID token in this file (- for stdin), e.g. a CI workload token")
	fl.BoolVar(&f.noBrowser, "no-browser", false, "print the login URL instead of opening a browser")
	fl.Int64Var(&f.forUID, "for-uid", -1, "root only: log in on behalf of this uid (recorded)")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long to wait for the login to complete")
	cmd.MarkFlagsMutuallyExclusive("device", "id-token-file")
	return cmd
}

func forUID(n int64) (*uint32, error) {
	if n < 0 {
		return nil, nil
	}
	if n > 1<<32-1 {
		return nil, fmt.Errorf("--for-uid %d is not a uid", n)
	}
	u := uint32(n)
	return &u, nil
}

func runLogin(cmd *cobra.Command, f loginFlags) error {
	target, err := forUID(f.forUID)
	if err != nil {
		return err
	}
	var toks *login.Tokens
	if f.idTokenFile != "" {
		tok, err := readToken(f.idTokenFile)
		if err != nil {
			return err
		}
		toks = &login.Tokens{IDToken: tok}
	} else {
		rep, err := call(control.Request{Op: "issuers"})
		if err != nil {
			return err
		}
		is, err := pickIssuer(rep.Issuers, f.issuer)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
		defer cancel()
		cfg, err := login.Config(ctx, login.Issuer{Name: is.Name, URL: is.URL, ClientID: is.ClientID, Scopes: is.Scopes})
		if err != nil {
			return err
		}
		stderr := cmd.ErrOrStderr()
		if f.device {
			toks, err = login.Device(ctx, cfg, func(da *oauth2.DeviceAuthResponse) {
				fmt.Fprintf(stderr, "To log in to Airlock, open %s and enter the code %s\n", da.VerificationURI, da.UserCode)
				if da.VerificationURIComplete != "" {
					fmt.Fprintf(stderr, "(or open %s)\n", da.VerificationURIComplete)
				}
				fmt.Fprintln(stderr, "Waiting for approval...")
			})
		} else {
			toks, err = login.PKCE(ctx, cfg, func(u string) {
				fmt.Fprintf(stderr, "To log in to Airlock, open this address in your browser:\n\n  %s\n\nWaiting for the login to complete...\n", u)
				if !f.noBrowser {
					openBrowser(u)
				}
			})
		}
		if err != nil {
			return err
		}
	}
	rep, err := call(control.Request{Op: "login", ForUID: target,
		Login: &control.LoginRequest{IDToken: toks.IDToken, RefreshToken: toks.RefreshToken}})
	if err != nil {
		return fmt.Errorf("airlockd refused the login: %w", err)
	}
	if g.json {
		return printJSON(rep.Identity)
	}
	id := rep.Identity
	fmt.Fprintf(cmd.OutOrStdout(), "Logged in as %s for uid %d, until %s.\n", personLine(id), id.UID, id.Expires.Local().Format(time.RFC1123))
	return nil
}

func pickIssuer(list []control.IssuerInfo, name string) (control.IssuerInfo, error) {
	var names []string
	for _, is := range list {
		if is.Kind != "people" {
			continue
		}
		if name == "" || is.Name == name {
			return is, nil
		}
		names = append(names, is.Name)
	}
	if name != "" {
		return control.IssuerInfo{}, fmt.Errorf("no people issuer named %q (configured: %s)", name, strings.Join(names, ", "))
	}
	return control.IssuerInfo{}, errors.New("airlockd trusts no issuer for people; pipelines log in with --id-token-file")
}

// readToken reads one token from path or stdin; it is never echoed.
func readToken(path string) (string, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		fh, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("read ID token: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	b, err := io.ReadAll(io.LimitReader(r, 32<<10))
	if err != nil {
		return "", fmt.Errorf("read ID token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("read ID token: %s is empty", path)
	}
	return tok, nil
}

// openBrowser starts the desktop's browser, if there is a desktop; the URL
// is printed either way.
func openBrowser(u string) {
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		return
	}
	name := os.Getenv("BROWSER")
	if name == "" {
		name = "xdg-open"
	}
	c := exec.Command(name, u)
	c.Stdout, c.Stderr = nil, nil
	if err := c.Start(); err == nil {
		go func() { _ = c.Wait() }()
	}
}

func personLine(id *control.IdentityInfo) string {
	s := id.Name
	if id.Email != "" && id.Email != id.Name {
		s += " <" + id.Email + ">"
	}
	if len(id.Groups) > 0 {
		s += " (groups: " + strings.Join(id.Groups, ", ") + ")"
	}
	return s
}

func newWhoamiCmd() *cobra.Command {
	var uid int64
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show who Airlock thinks you are, and what you may open",
		Long: `airlock whoami shows the person bound to your uid: name, email, issuer and
subject, groups, when the identity expires and whether it renews itself, and
for every configured connection whether your sessions may open it and with
which upstream roles.

An identity that is missing, expired or no longer verifies is an error that
says what to run (usually "airlock login").

  airlock whoami
  airlock whoami --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			target, err := forUID(uid)
			if err != nil {
				return err
			}
			rep, err := call(control.Request{Op: "whoami", ForUID: target})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(rep.Identity)
			}
			printWhoami(cmd, rep.Identity)
			return nil
		},
	}
	cmd.Flags().Int64Var(&uid, "for-uid", -1, "root only: show this uid's identity")
	return cmd
}

func printWhoami(cmd *cobra.Command, id *control.IdentityInfo) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "person\t%s\n", id.Name)
	fmt.Fprintf(w, "uid\t%d\n", id.UID)
	if id.Local {
		fmt.Fprintf(w, "identity\tlocal account (airlockd has no identity section: no login needed)\n")
	} else {
		fmt.Fprintf(w, "email\t%s\n", dash(id.Email))
		fmt.Fprintf(w, "issuer\t%s\n", id.Issuer)
		fmt.Fprintf(w, "subject\t%s\n", id.Subject)
		exp := id.Expires.Local().Format(time.RFC1123)
		if id.Renewable {
			exp += " (renews automatically)"
		}
		fmt.Fprintf(w, "expires\t%s\n", exp)
		if id.LoggedInBy != id.UID {
			fmt.Fprintf(w, "logged in by\tuid %d\n", id.LoggedInBy)
		}
	}
	fmt.Fprintf(w, "groups\t%s\n", dash(strings.Join(id.Groups, ", ")))
	fmt.Fprintln(w, "\nCONNECTION\tTARGETS\tACCESS\tROLES")
	for _, c := range id.Connections {
		acc := "yes"
		if !c.Allowed {
			acc = "no: " + c.Reason
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Name, strings.Join(c.Targets, ","), acc, dash(strings.Join(c.Roles, ", ")))
	}
}

func newLogoutCmd() *cobra.Command {
	var uid int64
	cmd := &cobra.Command{
		Use:   "logout",
		Short: "Forget the identity bound to your uid",
		Long: `airlock logout makes airlockd forget your uid's identity and tokens. New
sessions from your uid are refused until you log in again; live sessions end
after the configured grace (identity.expiry_grace) unless you log in again as
the same person.

  airlock logout`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			target, err := forUID(uid)
			if err != nil {
				return err
			}
			if _, err := call(control.Request{Op: "logout", ForUID: target}); err != nil {
				return err
			}
			if g.json {
				return printJSON(map[string]bool{"logged_out": true})
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Logged out.")
			return nil
		},
	}
	cmd.Flags().Int64Var(&uid, "for-uid", -1, "root only: log this uid out (recorded)")
	return cmd
}
