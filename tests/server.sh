#!/usr/bin/env bash
# Heroku-like PostgreSQL test servers for the tap-heroku integration tests.
#
#   tests/server.sh start DIR   create and start three throw-away clusters under DIR
#   tests/server.sh stop DIR    stop them again (safe on a partially started DIR)
#
# Clusters (each on its own free 127.0.0.1 port, unix sockets inside DIR):
#   primary  SSL-only (self-signed test CA), scram-sha-256 passwords, like Heroku; the role
#            tap_cert_user must also present a client certificate (Heroku Private/Shield mTLS)
#   standby  hot standby of the primary (pg_basebackup over SSL as "replicator")
#   plain    ssl = off, scram-sha-256 over plain TCP, wal_level = replica (for the "server
#            without SSL" tests and LOG_BASED's wal_level refusal)
#
# "start" writes DIR/env with the TAP_HEROKU_TEST_* variables the tests read.
# Nothing here touches any other PostgreSQL on the machine (e.g. 127.0.0.1:5432).
set -euo pipefail

PROG="tests/server.sh"
INSTALL_HINT="install the PostgreSQL server and contrib modules, e.g. 'apt-get install postgresql postgresql-contrib' on Debian/Ubuntu (contrib provides the hstore, citext, seg and isn extensions the tests need)"

ADMIN_USER=tap_admin
ADMIN_PASSWORD=admin-secret-1
READER_USER=tap_reader
READER_PASSWORD=reader-Secret-9
REPL_USER=replicator
REPL_PASSWORD=repl-secret-3
# A login role with REPLICATION (and SELECT granted per test) for the LOG_BASED tests; the
# admin creates the publications.
LOGICAL_USER=tap_logical
LOGICAL_PASSWORD=logical-Secret-5
# The role that must present a client certificate (pg_hba: clientcert=verify-full), its
# password, and the passphrase of the encrypted copies of its key.
CERT_USER=tap_cert_user
CERT_PASSWORD=cert-Secret-4
CLIENT_KEY_PASSPHRASE=Key-Passphrase-8kT
FIRST_PORT=55432
LAST_PORT=56431
CLUSTERS_STOP_ORDER=(standby plain primary)

# Never let the caller's libpq settings (PGHOST, PGSSLMODE, ...) leak into our own
# setup commands; everything below passes explicit connection parameters.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PG' || true)

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

usage() {
    echo "usage: $PROG start DIR | $PROG stop DIR" >&2
    exit 64
}

# --- running server binaries as a non-root user --------------------------------

if [[ $(id -u) -eq 0 ]]; then
    RUN_AS=postgres
else
    RUN_AS=
fi

# as_pg CMD ARGS...: run a command as the OS user that owns the clusters.
as_pg() {
    if [[ -n $RUN_AS ]]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u "$RUN_AS" -- "$@"
        else
            local q
            q=$(printf '%q ' "$@")
            su "$RUN_AS" -s /bin/sh -c "$q"
        fi
    else
        "$@"
    fi
}

# --- locating the server binaries ---------------------------------------------

is_bindir() {
    [[ -n ${1:-} && -x $1/initdb && -x $1/pg_ctl && -x $1/postgres && -x $1/pg_basebackup ]]
}

find_bindir() {
    local d
    if [[ -n ${TAP_HEROKU_TEST_PGBIN:-} ]] && is_bindir "$TAP_HEROKU_TEST_PGBIN"; then
        echo "$TAP_HEROKU_TEST_PGBIN"; return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if is_bindir "$d"; then echo "$d"; return 0; fi
    fi
    # Debian/Ubuntu layout, then the PGDG RPM layout; newest version first.
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -rV); do
        if is_bindir "$d"; then echo "$d"; return 0; fi
    done
    if command -v initdb >/dev/null 2>&1; then
        d=$(dirname "$(command -v initdb)")
        if is_bindir "$d"; then echo "$d"; return 0; fi
    fi
    return 1
}

find_sharedir() {
    local bindir=$1 d ver
    if [[ -x $bindir/pg_config ]]; then
        d=$("$bindir/pg_config" --sharedir 2>/dev/null || true)
        if [[ -d $d/extension ]]; then echo "$d"; return 0; fi
    fi
    if [[ $bindir =~ ^/usr/lib/postgresql/([^/]+)/bin$ ]]; then
        ver=${BASH_REMATCH[1]}
        if [[ -d /usr/share/postgresql/$ver/extension ]]; then echo "/usr/share/postgresql/$ver"; return 0; fi
    fi
    if [[ -d $bindir/../share/extension ]]; then (cd "$bindir/../share" && pwd); return 0; fi
    if [[ -d $bindir/../share/postgresql/extension ]]; then (cd "$bindir/../share/postgresql" && pwd); return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --sharedir 2>/dev/null || true)
        if [[ -d $d/extension ]]; then echo "$d"; return 0; fi
    fi
    return 1
}

# --- ports --------------------------------------------------------------------

port_is_free() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
        return
    fi
    # Fallback without python: the port counts as free if nothing accepts on it.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

NEXT_PORT=$FIRST_PORT
# pick_port: prints the next free port >= NEXT_PORT and advances NEXT_PORT past it.
pick_port() {
    local p=$NEXT_PORT
    while (( p <= LAST_PORT )); do
        if port_is_free "$p"; then
            NEXT_PORT=$((p + 1))
            PICKED_PORT=$p
            return 0
        fi
        p=$((p + 1))
    done
    die "no free TCP port on 127.0.0.1 in $FIRST_PORT..$LAST_PORT"
}

# --- cluster control ------------------------------------------------------------

# start_cluster NAME: start DIR/NAME on a free port (retrying on a port race with
# another process), wait until it accepts connections; sets PORT_<NAME>.
start_cluster() {
    local name=$1
    local data="$DIR/$name" log="$DIR/$name.log" attempt port
    for attempt in 1 2 3 4 5 6 7 8; do
        pick_port
        port=$PICKED_PORT
        : >"$log"
        [[ -n $RUN_AS ]] && chown "$RUN_AS" "$log"
        if as_pg "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 60 -s \
            -o "-p $port -k '$DIR'" start >/dev/null 2>"$DIR/pg_ctl.err"; then
            if as_pg "$PGBIN/pg_isready" -q -h "$DIR" -p "$port" -t 30; then
                printf -v "PORT_$name" '%s' "$port"
                return 0
            fi
            say "$name did not become ready on port $port"
            return 1
        fi
        if grep -q 'could not bind\|Address already in use\|could not create lock file' "$log" 2>/dev/null; then
            say "port $port was taken meanwhile, retrying $name on another port"
            continue
        fi
        cat "$DIR/pg_ctl.err" >&2 || true
        say "failed to start the $name cluster; last lines of $log:"
        tail -n 20 "$log" >&2 || true
        return 1
    done
    say "could not find a usable port for $name"
    return 1
}

stop_cluster() {
    local data=$1
    local pid
    [[ -f $data/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
    if [[ -n $PGBIN ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t 30 -s stop >/dev/null 2>&1 || true
    fi
    # Belt and braces: if our postmaster (by its own pid) survived, kill it.
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && [[ $(cat "/proc/$pid/cmdline" 2>/dev/null | tr '\0' ' ') == *"$data"* ]]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

psql_socket() { # psql_socket PORT SQL...  (superuser "postgres" over the unix socket)
    local port=$1; shift
    as_pg "$PGBIN/psql" -X -q -w -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U postgres -d postgres "$@"
}

create_roles() {
    local port=$1
    psql_socket "$port" <<EOF >/dev/null
SET password_encryption = 'scram-sha-256';
CREATE ROLE $ADMIN_USER WITH LOGIN SUPERUSER PASSWORD '$ADMIN_PASSWORD';
CREATE ROLE $READER_USER WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '$READER_PASSWORD';
CREATE ROLE $REPL_USER WITH LOGIN REPLICATION NOSUPERUSER PASSWORD '$REPL_PASSWORD';
CREATE ROLE $LOGICAL_USER WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$LOGICAL_PASSWORD';
EOF
}

# --- certificates -------------------------------------------------------------

make_certs() {
    local d=$DIR
    local ossl=(openssl)
    # Test CA that signs the server certificate.
    "${ossl[@]}" req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -subj "/CN=tap-heroku test CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
        -config <(printf '%s\n' '[req]' 'distinguished_name=dn' 'x509_extensions=v3_ca' '[dn]' \
            '[v3_ca]' 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
            'subjectKeyIdentifier=hash') 2>/dev/null
    # An unrelated CA (never signs anything we serve) for the wrong-CA test.
    "${ossl[@]}" req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -subj "/CN=tap-heroku unrelated test CA" -keyout "$d/other-ca.key" -out "$d/other-ca.crt" \
        -config <(printf '%s\n' '[req]' 'distinguished_name=dn' 'x509_extensions=v3_ca' '[dn]' \
            '[v3_ca]' 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
            'subjectKeyIdentifier=hash') 2>/dev/null
    # Server certificate: CN=localhost, SAN DNS:localhost only (no IP SAN), so that
    # verify-full succeeds for host "localhost" and fails for "127.0.0.1".
    "${ossl[@]}" req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" \
        -config <(printf '%s\n' '[req]' 'distinguished_name=dn' '[dn]') 2>/dev/null
    "${ossl[@]}" x509 -req -sha256 -days 3650 -in "$d/server.csr" \
        -CA "$d/ca.crt" -CAkey "$d/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
        -out "$d/server.crt" \
        -extfile <(printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
            'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
            'subjectAltName=DNS:localhost' 'authorityKeyIdentifier=keyid') 2>/dev/null
    rm -f "$d/server.csr"
    chmod 600 "$d/server.key" "$d/ca.key" "$d/other-ca.key"
    chmod 644 "$d/ca.crt" "$d/other-ca.crt" "$d/server.crt"

    # Client certificates for the mutual-TLS tests: one the primary accepts for $CERT_USER,
    # one of the right CA naming another role, one of the unrelated CA.
    make_client_cert client "$CERT_USER" ca
    make_client_cert client-wrong-cn "$READER_USER" ca
    make_client_cert client-other-ca "$CERT_USER" other-ca
    # The accepted key encrypted with a passphrase, as PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY")
    # and in OpenSSL's traditional form ("Proc-Type: 4,ENCRYPTED"), and unencrypted as DER.
    "${ossl[@]}" pkey -in "$d/client.key" -aes256 -passout "pass:$CLIENT_KEY_PASSPHRASE" \
        -out "$d/client-encrypted.key" 2>/dev/null
    "${ossl[@]}" rsa -in "$d/client.key" -aes256 -traditional -passout "pass:$CLIENT_KEY_PASSPHRASE" \
        -out "$d/client-encrypted-traditional.key" 2>/dev/null
    "${ossl[@]}" pkey -in "$d/client.key" -outform DER -out "$d/client.der.key" 2>/dev/null
    # libpq refuses (and so does tap-heroku) a key file that group or others may read.
    chmod 600 "$d"/client*.key
}

# make_client_cert NAME CN CA: DIR/NAME.crt (CN=CN, for client authentication) signed by
# DIR/CA.crt, and its unencrypted key DIR/NAME.key.
make_client_cert() {
    local name=$1 cn=$2 ca=$3 d=$DIR
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
        -keyout "$d/$name.key" -out "$d/$name.csr" \
        -config <(printf '%s\n' '[req]' 'distinguished_name=dn' '[dn]') 2>/dev/null
    openssl x509 -req -sha256 -days 3650 -in "$d/$name.csr" \
        -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -set_serial "0x$(openssl rand -hex 8)" \
        -out "$d/$name.crt" \
        -extfile <(printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
            'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=clientAuth' \
            'authorityKeyIdentifier=keyid') 2>/dev/null
    rm -f "$d/$name.csr"
    chmod 644 "$d/$name.crt"
}

# --- configuration ------------------------------------------------------------

common_conf() {
    cat <<EOF

# ---- tap-heroku test settings (tests/server.sh) ----
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
# logical: the LOG_BASED tests decode the WAL (a hot standby works with it as with replica).
wal_level = logical
max_wal_senders = 4
# The standby's physical slot plus one logical slot per LOG_BASED test running at once.
max_replication_slots = 40
hot_standby = on
log_min_messages = warning
logging_collector = off
# Deliberately unusual session defaults: the tap's output must not depend on them.
timezone = 'America/New_York'
log_timezone = 'UTC'
datestyle = 'SQL, DMY'
intervalstyle = 'postgres_verbose'
EOF
}

write_primary_conf() {
    local data=$1
    {
        common_conf
        cat <<EOF
ssl = on
ssl_cert_file = '$DIR/server.crt'
ssl_key_file = '$DIR/server.key'
# Client certificates are checked against the test CA (only $CERT_USER must present one).
ssl_ca_file = '$DIR/ca.crt'
EOF
    } >>"$data/postgresql.conf"
    # Heroku-like: SSL + password only. There are deliberately NO non-SSL "host"
    # lines, so a plain TCP connection finds no entry and fails with
    #   no pg_hba.conf entry for host "127.0.0.1", user "...", database "...", no encryption
    # (the message real Heroku gives; an explicit "hostnossl ... reject" line would
    # instead yield "pg_hba.conf rejects connection ..."). Replication connections are
    # matched only by the "replication" line, SSL only as well. $CERT_USER must also present
    # a client certificate of the test CA whose CN is its name (Heroku Private/Shield mTLS).
    cat >"$data/pg_hba.conf" <<EOF
# TYPE    DATABASE     USER        ADDRESS        METHOD
local     all          all                        trust
hostssl   all          $CERT_USER  127.0.0.1/32   scram-sha-256 clientcert=verify-full
hostssl   all          all         127.0.0.1/32   scram-sha-256
hostssl   replication  $REPL_USER  127.0.0.1/32   scram-sha-256
EOF
}

write_plain_conf() {
    local data=$1
    {
        common_conf
        echo "ssl = off"
        # No logical decoding here (the later setting wins): LOG_BASED's refusal of a server
        # whose wal_level is not logical is tested against this server.
        echo "wal_level = replica"
    } >>"$data/postgresql.conf"
    cat >"$data/pg_hba.conf" <<EOF
# TYPE    DATABASE     USER        ADDRESS        METHOD
local     all          all                        trust
host      all          all         127.0.0.1/32   scram-sha-256
EOF
}

# --- commands -----------------------------------------------------------------

START_OK=0
on_start_exit() {
    local rc=$?
    if [[ $START_OK -ne 1 ]]; then
        say "start failed (exit $rc); stopping whatever was started (logs are in $DIR)"
        do_stop || true
    fi
}

do_start() {
    local t0=$SECONDS
    PGBIN=$(find_bindir) || { echo "$PROG: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; $INSTALL_HINT" >&2; exit 2; }
    local sharedir ext
    sharedir=$(find_sharedir "$PGBIN") || { echo "$PROG: PostgreSQL share directory for $PGBIN not found; $INSTALL_HINT" >&2; exit 2; }
    for ext in hstore citext seg isn; do
        [[ -f $sharedir/extension/$ext.control ]] \
            || { echo "$PROG: PostgreSQL extension '$ext' not available ($sharedir/extension/$ext.control missing); $INSTALL_HINT" >&2; exit 2; }
    done
    command -v openssl >/dev/null 2>&1 || die "the openssl command-line tool is required (apt-get install openssl)"
    if [[ -n $RUN_AS ]] && ! id "$RUN_AS" >/dev/null 2>&1; then
        die "running as root but there is no '$RUN_AS' OS user to run the servers as; $INSTALL_HINT"
    fi

    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    [[ $DIR != *"'"* && $DIR != *" "* && $DIR != *'\'* ]] || die "DIR must not contain spaces, quotes or backslashes: $DIR"
    # Unix socket paths are limited to ~107 bytes.
    (( ${#DIR} + 20 <= 100 )) || die "DIR path too long for unix sockets (${#DIR} chars): $DIR"
    if [[ -e $DIR/primary || -e $DIR/standby || -e $DIR/plain ]]; then
        die "$DIR already contains clusters; use a fresh directory (or '$PROG stop $DIR' and remove it)"
    fi
    cd "$DIR"   # the postgres user may not be able to read the caller's cwd

    START_OK=0
    trap on_start_exit EXIT

    if [[ -n $RUN_AS ]]; then
        chown "$RUN_AS": "$DIR"
        chmod 755 "$DIR"
        as_pg test -w "$DIR" -a -x "$DIR" \
            || die "the '$RUN_AS' user cannot write to $DIR (a parent directory is not accessible?); use a directory under /tmp"
    fi

    make_certs

    # One initdb, copied for the plain cluster (a cold cluster copy is a valid cluster).
    as_pg "$PGBIN/initdb" -D "$DIR/primary" -U postgres -A trust -E UTF8 --no-locale \
        --no-sync --no-instructions >"$DIR/initdb.log" 2>&1 \
        || { say "initdb failed:"; cat "$DIR/initdb.log" >&2; exit 1; }
    as_pg cp -a "$DIR/primary" "$DIR/plain"
    write_primary_conf "$DIR/primary"
    write_plain_conf "$DIR/plain"

    if [[ -n $RUN_AS ]]; then
        chown -R "$RUN_AS": "$DIR"
    fi

    start_cluster primary
    create_roles "$PORT_primary"
    psql_socket "$PORT_primary" >/dev/null <<EOF
SET password_encryption = 'scram-sha-256';
CREATE ROLE $CERT_USER WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '$CERT_PASSWORD';
EOF

    start_cluster plain
    create_roles "$PORT_plain"

    # Hot standby, cloned over SSL as the replication role.
    # A physical replication slot (-C -S) keeps the primary from recycling WAL the standby has not
    # replayed yet: big test tables and a busy machine otherwise leave it behind for good.
    as_pg "$PGBIN/pg_basebackup" -D "$DIR/standby" -R -C -S tap_heroku_standby -X stream -c fast --no-sync -w \
        -d "host=127.0.0.1 port=$PORT_primary user=$REPL_USER password=$REPL_PASSWORD sslmode=require application_name=standby" \
        >"$DIR/basebackup.log" 2>&1 \
        || { say "pg_basebackup failed:"; cat "$DIR/basebackup.log" >&2; exit 1; }
    # As a Heroku follower under load: replay waits at most 1 s for a conflicting query, then
    # cancels it (the recovery-conflict tests rely on it; short reads never wait that long).
    printf '%s\n' "max_standby_streaming_delay = 1s" "hot_standby_feedback = off" >>"$DIR/standby/postgresql.conf"
    start_cluster standby
    local i in_recovery=
    for i in $(seq 1 100); do
        in_recovery=$(psql_socket "$PORT_standby" -A -t -c 'select pg_is_in_recovery()' 2>/dev/null || true)
        [[ $in_recovery == t ]] && break
        sleep 0.1
    done
    [[ $in_recovery == t ]] || die "the standby on port $PORT_standby is not a hot standby in recovery"

    local env_tmp="$DIR/env.tmp"
    {
        printf 'export TAP_HEROKU_TEST_HOST=%q\n' 127.0.0.1
        printf 'export TAP_HEROKU_TEST_PORT=%q\n' "$PORT_primary"
        printf 'export TAP_HEROKU_TEST_STANDBY_PORT=%q\n' "$PORT_standby"
        printf 'export TAP_HEROKU_TEST_PLAIN_PORT=%q\n' "$PORT_plain"
        printf 'export TAP_HEROKU_TEST_SOCKET_DIR=%q\n' "$DIR"
        printf 'export TAP_HEROKU_TEST_ADMIN_USER=%q\n' "$ADMIN_USER"
        printf 'export TAP_HEROKU_TEST_ADMIN_PASSWORD=%q\n' "$ADMIN_PASSWORD"
        printf 'export TAP_HEROKU_TEST_READER_USER=%q\n' "$READER_USER"
        printf 'export TAP_HEROKU_TEST_READER_PASSWORD=%q\n' "$READER_PASSWORD"
        printf 'export TAP_HEROKU_TEST_LOGICAL_USER=%q\n' "$LOGICAL_USER"
        printf 'export TAP_HEROKU_TEST_LOGICAL_PASSWORD=%q\n' "$LOGICAL_PASSWORD"
        printf 'export TAP_HEROKU_TEST_CA=%q\n' "$DIR/ca.crt"
        printf 'export TAP_HEROKU_TEST_OTHER_CA=%q\n' "$DIR/other-ca.crt"
        printf 'export TAP_HEROKU_TEST_CERT_USER=%q\n' "$CERT_USER"
        printf 'export TAP_HEROKU_TEST_CERT_PASSWORD=%q\n' "$CERT_PASSWORD"
        printf 'export TAP_HEROKU_TEST_CLIENT_CERT=%q\n' "$DIR/client.crt"
        printf 'export TAP_HEROKU_TEST_CLIENT_KEY=%q\n' "$DIR/client.key"
        printf 'export TAP_HEROKU_TEST_CLIENT_KEY_ENCRYPTED=%q\n' "$DIR/client-encrypted.key"
        printf 'export TAP_HEROKU_TEST_CLIENT_KEY_ENCRYPTED_TRADITIONAL=%q\n' "$DIR/client-encrypted-traditional.key"
        printf 'export TAP_HEROKU_TEST_CLIENT_KEY_DER=%q\n' "$DIR/client.der.key"
        printf 'export TAP_HEROKU_TEST_CLIENT_KEY_PASSPHRASE=%q\n' "$CLIENT_KEY_PASSPHRASE"
        printf 'export TAP_HEROKU_TEST_WRONG_CN_CERT=%q\n' "$DIR/client-wrong-cn.crt"
        printf 'export TAP_HEROKU_TEST_WRONG_CN_KEY=%q\n' "$DIR/client-wrong-cn.key"
        printf 'export TAP_HEROKU_TEST_OTHER_CA_CLIENT_CERT=%q\n' "$DIR/client-other-ca.crt"
        printf 'export TAP_HEROKU_TEST_OTHER_CA_CLIENT_KEY=%q\n' "$DIR/client-other-ca.key"
        printf 'export TAP_HEROKU_TEST_PGBIN=%q\n' "$PGBIN"
    } >"$env_tmp"
    mv "$env_tmp" "$DIR/env"
    chmod 644 "$DIR/env"

    START_OK=1
    trap - EXIT
    say "up in $((SECONDS - t0))s: primary (SSL) :$PORT_primary, standby :$PORT_standby, plain (no SSL) :$PORT_plain; env in $DIR/env"
}

do_stop() {
    [[ -d $DIR ]] || return 0
    cd "$DIR" 2>/dev/null || cd /
    PGBIN=${PGBIN:-}
    if [[ -z $PGBIN ]]; then PGBIN=$(find_bindir 2>/dev/null || true); fi
    local name
    for name in "${CLUSTERS_STOP_ORDER[@]}"; do
        stop_cluster "$DIR/$name"
    done
}

main() {
    [[ $# -eq 2 ]] || usage
    local cmd=$1
    DIR=$2
    [[ -n $DIR ]] || usage
    case $cmd in
        start) do_start ;;
        stop)
            if [[ -d $DIR ]]; then DIR=$(cd "$DIR" && pwd -P); fi
            do_stop
            ;;
        *) usage ;;
    esac
}

main "$@"
