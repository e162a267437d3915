package sqlclass

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	pgparser "github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/proto"
)

// The parts of an uncached classification, to see where the time goes.
const partsSQL = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"

func BenchmarkPartFingerprint(b *testing.B) {
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		if _, err := pg_query.FingerprintToUInt64(partsSQL); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPartParseC(b *testing.B) {
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		if _, err := pgparser.ParseToProtobuf(partsSQL); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPartUnmarshal(b *testing.B) {
	buf, err := pgparser.ParseToProtobuf(partsSQL)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		var t pg_query.ParseResult
		if err := proto.Unmarshal(buf, &t); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPartWalk(b *testing.B) {
	tree, err := pg_query.Parse(partsSQL)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		a := &analyzer{}
		if _, err := a.analyzeNode(tree.Stmts[0].Stmt, partsSQL, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPartLineage is the lineage walk alone, on a parsed tree.
func BenchmarkPartLineage(b *testing.B) {
	tree, err := pg_query.Parse(partsSQL)
	if err != nil {
		b.Fatal(err)
	}
	node := tree.Stmts[0].Stmt
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		statementLineage(node, &Statement{})
	}
}
