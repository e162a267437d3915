#!/usr/bin/env bash
# Runs every fuzz target for a short time each: `tests/fuzz.sh 10s`.
#
# For people and nightly jobs, never for CI's pass/fail: timed fuzzing on a
# busy machine can end with the engine's own "context deadline exceeded"
# (its workers did not report back in time) with no failing input at all.
# Such an engine hiccup is reported and the target retried once; only a
# crasher (an input written to testdata/fuzz/) or a repeated engine failure
# fails the run. The seed corpora run in `make test` on every build.
set -uo pipefail
t=${1:-10s}
cd "$(dirname "$0")/.."
failed=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/func //'); do
    for attempt in 1 2; do
      echo "== $pkg $f (attempt $attempt)"
      out=$(go test "$pkg" -run '^$' -fuzz "^$f\$" -fuzztime "$t" 2>&1)
      rc=$?
      printf '%s\n' "$out"
      if [ $rc -eq 0 ]; then
        break
      fi
      if grep -q 'Failing input written to' <<<"$out"; then
        echo "!! $pkg $f found a failing input (see above)"
        failed=1
        break
      fi
      if [ $attempt -eq 2 ]; then
        echo "!! $pkg $f: the fuzzing engine failed twice without a failing input"
        failed=1
      else
        echo "-- $pkg $f: fuzzing engine error without a failing input; retrying once"
      fi
    done
  done
done
exit $failed
