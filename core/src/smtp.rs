//! The SMTP connection pool (lettre): the email dispatcher sends through it, and
//! `/readyz` checks the server answers.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use crate::config::Config;

pub type Smtp = AsyncSmtpTransport<Tokio1Executor>;

pub fn transport(config: &Config) -> anyhow::Result<Smtp> {
    Ok(Smtp::from_url(&config.smtp_url)?
        .pool_config(PoolConfig::new().max_size(config.smtp_pool_size).idle_timeout(Duration::from_secs(30)))
        .timeout(Some(config.smtp_timeout))
        .build())
}
