//! FHIR knowledge for the subscription hub, with no I/O.
//!
//! This crate is the pure core of the pipeline: it validates and builds
//! [change events](event::ChangeEvent) (the envelope that flows through the event log),
//! knows the official FHIR R4 search-parameter definitions ([registry]), parses
//! Subscription criteria ([criteria]) and decides whether a resource matches them.
//! It also renders [OperationOutcome](outcome::OperationOutcome)s, the one error shape every
//! API answer uses. Everything here is deterministic and cheap to test and fuzz; the I/O
//! crates (`hub-log`, `hub-store`) and the `fhir-hub` binary build on it.

pub mod bundle;
pub mod compartment;
pub mod criteria;
mod criteria_keys;
pub mod datetime;
pub mod decimal;
pub mod event;
pub mod index;
pub mod json;
pub mod notification;
pub mod outcome;
pub mod path;
pub mod projection;
pub mod raw_event;
pub mod registry;
pub mod resource_types;
pub mod subscription;
pub mod time_fmt;
pub mod topic;

pub use criteria::{Criteria, CriteriaError};
pub use event::{Action, ChangeEvent, EventError};
pub use outcome::{IssueType, OperationOutcome};
