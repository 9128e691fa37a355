//! Integration tests: one binary, run against the Heroku-like servers `tests/run.sh` starts.

mod support;

mod check;
mod client_certs;
mod discover;
mod errors;
mod faults_backend;
mod faults_drift;
mod faults_hostile;
mod faults_large_values;
mod faults_output;
mod faults_signals;
mod log_based;
mod network;
mod pgbouncer;
mod resume_races;
mod sync_bookmarks;
mod sync_incremental;
mod sync_messages;
mod sync_resume;
mod sync_storage_order;
mod types;
mod xmin;
