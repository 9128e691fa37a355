#!/usr/bin/env bash
# A Heroku-like PgBouncer in transaction mode in front of the test primary (tests/server.sh).
#
#   tests/pgbouncer.sh start DIR   start pgbouncer for the servers in DIR (after tests/server.sh start DIR)
#   tests/pgbouncer.sh warm DIR DB USER PASSWORD
#                                  open the second server connection of the pool of (DB, USER)
#   tests/pgbouncer.sh stop DIR    stop it again (before tests/server.sh stop DIR; safe if never started)
#
# Everything lives in DIR/pgbouncer/ (pgbouncer.ini, userlist.txt, log, pid file, env); "start"
# writes DIR/pgbouncer/env with TAP_HEROKU_TEST_PGBOUNCER_PORT. The pooler:
#   - listens on 127.0.0.1 only (no unix socket), on a free port;
#   - requires TLS from clients (the server's test certificate) and scram-sha-256 passwords, and
#     talks TLS + scram to the primary, like Heroku's pooler; any login role works (secrets come
#     from pg_shadow through auth_query as the superuser), so the per-test roles do too;
#   - pool_mode = transaction, so session state (SET, named prepared statements, temporary
#     tables, advisory locks) does not survive a transaction; unknown startup parameters such
#     as "options" are refused ("unsupported startup parameter: options");
#   - hands out the server connections of a pool in turn (server_round_robin = 1, at most 2 per
#     pool): once a pool has two (tests/pgbouncer.sh warm, or two concurrent transactions),
#     a client's consecutive transactions alternate between two backends, so anything that
#     relies on session state fails every time instead of passing by luck. A pool is per
#     database and user and starts with one server connection, with which a single client
#     always gets the same backend back and transaction mode goes unnoticed: warm the pool of
#     the test's database and role first. "start" warms and checks (postgres, the superuser).
#   - server_login_retry = 1: after a failed server login (a role without CONNECT on the
#     database, say) pgbouncer holds the client until it retries; its default, 15 s, made our
#     own checks look hung. Every psql here has connect_timeout, so nothing waits unbounded.
#
# Why the checks log in as the superuser: the integration tests revoke CONNECT on "postgres"
# from PUBLIC (tests/support: discovery must see only a test's own databases), so the reader
# role cannot log in there; through pgbouncer that failed login held each check's psql for
# server_login_retry, 50 times over, and "start" seemed to hang in its warm-up psql.
# Needs the pgbouncer binary (Debian/Ubuntu: apt-get install pgbouncer; Debian 12 ships 1.18,
# which has no support for protocol-level prepared statements in transaction mode).
set -euo pipefail

PROG="tests/pgbouncer.sh"
# pgbouncer lives in /usr/sbin on Debian/Ubuntu, which is not on every user's PATH.
PATH=$PATH:/usr/sbin
die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

# The caller's libpq settings must not change our own checks.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PG' || true)

if [[ $(id -u) -eq 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }   # pgbouncer refuses to run as root
else
    as_pg() { "$@"; }
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 pgb=$1/pgbouncer port attempt pids
    [[ -f $dir/env ]] || die "$dir/env not found; run tests/server.sh start $dir first"
    command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer not found; install it (apt-get install pgbouncer)"
    # shellcheck source=/dev/null
    source "$dir/env"
    mkdir -p "$pgb"
    # Only the superuser is listed: every other role's SCRAM secret comes from pg_shadow through
    # auth_query (so the per-test roles work without a reload), and pgbouncer logs in to the
    # server with the client's own SCRAM proof.
    printf '"%s" "%s"\n' "$TAP_HEROKU_TEST_ADMIN_USER" "$TAP_HEROKU_TEST_ADMIN_PASSWORD" >"$pgb/userlist.txt"
    chmod 600 "$pgb/userlist.txt"
    for attempt in 1 2 3; do
        port=$(free_port)
        cat >"$pgb/pgbouncer.ini" <<EOF
[databases]
* = host=$TAP_HEROKU_TEST_HOST port=$TAP_HEROKU_TEST_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $pgb/userlist.txt
auth_user = $TAP_HEROKU_TEST_ADMIN_USER
pool_mode = transaction
default_pool_size = 2
server_round_robin = 1
server_login_retry = 1
server_tls_sslmode = require
client_tls_sslmode = require
client_tls_cert_file = $dir/server.crt
client_tls_key_file = $dir/server.key
logfile = $pgb/pgbouncer.log
pidfile = $pgb/pgbouncer.pid
EOF
        if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$pgb"; fi
        if as_pg pgbouncer -d -q "$pgb/pgbouncer.ini" && wait_ready "$port"; then
            break
        fi
        say "pgbouncer did not start on port $port (attempt $attempt); log: $(tail -1 "$pgb/pgbouncer.log" 2>/dev/null)"
        stop "$dir"
        [[ $attempt == 3 ]] && die "pgbouncer did not start; see $pgb/pgbouncer.log"
    done
    warm_port "$port" postgres "$TAP_HEROKU_TEST_ADMIN_USER" "$TAP_HEROKU_TEST_ADMIN_PASSWORD" ||
        die "pgbouncer does not alternate between two server connections; see $pgb/pgbouncer.log"
    echo "export TAP_HEROKU_TEST_PGBOUNCER_PORT=$port" >"$pgb/env"
    say "pgbouncer (transaction mode, TLS, scram) on 127.0.0.1:$port in front of :$TAP_HEROKU_TEST_PORT; env in $pgb/env"
}

# warm_port PORT DB USER PASSWORD: two concurrent transactions make pgbouncer open the second
# server connection of the pool of (DB, USER); then checks that two consecutive statements of
# one client run on two different backends. Pools are per database and user: warm each one a
# test uses, before running the tap.
warm_port() {
    local conninfo="host=127.0.0.1 port=$1 user=$3 password=$4 dbname=$2 sslmode=require connect_timeout=10" pids
    psql -X -q -w "$conninfo" -c "select pg_sleep(0.3)" >/dev/null &
    psql -X -q -w "$conninfo" -c "select pg_sleep(0.3)" >/dev/null
    wait
    pids=$(psql -X -At -w "$conninfo" -c "select pg_backend_pid()" -c "select pg_backend_pid()" | sort -u | wc -l)
    [[ $pids == 2 ]]
}

wait_ready() {
    local port=$1 i
    for i in $(seq 50); do
        if psql -X -At -w "host=127.0.0.1 port=$port user=$TAP_HEROKU_TEST_ADMIN_USER password=$TAP_HEROKU_TEST_ADMIN_PASSWORD dbname=postgres sslmode=require connect_timeout=2" \
            -c "select 1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

stop() {
    local dir=$1 pid i
    [[ -f $dir/pgbouncer/pgbouncer.pid ]] || return 0
    pid=$(cat "$dir/pgbouncer/pgbouncer.pid")
    # SIGTERM: immediate shutdown (SIGINT would wait for clients to finish).
    as_pg kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$dir/pgbouncer/pgbouncer.pid"
}

usage() {
    echo "usage: $PROG start DIR | $PROG warm DIR DB USER PASSWORD | $PROG stop DIR" >&2
    exit 64
}

if [[ ${1:-} == warm && $# == 5 ]]; then
    # shellcheck source=/dev/null
    source "$2/pgbouncer/env"
    warm_port "$TAP_HEROKU_TEST_PGBOUNCER_PORT" "$3" "$4" "$5" || die "pool of $3/$4 does not alternate between two server connections"
    exit 0
fi
[[ $# == 2 ]] || usage
case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac
