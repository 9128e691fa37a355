//! What the test servers' backends are doing, from `pg_stat_activity`: the test waits until the
//! tap's statement runs (instead of sleeping and hoping it does) and ends the tap's backends.
//! A wait that times out fails the test, saying what it waited for and what the backends did.

use std::time::{Duration, Instant};

use crate::support::TestDb;

/// Most a test waits for a statement to start: far above the time it takes on a loaded machine.
pub const QUERY_START_LIMIT: Duration = Duration::from_secs(20);
/// The `application_name` the tap connects with.
pub const TAP_APPLICATION_NAME: &str = "tap-heroku";
/// Pause between two looks at `pg_stat_activity` (polling, not timing).
const POLL: Duration = Duration::from_millis(10);

/// Waits until a backend of `usename` with `application_name`, connected to `db`'s database, is
/// active in a statement whose text matches the SQL `like` pattern `query_like`, and returns its
/// pid. Panics after `limit` with what each of that role's backends there was doing. (Tests run
/// in parallel and some share a role: the database tells this test's tap apart.)
pub fn wait_for_query(db: &TestDb, usename: &str, application_name: &str, query_like: &str, limit: Duration) -> i32 {
    let mut admin = db.admin();
    let start = Instant::now();
    loop {
        let row = admin
            .query_opt(
                "select pid from pg_stat_activity where usename = $1 and application_name = $2 and state = 'active' \
                 and query like $3 and datname = $4 limit 1",
                &[&usename, &application_name, &query_like, &db.name],
            )
            .expect("reading pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        if start.elapsed() > limit {
            let seen: Vec<String> = admin
                .query(
                    "select coalesce(state, '?') || ' [' || coalesce(wait_event, '-') || ']: ' || left(query, 200) \
                     from pg_stat_activity where usename = $1 and application_name = $2 and datname = $3",
                    &[&usename, &application_name, &db.name],
                )
                .expect("reading pg_stat_activity")
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!(
                "no backend of role {usename} (application_name {application_name}) ran a statement like {query_like:?} \
                 within {limit:?}; its backends: {seen:#?}"
            );
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_for_query`] for the tap's backends of `db`'s role, with [`QUERY_START_LIMIT`].
pub fn wait_for_tap_query(db: &TestDb, query_like: &str) -> i32 {
    wait_for_query(db, &db.role, TAP_APPLICATION_NAME, query_like, QUERY_START_LIMIT)
}

/// Terminates every tap-heroku backend of `db`'s role; returns how many were ended.
pub fn terminate_tap_backends(db: &TestDb) -> i64 {
    terminate_backends_of(db, &db.role)
}

/// Terminates every tap-heroku backend of `usename` connected to `db`'s database (never another
/// test's, which may share the role); returns how many were ended.
pub fn terminate_backends_of(db: &TestDb, usename: &str) -> i64 {
    db.admin()
        .query_one(
            "select count(*) from (select pg_terminate_backend(pid) as ok from pg_stat_activity \
             where usename = $1 and application_name = $2 and datname = $3) t where ok",
            &[&usename, &TAP_APPLICATION_NAME, &db.name],
        )
        .expect("terminating the tap's backend")
        .get(0)
}
