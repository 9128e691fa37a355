//! Integration tests: one binary, run against the Heroku-like servers `tests/run.sh` starts.

mod support;

mod discover;
mod errors;
mod faults;
mod network;
mod sync;
mod types;
