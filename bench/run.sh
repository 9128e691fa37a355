#!/usr/bin/env bash
# Runs bench/bench.py against throw-away Heroku-like servers (tests/server.sh) and stops them.
# Needs PostgreSQL's server binaries (as tests/run.sh does), python3 and /usr/bin/time (package "time").
# Arguments go to bench/bench.py (see its docstring), e.g.
#   bench/run.sh --reps 3 --rtt 0,10,40 --narrow-rows 2000000,2000000,200000
# Round trips above 0 ms go through tests/link.py (a delaying TCP proxy; see its docstring).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x /usr/bin/time ]] || { echo "bench/run.sh: /usr/bin/time is missing; install it (apt-get install time)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/tap-heroku-bench-pg.XXXXXX)
trap 'tests/server.sh stop "$DIR" || true; rm -rf "$DIR"' EXIT
tests/server.sh start "$DIR"
# shellcheck source=/dev/null
source "$DIR/env"
python3 bench/bench.py "$@"
