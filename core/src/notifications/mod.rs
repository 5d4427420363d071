//! Notifications: accepting one (validate, render, route, persist with its deliveries
//! and bus messages), reading it back, and the figures of the dashboard. Replaying a notification's webhooks is a
//! webhook operation (`webhooks::deliveries::replay_notification`).

pub mod accept;
pub mod read;
pub mod stats;
