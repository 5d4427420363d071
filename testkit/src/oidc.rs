//! A real OpenID Connect provider for tests: `tools/oidc/provider.mjs` (panva's
//! oidc-provider, installed by scripts/test.sh with the other npm tools), one per test
//! on a free port, with Herald's redirect URI registered.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::free_port;

pub struct Provider {
    child: Child,
    pub issuer: String,
}

impl Provider {
    /// Starts the provider for a Herald whose public URL is `herald_url`, issuing API
    /// access tokens for `audience`.
    pub async fn start(herald_url: &str, audience: &str) -> Provider {
        Self::start_with_ttl(herald_url, audience, 3600).await
    }

    /// The same, with access tokens living `ttl_seconds`.
    pub async fn start_with_ttl(herald_url: &str, audience: &str, ttl_seconds: u64) -> Provider {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/oidc/provider.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .env("OIDC_PORT", port.to_string())
            .env("HERALD_PUBLIC_URL", herald_url)
            .env("OIDC_AUDIENCE", audience)
            .env("OIDC_ACCESS_TOKEN_TTL", ttl_seconds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tools/oidc/provider.mjs (scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("oidc provider ready") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "the OIDC provider did not start");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Provider { child, issuer: format!("http://127.0.0.1:{port}") }
    }

    /// An access token for the API client `acme-ci` (client credentials grant).
    pub async fn client_token(&self, scope: &str) -> String {
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("acme-ci", Some("acme-ci-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap_or_else(|| panic!("no access token: {r}")).to_owned()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
