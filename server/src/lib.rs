//! The `herald` server as a library: [`Application`] is what `herald serve` runs, and
//! what tests can run in-process.

mod application;
pub mod assets;
pub mod http;

pub use application::{shutdown_signal, Application};
