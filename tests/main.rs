//! Integration tests: one binary, run against the Heroku-like servers `tests/run.sh` starts.

mod support;

mod check;
mod client_certs;
mod discover;
mod errors;
mod faults;
mod log_based;
mod network;
mod resume_races;
mod sync;
mod types;
mod xmin;
