//! Notifications: accepting one (validate, render, route, persist with its deliveries
//! and bus messages), and reading it back. Replaying a notification's webhooks is a
//! webhook operation (`webhooks::deliveries::replay_notification`).

pub mod accept;
pub mod read;
