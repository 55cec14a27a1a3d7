//! The `fhir-hub` service: configuration, the HTTP API, and the roles that make up the
//! pipeline (`api` ingests and manages subscriptions, `matcher` turns change events into
//! logged notifications, `delivery` sends them). One process can run every role, or a
//! cluster can run them apart, coordinated only through the event log and the store.
//!
//! What every role shares, the [`Hub`], lives in [`state`]; what starts what, [`run`], in
//! [`roles`] (the composition root): modules take the state they need from `state` and
//! never reach into the root. [`run`] is the entry point: the caller owns the listener and
//! the shutdown signal, so tests run the real server in-process on port 0.

pub mod api;
pub mod audit;
pub mod auth;
pub mod channels;
pub mod config;
pub mod data_lock;
pub mod delivery;
mod drain;
pub mod fhirpath_cmd;
pub mod health_cmd;
pub mod housekeeping;
pub mod listener;
pub mod match_cmd;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod retry;
pub mod roles;
pub mod state;
pub mod stdout;
pub mod telemetry;
pub mod tls;

pub use roles::run;
pub use state::{Hub, open_log};
