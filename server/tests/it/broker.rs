//! The Kafka-protocol broker the tests start (`nisshi`), shared with the soak.

pub use herald_testkit::broker::Broker;
