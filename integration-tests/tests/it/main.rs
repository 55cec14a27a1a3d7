//! End-to-end tests against the real `fhir-hub` binary.
//!
//! Build it first (`cargo build -p fhir-hub`; `scripts/test.sh` does). Kafka tests use the
//! broker in `FHIR_HUB_TEST_KAFKA` (tansu, started by `scripts/test.sh`), PostgreSQL tests
//! the server in `FHIR_HUB_TEST_DATABASE_URL`; with `FHIR_HUB_REQUIRE_EXTERNAL=1` a missing
//! one fails instead of skipping.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod browser;
mod cli;
mod delivery;
mod disclosure;
mod embedded;
mod fan_out;
mod harness;
mod hostile_records;
mod housekeeping;
mod incarnations;
mod inferno;
mod kafka;
mod limits;
mod medplum;
mod mtls;
mod multi_process;
mod observability;
mod operations;
mod operator;
mod poison;
mod poison_bytes;
mod receiver;
mod security;
mod silent_listen;
mod stream_credentials;
mod stream_semantics;
mod stream_starts;
mod streams;
mod topics;
