//! Real peers for Herald's integration tests and benchmark: an SMTP server that can be
//! scripted to fail, and fresh PostgreSQL databases. Not part of the product.

pub mod broker;
pub mod oidc;
pub mod receiver;
pub mod smtp;

use sqlx::PgPool;

/// Where the tests find PostgreSQL (`HERALD_TEST_PG`, default the local server).
pub fn admin_url() -> String {
    std::env::var("HERALD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&format!("{}/postgres", admin_url())).await.expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    format!("{}/{name}", admin_url())
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
