#!/usr/bin/env bash
# The tests with servers started by the shell (plain `cargo test`, the README's test command,
# starts its own; see docs/testing.md): brings up throw-away Heroku-like PostgreSQL servers
# (SSL-only + scram-sha-256 primary, hot standby, no-SSL server; see tests/server.sh),
# runs `cargo test --locked` against them with all arguments passed through
# (e.g. `tests/run.sh discover`), tears the servers down and exits with cargo's status.
#
# Set TAP_HEROKU_TEST_KEEP=1 to leave the servers running afterwards for debugging.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "tests/run.sh: $*" >&2; }

# A short path under /tmp: unix socket paths are length-limited and the servers run
# as the "postgres" OS user when we are root, so the directory must be reachable.
SERVER_DIR=$(mktemp -d "${TAP_HEROKU_TEST_TMPDIR:-/tmp}/tap-heroku-pg.XXXXXX")

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${TAP_HEROKU_TEST_KEEP:-} == 1 ]]; then
        say "TAP_HEROKU_TEST_KEEP=1: leaving servers running; stop with: tests/server.sh stop $SERVER_DIR && rm -rf $SERVER_DIR"
    else
        say "stopping test servers"
        tests/pgbouncer.sh stop "$SERVER_DIR" || true   # in case a killed test left its pooler
        tests/server.sh stop "$SERVER_DIR" || true
        rm -rf "$SERVER_DIR"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting Heroku-like PostgreSQL (SSL, scram) in $SERVER_DIR"
tests/server.sh start "$SERVER_DIR"

# shellcheck source=/dev/null
source "$SERVER_DIR/env"
say "Heroku-like PostgreSQL (SSL, scram) up on port $TAP_HEROKU_TEST_PORT (hot standby on $TAP_HEROKU_TEST_STANDBY_PORT, no-SSL server on $TAP_HEROKU_TEST_PLAIN_PORT)"

say "running: cargo test --locked $*"
status=0
cargo test --locked "$@" || status=$?
say "cargo test exited with status $status"
exit "$status"
