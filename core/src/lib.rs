//! Herald's notification pipeline, independent of the web console.
//!
//! `app` (Leptos) and `server` (the `herald` binary) depend on this crate; it never
//! depends on them. See ARCHITECTURE.md for the map.

pub mod access;
pub mod api;
pub mod apikeys;
pub mod audit;
pub mod auditing;
pub mod bus;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod db;
pub mod delivery_status;
pub mod dispatch;
pub mod dkim;
pub mod doctor;
pub mod email_feedback;
pub mod error;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod model;
pub mod notifications;
pub mod problem;
pub mod reference;
pub mod rekey;
pub mod relay_webhooks;
pub mod retention;
pub mod retry;
pub mod secrets;
pub mod smtp;
pub mod ssrf;
pub mod supervise;
pub mod suppressions;
pub mod templates;
pub mod tracking;
pub mod transform;
pub mod unsubscribe;
pub mod webhooks;
