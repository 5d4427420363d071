//! Webhooks: endpoints owners register, their signing secrets, their deliveries, and
//! their lifecycle (test events, disabling). Every operation takes the caller's
//! [`Principal`](crate::apikeys::Principal) and scopes to its owner (an admin reaches
//! every owner's); another owner's endpoint is "not found".

pub mod deliveries;
pub mod endpoints;
pub mod lifecycle;
pub mod signing;
pub mod transformations;
