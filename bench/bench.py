#!/usr/bin/env python3
"""Throughput benchmark of tap-heroku against PostgreSQL's own COPY, in the same run.

Creates `narrow` (bigint id, timestamptz updated_at with an index, short text, numeric(12,2),
boolean), `wide` (about 20 columns of mixed types with NULLs) and `uuid_keyed` (a random uuid
primary key, so key order is not storage order) in a Heroku-like server (SSL on, scram
password, read-only role), then times over several repetitions:

  * tap-heroku FULL_TABLE (storage order, the default; on narrow and uuid_keyed also
    full_table_order primary_key) and INCREMENTAL on narrow (first run, no bookmark) into
    /dev/null,
  * psql -c "COPY t TO STDOUT (FORMAT binary)" into /dev/null,
  * psql -c "COPY (SELECT row_to_json(r) FROM t r) TO STDOUT" into /dev/null,

all over the same SSL connection settings, and prints median wall time, rows/s, the ratio of
each to COPY binary, output bytes per row and peak RSS (from /usr/bin/time -v). Also measures
peak RSS on a 200,000-row prefix of narrow and the discovery time of a database with 2,000
tables of 20 columns.

Usage: bench/run.sh [--narrow-rows N] [--wide-rows N] [--uuid-rows N] [--reps N] [--skip-discovery]
(bench/run.sh starts the servers with tests/server.sh and stops them afterwards.)
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAP = os.path.join(ROOT, "target", "release", "tap-heroku")
READER = "tap_reader"
READER_PASSWORD = os.environ.get("TAP_HEROKU_TEST_READER_PASSWORD", "reader-Secret-9")
DB = "tap_bench"


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"bench: {name} is not set; run bench/run.sh, which starts the servers")
    return value


def admin_sql(sql, db=DB):
    """Runs SQL as the superuser over the unix socket."""
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", env("TAP_HEROKU_TEST_SOCKET_DIR"),
         "-p", env("TAP_HEROKU_TEST_PORT"), "-U", env("TAP_HEROKU_TEST_ADMIN_USER"), "-d", db, "-f", "-"],
        input=sql, text=True, check=True,
    )


def conninfo():
    return (f"host={env('TAP_HEROKU_TEST_HOST')} port={env('TAP_HEROKU_TEST_PORT')} user={READER} "
            f"password={READER_PASSWORD} dbname={DB} sslmode=require")


def setup(narrow_rows, wide_rows, prefix_rows, uuid_rows):
    admin_sql(f"drop database if exists {DB}", db="postgres")
    admin_sql(f"create database {DB}", db="postgres")
    started = time.time()
    admin_sql(f"""
create table narrow (id bigint primary key, updated_at timestamptz not null, name text, amount numeric(12,2), flag boolean);
insert into narrow
  select i, timestamptz '2020-01-01 00:00:00+00' + i * interval '1.5 seconds', 'name ' || i, (i % 100000) * 1.25, i % 3 = 0
  from generate_series(1, {narrow_rows}) i;
create index narrow_updated_at on narrow (updated_at);
create table narrow_prefix as select * from narrow where id <= {prefix_rows};
alter table narrow_prefix add primary key (id);
create table wide (
  id bigint primary key, i2 smallint, i4 integer, t text, vc varchar(40), n numeric(14,4), d double precision,
  b boolean, dt date, ts timestamp, tstz timestamptz, tm time, u uuid, j json, jb jsonb,
  ta text[], ia integer[], by bytea, iv interval, ip inet, note text
);
insert into wide
  select i, (i % 30000)::smallint, i * 7, 'text value ' || i, 'varchar ' || (i % 977), i * 3.1416, i / 7.0,
    i % 2 = 0, date '2020-01-01' + (i % 3000), timestamp '2020-01-01' + i * interval '1 minute',
    timestamptz '2020-01-01 00:00+00' + i * interval '1 second', time '00:00' + (i % 86400) * interval '1 second',
    md5(i::text)::uuid, json_build_object('id', i, 'name', 'n' || i), jsonb_build_object('k', i, 'tags', jsonb_build_array('a', 'b')),
    array['x' || i, 'y', 'z'], array[i, i + 1, i + 2], decode(md5(i::text), 'hex'), (i % 1000) * interval '1 minute',
    ('10.' || (i % 256) || '.' || ((i / 256) % 256) || '.1')::inet,
    case when i % 5 = 0 then null else 'note ' || i end
  from generate_series(1, {wide_rows}) i;
create table uuid_keyed (id uuid primary key default gen_random_uuid(), n integer, t text);
insert into uuid_keyed (n, t) select i, 'row ' || i from generate_series(1, {uuid_rows}) i;
vacuum analyze;
grant connect on database {DB} to {READER};
grant usage on schema public to {READER};
grant select on all tables in schema public to {READER};
""")
    print(f"bench: created narrow ({narrow_rows} rows), narrow_prefix ({prefix_rows}), wide ({wide_rows}), uuid_keyed ({uuid_rows}) in {time.time() - started:.1f}s",
          file=sys.stderr)


def write(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def catalogs(tmp, config):
    out = subprocess.run([TAP, "--config", config, "--discover"], check=True, capture_output=True, text=True).stdout
    catalog = json.loads(out)
    made = {}
    for name, table, method, key in [
        ("narrow FULL_TABLE", "narrow", "FULL_TABLE", None),
        ("narrow INCREMENTAL", "narrow", "INCREMENTAL", "updated_at"),
        ("narrow_prefix FULL_TABLE", "narrow_prefix", "FULL_TABLE", None),
        ("wide FULL_TABLE", "wide", "FULL_TABLE", None),
        ("uuid_keyed FULL_TABLE", "uuid_keyed", "FULL_TABLE", None),
    ]:
        cat = json.loads(json.dumps(catalog))
        for stream in cat["streams"]:
            if stream["table_name"] == table:
                root = stream["metadata"][0]["metadata"]
                root["selected"] = True
                root["replication-method"] = method
                if key:
                    root["replication-key"] = key
        made[name] = write(os.path.join(tmp, re.sub(r"\W", "_", name) + ".json"), cat)
    return made


def timed(cmd):
    """Runs cmd (stdout to /dev/null) under /usr/bin/time -v; returns (wall seconds, peak RSS KiB)."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench: command failed: {' '.join(cmd)}\n{proc.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss


def output_bytes(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return total


def measure(name, cmd, rows, reps, results):
    samples = [timed(cmd) for _ in range(reps)]
    walls = [s[0] for s in samples]
    results[name] = {
        "wall": statistics.median(walls),
        "rss_kib": max(s[1] for s in samples),
        "rows": rows,
        "bytes": output_bytes(cmd),
        "walls": walls,
    }
    r = results[name]
    print(f"bench: {name}: median {r['wall']:.3f}s over {reps} runs ({', '.join(f'{w:.3f}' for w in walls)})", file=sys.stderr)


def discovery_benchmark(tmp, reps):
    db = "tap_bench_tables"
    admin_sql(f"drop database if exists {db}", db="postgres")
    admin_sql(f"create database {db}", db="postgres")
    columns = ", ".join(f"c{i} {t}" for i, t in enumerate(["text", "integer", "numeric(10,2)", "timestamptz", "boolean"] * 4))
    # 200 tables per transaction: one transaction for all would run out of lock slots.
    for start in range(1, 2001, 200):
        admin_sql(f"""
do $$ begin for i in {start}..{start + 199} loop
  execute format('create table t%s (id bigint primary key, {columns.replace("%", "%%")})', i);
end loop; end $$;""", db=db)
    admin_sql(f"""
grant connect on database {db} to {READER};
grant usage on schema public to {READER};
grant select on all tables in schema public to {READER};
""", db=db)
    config = write(os.path.join(tmp, "config_tables.json"), {
        "host": env("TAP_HEROKU_TEST_HOST"), "port": env("TAP_HEROKU_TEST_PORT"), "user": READER,
        "password": READER_PASSWORD, "dbname": db, "filter_dbs": db})
    walls = []
    for _ in range(reps):
        started = time.perf_counter()
        out = subprocess.run([TAP, "--config", config, "--discover"], check=True, capture_output=True, text=True).stdout
        walls.append(time.perf_counter() - started)
    streams = len(json.loads(out)["streams"])
    admin_sql(f"drop database {db}", db="postgres")
    return streams, statistics.median(walls)


def machine():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    server = subprocess.run(["psql", "-X", "-At", conninfo(), "-c", "show server_version"], capture_output=True, text=True).stdout.strip()
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}; PostgreSQL {server} on the same machine, SSL on"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narrow-rows", type=int, default=2_000_000)
    parser.add_argument("--wide-rows", type=int, default=300_000)
    parser.add_argument("--prefix-rows", type=int, default=200_000)
    parser.add_argument("--uuid-rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-discovery", action="store_true")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    setup(args.narrow_rows, args.wide_rows, args.prefix_rows, args.uuid_rows)
    tmp = tempfile.mkdtemp(prefix="tap-heroku-bench.")
    config = write(os.path.join(tmp, "config.json"), {
        "host": env("TAP_HEROKU_TEST_HOST"), "port": env("TAP_HEROKU_TEST_PORT"), "user": READER,
        "password": READER_PASSWORD, "dbname": DB, "filter_dbs": DB})
    pk_config = write(os.path.join(tmp, "config-primary-key.json"), {**json.load(open(config)), "full_table_order": "primary_key"})
    cats = catalogs(tmp, config)
    results = {}
    tables = [("narrow", args.narrow_rows), ("wide", args.wide_rows), ("uuid_keyed", args.uuid_rows)]
    for table, rows in tables:
        measure(f"{table} COPY binary", ["psql", "-X", conninfo(), "-c", f"copy {table} to stdout (format binary)"], rows, args.reps, results)
        measure(f"{table} COPY row_to_json", ["psql", "-X", conninfo(), "-c", f"copy (select row_to_json(r) from {table} r) to stdout"], rows, args.reps, results)
        for method in ["FULL_TABLE", "INCREMENTAL"] if table == "narrow" else ["FULL_TABLE"]:
            name = f"{table} {method}"
            measure(f"{name} tap-heroku", [TAP, "--config", config, "--catalog", cats[name], "--log-level", "warn"], rows, args.reps, results)
        if table in ("narrow", "uuid_keyed"):
            # The other FULL_TABLE order, for comparison: resumable by primary key, ordered by it
            # (on uuid_keyed the key order is not the storage order: an index scan jumping
            # around the heap).
            measure(f"{table} FULL_TABLE primary_key order tap-heroku",
                    [TAP, "--config", pk_config, "--catalog", cats[f"{table} FULL_TABLE"], "--log-level", "warn"], rows, args.reps, results)
    measure("narrow_prefix FULL_TABLE tap-heroku", [TAP, "--config", config, "--catalog", cats["narrow_prefix FULL_TABLE"], "--log-level", "warn"],
            args.prefix_rows, args.reps, results)

    print(f"\nMachine: {machine()}")
    print(f"Medians of {args.reps} runs; ratio = wall time / wall time of COPY binary of the same table.\n")
    print("| table | what | rows | wall s | rows/s | ratio to COPY binary | bytes/row | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        table = name.split()[0]
        base = results.get(f"{table} COPY binary")
        ratio = f"{r['wall'] / base['wall']:.2f}" if base else "-"
        what = name[len(table) + 1:]
        print(f"| {table} | {what} | {r['rows']:,} | {r['wall']:.3f} | {r['rows'] / r['wall']:,.0f} | {ratio} | "
              f"{r['bytes'] / r['rows']:.1f} | {r['rss_kib'] / 1024:.1f} |")
    if not args.skip_discovery:
        streams, wall = discovery_benchmark(tmp, args.reps)
        print(f"\nDiscovery of {streams} tables of 21 columns: median {wall:.2f}s over {args.reps} runs.")
    admin_sql(f"drop database {DB}", db="postgres")


if __name__ == "__main__":
    main()
