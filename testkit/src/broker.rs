//! A real Kafka-protocol broker for tests and the soak: `nisshi` (installed by
//! scripts/test.sh), one per test on free ports, in memory or with PostgreSQL storage.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::free_port;

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
}

impl Broker {
    /// A broker that keeps its log in memory.
    pub async fn memory() -> Broker {
        Self::start(free_port(), "memory://nisshi/".to_owned()).await
    }

    /// An in-memory broker on a given port.
    pub async fn on_port(port: u16) -> Broker {
        Self::start(port, "memory://nisshi/".to_owned()).await
    }

    /// A broker that keeps its log and group offsets in a PostgreSQL database.
    pub async fn durable(db_url: &str) -> Broker {
        let sep = if db_url.contains('?') { '&' } else { '?' };
        Self::start(free_port(), format!("{db_url}{sep}sslmode=disable")).await
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn start(port: u16, storage: String) -> Broker {
        let mut b = Broker { child: None, port, storage };
        b.restart().await;
        b
    }

    /// Starts the broker (again) on the same port and storage.
    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let bin = std::env::var("NISSHI").unwrap_or_else(|_| "nisshi".into());
        let child = Command::new(&bin)
            .args([
                "broker",
                "--storage-engine",
                &self.storage,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--group-initial-rebalance-delay", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the Kafka-protocol broker '{bin}' ({e}); run scripts/test.sh, which installs it")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for the broker to listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}
