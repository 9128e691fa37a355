#!/usr/bin/env bash
# Runs bench/bench.py against throw-away Heroku-like servers (tests/server.sh) and stops them.
# Needs PostgreSQL's server binaries (as tests/run.sh does), python3 and /usr/bin/time (package "time").
# Arguments go to bench/bench.py, e.g. bench/run.sh --reps 3 --narrow-rows 500000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x /usr/bin/time ]] || { echo "bench/run.sh: /usr/bin/time is missing; install it (apt-get install time)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/tap-heroku-bench-pg.XXXXXX)
trap 'tests/server.sh stop "$DIR" || true; rm -rf "$DIR"' EXIT
tests/server.sh start "$DIR"
# shellcheck source=/dev/null
source "$DIR/env"
python3 bench/bench.py "$@"
