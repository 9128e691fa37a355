#!/usr/bin/env bash
# See tap-heroku work in a minute, without a Heroku account:
#
#   examples/demo.sh [DIR]
#
# starts a throw-away Heroku-like PostgreSQL (SSL only, scram passwords: tests/server.sh) holding
# a small shop, discovers it, selects four streams, syncs them into target-jsonl, changes some
# rows, syncs again with the state of the first run, and shows what arrived and what the state
# says. Then it stops the server and removes everything it made; with DIR, the catalogs, the
# state and the .jsonl files of both runs are kept there.
#
# Needs: tap-heroku on PATH (or TAP_HEROKU=/path/to/tap-heroku), the PostgreSQL server binaries
# (apt-get install postgresql postgresql-contrib), python3 with venv. target-jsonl comes from
# TARGET_JSONL=/path/to/target-jsonl, or from PATH, or is installed from PyPI into a virtualenv
# under ~/.cache/tap-heroku-demo (made once, reused).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
die() { echo "demo: $*" >&2; exit 1; }

KEEP_DIR=${1:-}
TAP=${TAP_HEROKU:-$(command -v tap-heroku || true)}
[[ -n $TAP && -x $TAP ]] || die "tap-heroku is not on PATH: install it first (README, Install), or set TAP_HEROKU=/path/to/tap-heroku"
command -v python3 >/dev/null || die "python3 is needed (for target-jsonl and to edit the catalog)"

# target-jsonl: given, on PATH, or installed once into a virtualenv of its own.
TARGET=${TARGET_JSONL:-$(command -v target-jsonl || true)}
if [[ -z $TARGET ]]; then
    VENV=${XDG_CACHE_HOME:-$HOME/.cache}/tap-heroku-demo/venv
    if [[ ! -x $VENV/bin/target-jsonl ]]; then
        echo "demo: installing target-jsonl from PyPI into $VENV" >&2
        python3 -m venv "$VENV" && "$VENV/bin/pip" install -q target-jsonl==0.1.4 \
            || die "could not install target-jsonl into $VENV (needs python3-venv and access to PyPI)"
    fi
    TARGET=$VENV/bin/target-jsonl
fi

# Everything else lives in one temporary directory: the server and the work files.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tap-heroku-demo.XXXXXX")
# The server runs as the "postgres" OS user when we are root: it must be able to enter.
chmod 755 "$WORK"
cleanup() {
    local rc=$?
    "$ROOT/tests/server.sh" stop "$WORK/pg" >/dev/null 2>&1 || true
    if [[ -n $KEEP_DIR && -d $WORK/files ]]; then
        mkdir -p "$KEEP_DIR" && cp -r "$WORK/files/." "$KEEP_DIR/" && echo "demo: files kept in $KEEP_DIR" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting a Heroku-like PostgreSQL (SSL only, scram passwords)"
mkdir "$WORK/pg" "$WORK/files"
"$ROOT/tests/server.sh" start "$WORK/pg" 2>"$WORK/server.log" || { cat "$WORK/server.log" >&2; die "the server did not start"; }
# shellcheck source=/dev/null
source "$WORK/pg/env"
psql() {
    "$TAP_HEROKU_TEST_PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$TAP_HEROKU_TEST_SOCKET_DIR" -p "$TAP_HEROKU_TEST_PORT" \
        -U "$TAP_HEROKU_TEST_ADMIN_USER" "$@"
}
echo "port $TAP_HEROKU_TEST_PORT, database shop, read-only role $TAP_HEROKU_TEST_READER_USER"

psql -d postgres -c "create database shop"
psql -d shop <<SQL
create table customers (
  id serial primary key,
  name text not null,
  email text,
  preferences jsonb,
  created_at timestamptz not null default now()
);
create table orders (
  id serial primary key,
  customer_id int not null references customers,
  total numeric(12,2) not null,
  status text not null,
  updated_at timestamptz not null default now()
);
create index on orders (updated_at);
-- No primary key: a log that only grows.
create table page_views (path text not null, viewed_at timestamptz not null default now());
create view customer_totals as
  select c.id, c.name, count(o.id) as order_count, coalesce(sum(o.total), 0) as total_spent
  from customers c left join orders o on o.customer_id = c.id group by c.id, c.name;

insert into customers (name, email, preferences, created_at) values
  ('Ada Lovelace', 'ada@example.com', '{"newsletter": true, "sizes": ["M"]}', '2024-01-05 09:00+00'),
  ('Grace Hopper', 'grace@example.com', '{"newsletter": false}', '2024-02-11 14:30+00'),
  ('Alan Turing', null, null, '2024-03-20 08:15+00');
insert into orders (customer_id, total, status, updated_at) values
  (1, 129.90, 'shipped',   '2024-06-01 10:00+00'),
  (1,  15.00, 'delivered', '2024-06-02 11:30+00'),
  (2, 1999.99, 'paid',     '2024-06-03 09:45+00'),
  (3,   0.50, 'cancelled', '2024-06-04 16:20+00');
insert into page_views (path, viewed_at) values ('/', '2024-06-01 09:59+00'), ('/cart', '2024-06-01 10:00+00');

grant usage on schema public to $TAP_HEROKU_TEST_READER_USER;
grant select on all tables in schema public to $TAP_HEROKU_TEST_READER_USER;
SQL

cd "$WORK/files"
# What Heroku's DATABASE_URL would be; the tap reads it from the environment.
export DATABASE_URL="postgres://$TAP_HEROKU_TEST_READER_USER:$TAP_HEROKU_TEST_READER_PASSWORD@127.0.0.1:$TAP_HEROKU_TEST_PORT/shop"
echo '{"filter_dbs": "shop"}' >config.json

say "tap-heroku --config config.json --discover > catalog.json"
"$TAP" --config config.json --discover >catalog.json 2>discover.log
python3 - <<'EOF'
import json
for s in json.load(open("catalog.json"))["streams"]:
    m = next(e["metadata"] for e in s["metadata"] if e["breadcrumb"] == [])
    kind = "view" if m.get("is-view") else "table"
    print(f'{s["tap_stream_id"]:28} {kind}, key {m.get("table-key-properties")}, {len(s["schema"]["properties"])} columns')
EOF

say "selecting: orders INCREMENTAL on updated_at, customers, page_views and customer_totals FULL_TABLE"
python3 - <<'EOF'
import json
selection = {
    "shop-public-orders": {"replication-method": "INCREMENTAL", "replication-key": "updated_at"},
    "shop-public-customers": {"replication-method": "FULL_TABLE"},
    "shop-public-page_views": {"replication-method": "FULL_TABLE"},
    "shop-public-customer_totals": {"replication-method": "FULL_TABLE", "view-key-properties": ["id"]},
}
catalog = json.load(open("catalog.json"))
for stream in catalog["streams"]:
    if stream["tap_stream_id"] in selection:
        root = next(e for e in stream["metadata"] if e["breadcrumb"] == [])
        root["metadata"].update({"selected": True, **selection.pop(stream["tap_stream_id"])})
assert not selection, f"not discovered: {selection}"
json.dump(catalog, open("selected.json", "w"), indent=1)
EOF

# sync N [--state FILE]: one run into run-N/, its last committed STATE into state.json.
sync() {
    local n=$1; shift
    mkdir "run-$n"
    echo "{\"destination_path\": \"run-$n\", \"do_timestamp_file\": false}" >"target-$n.json"
    "$TAP" --config config.json --catalog selected.json "$@" 2>"tap-$n.log" \
        | "$TARGET" --config "target-$n.json" >"state-$n.out" 2>"target-$n.log" \
        || { cat "tap-$n.log" "target-$n.log" >&2; die "run $n failed"; }
    tail -1 "state-$n.out" >state.json
    grep -h '^INFO synced' "tap-$n.log" | sed 's/^INFO /  /'
}
show() { # show N: the records of run N, one stream per block
    local f
    for f in run-"$1"/*.jsonl; do
        echo "-- $(basename "$f") ($(wc -l <"$f") records)"
        sed 's/^/   /' "$f"
    done
}
state() { python3 -c 'import json; s = json.load(open("state.json")); print(json.dumps(s["bookmarks"]["shop-public-orders"], indent=1))'; }

say "run 1: tap-heroku --config config.json --catalog selected.json | target-jsonl"
sync 1
show 1
say "state after run 1: the bookmark of orders (the highest updated_at sent)"
state

say "changing the shop: order 3 is shipped, two new orders, a new customer, a page view"
psql -d shop <<'SQL'
update orders set status = 'shipped', updated_at = '2024-06-05 08:00+00' where id = 3;
insert into customers (name, email) values ('Katherine Johnson', 'katherine@example.com');
insert into orders (customer_id, total, status, updated_at) values
  (4, 42.00, 'paid', '2024-06-05 09:00+00'), (2, 7.25, 'paid', '2024-06-05 09:30+00');
insert into page_views (path) values ('/checkout');
SQL

say "run 2: the same with --state state.json"
sync 2 --state state.json
show 2
say "state after run 2"
state
echo
echo "Run 2 sent only the orders at or after run 1's bookmark (order 4 again, as it equals the"
echo "bookmark; order 3 and the two new ones) and the FULL_TABLE streams whole."
