// Command airlock-testidp is a local OpenID Connect issuer for the demo and
// manual testing (internal/oidctest on 127.0.0.1). Never trust it in
// production: it logs in whoever asks as the configured user.
//
//	airlock-testidp serve --url-file F [--client-id airlock] [--user alice --email a@x --groups analysts]
//	airlock-testidp approve --url VERIFICATION_URL --code USER_CODE [--as NAME]
package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/oidctest"
)

func main() {
	root := &cobra.Command{Use: "airlock-testidp", Short: "A local OIDC issuer for the demo and manual tests (never for production)",
		SilenceUsage: true}
	root.AddCommand(serveCmd(), approveCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "airlock-testidp:", err)
		os.Exit(1)
	}
}

func serveCmd() *cobra.Command {
	var urlFile, clientID, name, email, groups string
	var also []string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve an issuer on 127.0.0.1 (random port) until interrupted",
		Long: `serve starts the issuer, writes its URL to --url-file, and serves discovery,
keys, the authorization-code (PKCE) and device flows and refresh tokens until
SIGINT or SIGTERM. Every login is the user given by --user, --email, --groups.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := oidctest.Start(clientID)
			if err != nil {
				return err
			}
			defer p.Close()
			var gs []string
			for _, g := range strings.Split(groups, ",") {
				if g = strings.TrimSpace(g); g != "" {
					gs = append(gs, g)
				}
			}
			p.SetUser(oidctest.User{Subject: "sub-" + name, Name: name, Email: email, Groups: gs})
			for _, a := range also {
				f := strings.SplitN(a, ":", 3)
				if len(f) != 3 || f[0] == "" {
					return fmt.Errorf("--also %q: want NAME:EMAIL:GROUP[,GROUP...]", a)
				}
				p.AddUser(oidctest.User{Subject: "sub-" + f[0], Name: f[0], Email: f[1], Groups: strings.Split(f[2], ",")})
			}
			if urlFile != "" {
				if err := os.WriteFile(urlFile, []byte(p.URL+"\n"), 0o644); err != nil {
					return err
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), p.URL)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			<-sig
			return nil
		},
	}
	cmd.Flags().StringVar(&urlFile, "url-file", "", "write the issuer URL here")
	cmd.Flags().StringVar(&clientID, "client-id", "airlock", "the one client it knows")
	cmd.Flags().StringVar(&name, "user", "alice", "preferred_username of the logged-in user")
	cmd.Flags().StringVar(&email, "email", "alice@example.com", "email of the logged-in user")
	cmd.Flags().StringVar(&groups, "groups", "analysts", "comma-separated groups of the logged-in user")
	cmd.Flags().StringArrayVar(&also, "also", nil, "another person approve --as can sign in as: NAME:EMAIL:GROUP[,GROUP...] (repeatable)")
	return cmd
}

func approveCmd() *cobra.Command {
	var u, code, as string
	cmd := &cobra.Command{
		Use:   "approve",
		Short: "Approve a device login (what the person does on their phone)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if u == "" || code == "" {
				return errors.New("--url and --code are required")
			}
			c := &http.Client{Timeout: 10 * time.Second}
			form := url.Values{"user_code": {code}}
			if as != "" {
				form.Set("login", as)
			}
			resp, err := c.PostForm(u, form)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("approval refused: %s %s", resp.Status, strings.TrimSpace(string(b)))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&u, "url", "", "verification URL shown by `airlock login --device`")
	cmd.Flags().StringVar(&code, "code", "", "user code shown by `airlock login --device`")
	cmd.Flags().StringVar(&as, "as", "", "sign in as this --also person instead of the --user one")
	return cmd
}
