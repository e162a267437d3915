package sqlclass_test

import (
	"fmt"

	"github.com/airlockhq/airlock/internal/sqlclass"
)

func ExampleClassifier_Classify() {
	c := sqlclass.New(sqlclass.Options{})
	res, err := c.Classify("COMMIT; /**/ALTER/**/USER/**/CURRENT_USER PASSWORD 'hunter2'")
	if err != nil {
		fmt.Println("deny:", err)
		return
	}
	for _, s := range res.Statements {
		fmt.Println(s.Kind, s.Command, s.Flags)
	}
	fmt.Println("refuse:", res.ChangesRoleOrPassword())
	fmt.Println("log:", res.Redacted())

	_, err = c.Classify("ALTER ROLE x PASSWORD 'hunter2' oops")
	fmt.Println("deny:", err)
	// Output:
	// transaction COMMIT ends_transaction
	// dcl ALTER ROLE role_change|password_change|secret
	// refuse: true
	// log: COMMIT; /**/ALTER/**/USER/**/CURRENT_USER PASSWORD $1
	// deny: SQL not understood: unrecognized role option "…" (at position 33)
}
