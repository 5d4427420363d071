//! Integration tests: the real `herald` binary against a real PostgreSQL and a real
//! SMTP server, over HTTP. One test binary (see ARCHITECTURE.md, "Testing").

mod broker;
mod harness;

mod access;
mod audit;
mod bounces;
mod bus_contract;
mod catalog;
mod cli;
mod dkim;
mod endpoint_auth;
mod errors;
mod flow;
mod group;
mod hardening;
mod history;
mod in_process;
mod kafka_flow;
mod keys;
mod lane;
mod oidc;
mod openapi;
mod relay_hooks;
mod relays;
mod sql;
mod tracking;
mod transformations;
mod unsubscribe;
mod visibility;
mod webhooks;
