//! Integration tests: one binary (fast to link), real databases. Each test gets its own
//! PostgreSQL / MariaDB database (random name, dropped afterwards) or SQLite files in a
//! temporary folder.

mod api;
mod architecture;
mod browser;
mod hardening;
mod helpers;

mod incidents;

mod checksum;
mod cli;
mod console;
mod contract;
mod event_log;
mod faults;
mod incremental;
mod notify;
mod plans;
mod proxy;
mod reconcile;
mod replay;
mod replicas;
mod segments;
mod serve;
mod slo;
mod source_readonly;
mod store;
mod stream;
mod ticks;
mod trace;
