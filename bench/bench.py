#!/usr/bin/env python3
"""Throughput benchmark of tap-heroku against PostgreSQL's own COPY, in the same run, at several
network round trips.

Creates `narrow` (bigint id, timestamptz updated_at with an index, short text, numeric(12,2),
boolean), `wide` (about 20 columns of mixed types with NULLs) and `uuid_keyed` (a random uuid
primary key, so key order is not storage order) in a Heroku-like server (SSL on, scram
password, read-only role). Then, for each round trip of --rtt (milliseconds; default 0,10,40),
it starts tests/link.py with --delay-ms RTT/2 in front of the server (0: no link, straight to
the server) and times through it, over --reps repetitions:

  * tap-heroku FULL_TABLE (storage order, the default; on narrow and uuid_keyed also
    full_table_order primary_key) and INCREMENTAL on narrow (first run, no bookmark) into
    /dev/null,
  * psql -c "COPY t TO STDOUT (FORMAT binary)" into /dev/null (the reference: ratio 1.00),
  * psql -c "COPY (SELECT row_to_json(r) FROM t r) TO STDOUT" into /dev/null,
  * psql -A -t with FETCH_COUNT=20000 running "SELECT * FROM t" into /dev/null: a cursor
    read of 20,000 rows per round trip, what the cursor-based Python taps do,

all over the same SSL connection settings (every command opens its own connection, so the
handshake's round trips count too), and prints per round trip the median wall time, the ratio
of each to COPY binary through the same link in the same run, and peak RSS (from
/usr/bin/time -v), plus output bytes per row. Also measures peak RSS on a 200,000-row prefix of
narrow and the discovery time of a database with 2,000 tables of 21 columns at each round trip.

LOG_BASED (--log-based-rows N, default 1,000,000; 0 skips it; no link): as the REPLICATION
role, a first run of `log_bench` (empty) makes a state, then N rows are inserted in one
transaction, and over --reps repetitions from that same state it times the tap's catch-up of
those changes, the server's own decoding of them (`select count(*) from
pg_logical_slot_peek_binary_changes(...)` on the same slot: the floor) and a FULL_TABLE of the
same rows, with peak RSS; the slot is dropped at the end.

Row counts can differ per round trip, so that a run over a slow link stays bounded:
--narrow-rows 2000000,2000000,200000 with --rtt 0,10,40 reads 200,000 rows at 40 ms (a table
narrow_200000, the first 200,000 rows of narrow, is created for it). One number applies to
every round trip. A command that runs longer than --timeout seconds stops the benchmark with a
message naming these options.

Usage: bench/run.sh [--rtt MS[,MS...]] [--narrow-rows N[,N...]] [--wide-rows N[,N...]]
                    [--uuid-rows N[,N...]] [--prefix-rows N] [--reps N] [--timeout S]
                    [--log-based-rows N] [--skip-discovery]
(bench/run.sh starts the servers with tests/server.sh and stops them afterwards.)
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAP = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "tap-heroku")
LINK = os.path.join(ROOT, "tests", "link.py")
READER = "tap_reader"
READER_PASSWORD = os.environ.get("TAP_HEROKU_TEST_READER_PASSWORD", "reader-Secret-9")
DB = "tap_bench"
TABLES_DB = "tap_bench_tables"
FETCH_COUNT = 20000


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


def conninfo(port, db=DB):
    return (f"host={env('TAP_HEROKU_TEST_HOST')} port={port} user={READER} "
            f"password={READER_PASSWORD} dbname={db} sslmode=require")


def relation(table, rows, sizes):
    """The table holding `rows` rows of `table`: the table itself at its largest size, a copy of
    its first rows (table_ROWS) at a smaller one."""
    return table if rows == max(sizes) else f"{table}_{rows}"


def setup(narrow_sizes, wide_sizes, prefix_rows, uuid_sizes):
    admin_sql(f"drop database if exists {DB}", db="postgres")
    admin_sql(f"create database {DB}", db="postgres")
    started = time.time()
    narrow_rows, wide_rows, uuid_rows = max(narrow_sizes), max(wide_sizes), max(uuid_sizes)
    admin_sql(f"""
create table narrow (id bigint primary key, updated_at timestamptz not null, name text, amount numeric(12,2), flag boolean);
insert into narrow
  select i, timestamptz '2020-01-01 00:00:00+00' + i * interval '1.5 seconds', 'name ' || i, (i % 100000) * 1.25, i % 3 = 0
  from generate_series(1, {narrow_rows}) i;
create index narrow_updated_at on narrow (updated_at);
create table narrow_xmin_idle as select * from narrow;
alter table narrow_xmin_idle add primary key (id);
create table narrow_xmin_changed as select * from narrow;
alter table narrow_xmin_changed add primary key (id);
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
""")
    # Smaller sizes for some round trips: the first rows, in the same storage order, with the
    # same keys and index.
    copies = []
    for rows in sorted(set(narrow_sizes) - {narrow_rows}):
        copies.append(f"create table narrow_{rows} as select * from narrow where id <= {rows}; "
                      f"alter table narrow_{rows} add primary key (id); create index on narrow_{rows} (updated_at);")
    for rows in sorted(set(wide_sizes) - {wide_rows}):
        copies.append(f"create table wide_{rows} as select * from wide where id <= {rows}; alter table wide_{rows} add primary key (id);")
    for rows in sorted(set(uuid_sizes) - {uuid_rows}):
        copies.append(f"create table uuid_keyed_{rows} as select * from uuid_keyed where n <= {rows}; "
                      f"alter table uuid_keyed_{rows} add primary key (id);")
    admin_sql("\n".join(copies) + f"""
vacuum analyze;
grant connect on database {DB} to {READER};
grant usage on schema public to {READER};
grant select on all tables in schema public to {READER};
""")
    print(f"bench: created narrow ({narrow_rows} rows), narrow_prefix ({prefix_rows}), wide ({wide_rows}), uuid_keyed ({uuid_rows})"
          f"{' and ' + str(len(copies)) + ' smaller copies' if copies else ''} in {time.time() - started:.1f}s", file=sys.stderr)


def write(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def catalogs(tmp, config, relations):
    """One catalog per (relation, method), from a discovery over the direct connection."""
    out = subprocess.run([TAP, "--config", config, "--discover"], check=True, capture_output=True, text=True).stdout
    catalog = json.loads(out)
    made = {}
    for table, method, key in relations:
        cat = json.loads(json.dumps(catalog))
        for stream in cat["streams"]:
            if stream["table_name"] == table:
                root = stream["metadata"][0]["metadata"]
                root["selected"] = True
                root["replication-method"] = method
                if key:
                    root["replication-key"] = key
        made[(table, method)] = write(os.path.join(tmp, f"{table}_{method}.json"), cat)
    return made


class Link:
    """tests/link.py in front of the server with half the round trip each way; none at 0 ms.
    Its stdin is a pipe held open by this process, so it ends with the benchmark however that
    ends."""

    def __init__(self, rtt_ms):
        self.proc = None
        self.port = env("TAP_HEROKU_TEST_PORT")
        if rtt_ms > 0:
            self.proc = subprocess.Popen(
                [sys.executable, LINK, "--target", f"{env('TAP_HEROKU_TEST_HOST')}:{self.port}", "--delay-ms", f"{rtt_ms / 2:g}",
                 "--max-seconds", "86400"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.port = self.proc.stdout.readline().strip()
            if not self.port:
                sys.exit("bench: tests/link.py did not start")

    def cpu_seconds(self):
        """User + system CPU the link has used so far (0 without a link)."""
        if not self.proc:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait()


def timed(cmd, timeout):
    """Runs cmd (stdout to /dev/null) under /usr/bin/time -v; returns (wall seconds, peak RSS KiB).
    cmd runs in its own process group, so that a timeout or Ctrl-C ends it and not only
    /usr/bin/time."""
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, process_group=0)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except BaseException as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            sys.exit(f"bench: {' '.join(cmd)} ran longer than --timeout {timeout:g}s; give smaller row counts for this round trip "
                     "(e.g. --rtt 0,10,40 --narrow-rows 2000000,2000000,200000) or a larger --timeout")
        raise
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench: command failed: {' '.join(cmd)}\n{stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return wall, rss


def output_bytes(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return total


class Run:
    """The measurements of one benchmark run: results[rtt][(table, what)]."""

    def __init__(self, reps, timeout):
        self.reps = reps
        self.timeout = timeout
        self.results = {}
        self.output = {}  # (table, what, rows) -> bytes of output, measured once (it does not depend on the link)

    def measure(self, rtt, link, table, what, cmd, rows):
        cpu_before = link.cpu_seconds()
        samples = [timed(cmd, self.timeout) for _ in range(self.reps)]
        cpu = (link.cpu_seconds() - cpu_before) / self.reps
        walls = [s[0] for s in samples]
        key = (table, what, rows)
        if key not in self.output:
            self.output[key] = output_bytes(cmd)
        r = self.results.setdefault(rtt, {})[(table, what)] = {
            "wall": statistics.median(walls),
            "rss_kib": max(s[1] for s in samples),
            "rows": rows,
            "bytes": self.output[key],
            "walls": walls,
            "link_cpu": cpu,
        }
        print(f"bench: {rtt} ms: {table} {what} ({rows} rows): median {r['wall']:.3f}s over {self.reps} runs "
              f"({', '.join(f'{w:.3f}' for w in walls)}); link CPU {cpu:.2f}s per run", file=sys.stderr)


def create_tables_db():
    admin_sql(f"drop database if exists {TABLES_DB}", db="postgres")
    admin_sql(f"create database {TABLES_DB}", db="postgres")
    columns = ", ".join(f"c{i} {t}" for i, t in enumerate(["text", "integer", "numeric(10,2)", "timestamptz", "boolean"] * 4))
    # 200 tables per transaction: one transaction for all would run out of lock slots.
    for start in range(1, 2001, 200):
        admin_sql(f"""
do $$ begin for i in {start}..{start + 199} loop
  execute format('create table t%s (id bigint primary key, {columns.replace("%", "%%")})', i);
end loop; end $$;""", db=TABLES_DB)
    admin_sql(f"""
grant connect on database {TABLES_DB} to {READER};
grant usage on schema public to {READER};
grant select on all tables in schema public to {READER};
""", db=TABLES_DB)


def discovery_benchmark(tmp, port, reps, timeout):
    config = write(os.path.join(tmp, f"config_tables_{port}.json"), {
        "host": env("TAP_HEROKU_TEST_HOST"), "port": port, "user": READER,
        "password": READER_PASSWORD, "dbname": TABLES_DB, "filter_dbs": TABLES_DB})
    walls = []
    for _ in range(reps):
        started = time.perf_counter()
        try:
            out = subprocess.run([TAP, "--config", config, "--discover"], check=True, capture_output=True, text=True, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            sys.exit(f"bench: discovery ran longer than --timeout {timeout:g}s; use --skip-discovery or a larger --timeout")
        walls.append(time.perf_counter() - started)
    return len(json.loads(out)["streams"]), statistics.median(walls), walls


def machine():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    server = subprocess.run(["psql", "-X", "-At", conninfo(env("TAP_HEROKU_TEST_PORT")), "-c", "show server_version"],
                            capture_output=True, text=True).stdout.strip()
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}; PostgreSQL {server} on the same machine, SSL on"


def int_list(text):
    try:
        values = [int(v.replace("_", "")) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,...: {text!r}")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"negative value in {text!r}")
    return values


def per_rtt(parser, name, values, rtts):
    """A row count for each round trip: one value for all, or one per --rtt entry."""
    if len(values) == 1:
        return values * len(rtts)
    if len(values) != len(rtts):
        parser.error(f"--{name} has {len(values)} values but --rtt has {len(rtts)}; give one, or one per round trip")
    return values


def print_table(run, rtts, args):
    print(f"\nMachine: {machine()}")
    print(f"Medians of {args.reps} runs. For each round trip (RTT): rows read, wall seconds, ratio = wall time / wall time of COPY binary "
          "of the same table through the same link in the same run, peak RSS in MiB. A 0 ms RTT is a direct connection (no link).\n")
    header = "| table | what | bytes/row |" + "".join(f" {rtt} ms rows | wall s | ratio | RSS MiB |" for rtt in rtts)
    print(header)
    print("|---|---|---:|" + "---:|---:|---:|---:|" * len(rtts))
    keys = list(dict.fromkeys(k for rtt in rtts for k in run.results.get(rtt, {})))
    for table, what in keys:
        cells = []
        bytes_per_row = ""
        for rtt in rtts:
            r = run.results[rtt].get((table, what))
            if not r:
                cells.append(" | | | |")
                continue
            base = run.results[rtt].get((table, "COPY binary"))
            ratio = f"{r['wall'] / base['wall']:.2f}" if base and base["rows"] == r["rows"] else ""
            bytes_per_row = bytes_per_row or f"{r['bytes'] / r['rows']:.1f}"
            cells.append(f" {r['rows']:,} | {r['wall']:.3f} | {ratio} | {r['rss_kib'] / 1024:.1f} |")
        print(f"| {table} | {what} | {bytes_per_row} |" + "".join(cells))
    cpu = []
    for rtt in rtts:
        if rtt > 0:
            total = sum(r["link_cpu"] for r in run.results[rtt].values())
            wall = sum(r["wall"] for r in run.results[rtt].values())
            cpu.append(f"{rtt} ms: {total:.1f}s CPU over {wall:.1f}s of commands")
    if cpu:
        print(f"\nThe link (tests/link.py, one Python process on the same 2 cores) used, per run of each command: {'; '.join(cpu)}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=int_list, default=[0, 10, 40], help="round trips in ms, e.g. 0,10,40")
    parser.add_argument("--narrow-rows", type=int_list, default=[2_000_000])
    parser.add_argument("--wide-rows", type=int_list, default=[300_000])
    parser.add_argument("--prefix-rows", type=int, default=200_000)
    parser.add_argument("--uuid-rows", type=int_list, default=[1_000_000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one command may take")
    parser.add_argument("--skip-discovery", action="store_true")
    parser.add_argument("--log-based-rows", type=int, default=1_000_000, help="changed rows of the LOG_BASED catch-up (0: skip it)")
    args = parser.parse_args()
    rtts = args.rtt
    narrow_sizes = per_rtt(parser, "narrow-rows", args.narrow_rows, rtts)
    wide_sizes = per_rtt(parser, "wide-rows", args.wide_rows, rtts)
    uuid_sizes = per_rtt(parser, "uuid-rows", args.uuid_rows, rtts)
    if args.reps < 1 or min(narrow_sizes + wide_sizes + uuid_sizes) < 1:
        parser.error("--reps and row counts must be at least 1")

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    setup(narrow_sizes, wide_sizes, args.prefix_rows, uuid_sizes)
    if not args.skip_discovery:
        create_tables_db()
    tmp = tempfile.mkdtemp(prefix="tap-heroku-bench.")
    try:
        measure_all(args, rtts, narrow_sizes, wide_sizes, uuid_sizes, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_all(args, rtts, narrow_sizes, wide_sizes, uuid_sizes, tmp):
    direct = {"host": env("TAP_HEROKU_TEST_HOST"), "port": env("TAP_HEROKU_TEST_PORT"), "user": READER,
              "password": READER_PASSWORD, "dbname": DB, "filter_dbs": DB}
    relations = []
    for table, sizes in [("narrow", narrow_sizes), ("wide", wide_sizes), ("uuid_keyed", uuid_sizes)]:
        for rows in sorted(set(sizes)):
            name = relation(table, rows, sizes)
            relations.append((name, "FULL_TABLE", None))
            if table == "narrow":
                relations.append((name, "INCREMENTAL", "updated_at"))
    relations.append(("narrow_prefix", "FULL_TABLE", None))
    relations.append(("narrow_xmin_idle", "XMIN", None))
    relations.append(("narrow_xmin_changed", "XMIN", None))
    direct_config = write(os.path.join(tmp, "config_direct.json"), direct)
    cats = catalogs(tmp, direct_config, relations)
    # XMIN: a first run over each copy of narrow makes the state the measured runs start from;
    # then 1 % of one copy's rows are updated. Every measured run starts from the same state, so
    # the idle copy's runs find nothing and the other's find those rows.
    xmin_states = {}
    for name in ("narrow_xmin_idle", "narrow_xmin_changed"):
        out = subprocess.run([TAP, "--config", direct_config, "--catalog", cats[(name, "XMIN")], "--log-level", "warn"],
                             check=True, capture_output=True, text=True).stdout
        state = [json.loads(line) for line in out.splitlines() if '"STATE"' in line][-1]["value"]
        xmin_states[name] = write(os.path.join(tmp, f"state_{name}.json"), state)
    admin_sql("update narrow_xmin_changed set name = name || ' changed' where id % 100 = 0")

    run = Run(args.reps, args.timeout)
    discovery = {}
    for i, rtt in enumerate(rtts):
        link = Link(rtt)
        try:
            config = write(os.path.join(tmp, f"config_{rtt}.json"), {**direct, "port": link.port})
            pk_config = write(os.path.join(tmp, f"config_{rtt}_primary_key.json"), {**direct, "port": link.port, "full_table_order": "primary_key"})
            psql = ["psql", "-X", conninfo(link.port)]
            for table, sizes in [("narrow", narrow_sizes), ("wide", wide_sizes), ("uuid_keyed", uuid_sizes)]:
                rows = sizes[i]
                name = relation(table, rows, sizes)
                run.measure(rtt, link, table, "COPY binary", psql + ["-c", f"copy {name} to stdout (format binary)"], rows)
                run.measure(rtt, link, table, "COPY row_to_json", psql + ["-c", f"copy (select row_to_json(r) from {name} r) to stdout"], rows)
                run.measure(rtt, link, table, f"psql FETCH_COUNT {FETCH_COUNT}",
                            psql + ["-A", "-t", "-v", f"FETCH_COUNT={FETCH_COUNT}", "-c", f"select * from {name}"], rows)
                for method in ["FULL_TABLE", "INCREMENTAL"] if table == "narrow" else ["FULL_TABLE"]:
                    run.measure(rtt, link, table, f"tap-heroku {method}",
                                [TAP, "--config", config, "--catalog", cats[(name, method)], "--log-level", "warn"], rows)
                if table in ("narrow", "uuid_keyed"):
                    # The other FULL_TABLE order, for comparison: resumable by primary key, ordered by it
                    # (on uuid_keyed the key order is not the storage order: an index scan jumping
                    # around the heap).
                    run.measure(rtt, link, table, "tap-heroku FULL_TABLE, primary_key order",
                                [TAP, "--config", pk_config, "--catalog", cats[(name, "FULL_TABLE")], "--log-level", "warn"], rows)
            for name, what in [("narrow_xmin_idle", "tap-heroku XMIN, nothing changed"), ("narrow_xmin_changed", "tap-heroku XMIN, 1 % changed")]:
                run.measure(rtt, link, "narrow", what,
                            [TAP, "--config", config, "--catalog", cats[(name, "XMIN")], "--state", xmin_states[name], "--log-level", "warn"],
                            max(narrow_sizes))
            run.measure(rtt, link, "narrow_prefix", "tap-heroku FULL_TABLE",
                        [TAP, "--config", config, "--catalog", cats[("narrow_prefix", "FULL_TABLE")], "--log-level", "warn"], args.prefix_rows)
            if not args.skip_discovery:
                discovery[rtt] = discovery_benchmark(tmp, link.port, args.reps, args.timeout)
                print(f"bench: {rtt} ms: discovery median {discovery[rtt][1]:.3f}s ({', '.join(f'{w:.3f}' for w in discovery[rtt][2])})",
                      file=sys.stderr)
        finally:
            link.stop()

    print_table(run, rtts, args)
    if args.log_based_rows > 0:
        log_based_benchmark(args, tmp)
    if discovery:
        streams = {d[0] for d in discovery.values()}
        print(f"\nDiscovery of {', '.join(map(str, sorted(streams)))} tables of 21 columns, median of {args.reps} runs: "
              + ", ".join(f"{rtt} ms RTT {d[1]:.2f}s" for rtt, d in discovery.items()) + ".")
        admin_sql(f"drop database {TABLES_DB}", db="postgres")
    admin_sql(f"drop database {DB}", db="postgres")


LOG_DB = "tap_bench_log"


def log_based_benchmark(args, tmp):
    """LOG_BASED catch-up of --log-based-rows inserted rows beside the server's own decoding of
    them and a FULL_TABLE of the same rows, all straight to the server, from the same state."""
    user = env("TAP_HEROKU_TEST_LOGICAL_USER")
    password = env("TAP_HEROKU_TEST_LOGICAL_PASSWORD")
    admin_sql(f"drop database if exists {LOG_DB} with (force)", db="postgres")
    admin_sql(f"create database {LOG_DB}", db="postgres")
    admin_sql(f"grant connect on database {LOG_DB} to {user}", db="postgres")
    admin_sql(f"create table log_bench (id bigint primary key, k int, v text, t timestamptz, n numeric); "
              f"create publication tap_heroku for table log_bench; grant select on log_bench to {user}", db=LOG_DB)
    try:
        config = write(os.path.join(tmp, "config_log.json"),
                       {"host": env("TAP_HEROKU_TEST_HOST"), "port": env("TAP_HEROKU_TEST_PORT"), "user": user, "password": password,
                        "dbname": LOG_DB, "filter_dbs": LOG_DB})
        cats = catalogs(tmp, config, [("log_bench", "LOG_BASED", None), ("log_bench", "FULL_TABLE", None)])
        out = subprocess.run([TAP, "--config", config, "--catalog", cats[("log_bench", "LOG_BASED")], "--log-level", "warn"],
                             check=True, capture_output=True, text=True).stdout
        state = write(os.path.join(tmp, "state_log.json"), [json.loads(line) for line in out.splitlines() if '"STATE"' in line][-1]["value"])
        rows = args.log_based_rows
        admin_sql(f"set synchronous_commit = on; insert into log_bench select g, g % 1000, md5(g::text), now(), g * 1.25 "
                  f"from generate_series(1, {rows}) g", db=LOG_DB)
        slot = f"tap_heroku_{LOG_DB}"
        psql = ["psql", "-X", "-At", f"host={env('TAP_HEROKU_TEST_HOST')} port={env('TAP_HEROKU_TEST_PORT')} user={user} "
                f"password={password} dbname={LOG_DB} sslmode=require"]
        decode = psql + ["-c", f"select count(*) from pg_logical_slot_peek_binary_changes('{slot}', pg_current_wal_flush_lsn(), NULL, "
                               "'proto_version', '1', 'publication_names', 'tap_heroku', 'binary', 'true')"]
        commands = [
            ("server decoding: count(*) of the peek", decode),
            ("tap-heroku LOG_BASED catch-up",
             [TAP, "--config", config, "--catalog", cats[("log_bench", "LOG_BASED")], "--state", state, "--log-level", "warn"]),
            ("tap-heroku FULL_TABLE", [TAP, "--config", config, "--catalog", cats[("log_bench", "FULL_TABLE")], "--log-level", "warn"]),
        ]
        results = {}
        # Interleaved, so that a busy moment of the machine falls on each about equally.
        for _ in range(args.reps):
            for what, cmd in commands:
                results.setdefault(what, []).append(timed(cmd, args.timeout))
        floor = statistics.median(w for w, _ in results[commands[0][0]])
        print(f"\nLOG_BASED: {rows} rows inserted in one transaction, straight to the server, median of {args.reps} runs:\n")
        print("| what | wall | ratio to decoding | rows/s | peak RSS |")
        print("|---|---|---|---|---|")
        for what, _ in commands:
            walls = [w for w, _ in results[what]]
            wall = statistics.median(walls)
            rss = max(r for _, r in results[what])
            print(f"| {what} | {wall:.2f}s | {wall / floor:.2f} | {rows / wall:,.0f} | {rss / 1024:.0f} MiB |")
            print(f"bench: log_based: {what}: {', '.join(f'{w:.3f}' for w in walls)}", file=sys.stderr)
    finally:
        admin_sql("do $$ begin perform pg_drop_replication_slot(slot_name) from pg_replication_slots "
                  "where database = current_database(); end $$", db=LOG_DB)
        admin_sql(f"drop database {LOG_DB} with (force)", db="postgres")


if __name__ == "__main__":
    main()
