package policy

import (
	"os"
	"testing"

	"github.com/airlockhq/airlock/internal/sqlclass"
)

// FuzzParse: any policy file either loads or fails with an error; a policy
// that loads decides without panicking.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/policy.yaml", "../../deploy/examples/policy/policy.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("rules:\n  - name: a\n    action: hold\n    tables: ['x.*']\n    regex: '('\n"))
	f.Add([]byte("fast_path: {agent: allow}\nagent_holds: false\n"))
	cl := sqlclass.New(sqlclass.Options{})
	res, _ := cl.Classify("SELECT * FROM public.t; DELETE FROM u")
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		for _, c := range []string{ClassAgent, ClassPerson} {
			p.Decide(res, nil, Who{Class: c, Groups: []string{"dba"}})
			p.DecideFastPath("lo_export", Who{Class: c})
		}
	})
}
