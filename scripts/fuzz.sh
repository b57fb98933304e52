#!/usr/bin/env bash
# Usage: scripts/fuzz.sh FUZZTIME PKG:TARGET...
#
# Gives each fuzz target FUZZTIME of fuzzing (go test -fuzz takes one
# target per run). A failure counts when the fuzzer wrote a failing input
# to PKG/testdata/fuzz/TARGET/. A bare "context deadline exceeded" at the
# end of FUZZTIME with no input written is Go's own coordinator race
# (go.dev/issue/75804, fixed in Go 1.27), which a loaded machine hits; it
# is reported and skipped, not counted.
set -eu -o pipefail
GO=${GO:-go}
fuzztime=$1
shift
for t in "$@"; do
	pkg=${t%%:*} name=${t#*:}
	corpus=$pkg/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null | sort || true)
	echo "fuzz $name in ./$pkg/ for $fuzztime"
	log=$(mktemp)
	if "$GO" test -run='^$' -fuzz="^$name\$" -fuzztime="$fuzztime" "./$pkg/" 2>&1 | tee "$log"; then
		rm -f "$log"
		continue
	fi
	after=$(ls "$corpus" 2>/dev/null | sort || true)
	if [ "$before" = "$after" ] && grep -q 'context deadline exceeded' "$log"; then
		echo "fuzz $name: Go's fuzztime deadline race (go.dev/issue/75804), no failing input; not counted"
		rm -f "$log"
		continue
	fi
	rm -f "$log"
	echo "fuzz $name failed; the failing input is in $corpus" >&2
	exit 1
done
