//! Integration tests: one binary, run against the Heroku-like servers `tests/run.sh` starts.

mod support;

mod discover;
mod errors;
mod faults;
mod resume_races;
mod sync;
mod types;
