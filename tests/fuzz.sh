#!/usr/bin/env bash
# Run each fuzz target (package:function arguments) for FUZZTIME.
#
# Go 1.26's fuzz coordinator can fail a target that found nothing with a bare
# "context deadline exceeded" just past -fuzztime: it compares the -fuzztime
# context's error with its child's before the child is cancelled
# (go.dev/issue/75804, fixed in Go 1.27). That failure writes no input to
# testdata/fuzz. A real finding always does ("Failing input written to"), so a
# run is repeated (at most twice) only when it failed with that error alone.
set -uo pipefail
: "${GO:=go}" "${FUZZTIME:=60s}"
for t in "$@"; do
  pkg=${t%%:*} fn=${t##*:}
  for try in 1 2 3; do
    echo "fuzz ./$pkg $fn for $FUZZTIME (run $try)"
    out=$(mktemp)
    "$GO" test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "./$pkg/" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then rm -f "$out"; break; fi
    if grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input written to' "$out" \
        && [ "$try" -lt 3 ]; then
      echo "fuzz ./$pkg $fn: the coordinator's deadline race (go.dev/issue/75804), no input found; again"
      rm -f "$out"; continue
    fi
    rm -f "$out"; exit "$rc"
  done
done
