//! Integration tests: one binary, run against the Heroku-like servers `tests/run.sh` starts.

mod support;

mod check;
mod discover;
mod errors;
mod faults;
mod sync;
mod types;
