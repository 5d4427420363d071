//! A real SMTP server for tests: speaks enough RFC 5321 for lettre, records what it
//! accepts, and can be scripted to answer the end of DATA with failures or to hang.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        // Folded lines (RFC 5322 2.2.3) unfolded first.
        let head = self.data.split("\r\n\r\n").next().unwrap_or("").replace("\r\n ", " ").replace("\r\n\t", " ");
        let prefix = format!("{}:", name.to_ascii_lowercase());
        head.split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Answer the end of DATA with this code.
    Code(u16),
    /// Never answer the end of DATA (until `release`).
    Hang,
    /// Wait this long, then accept.
    Slow(std::time::Duration),
}

#[derive(Default)]
struct Inner {
    accepted: Vec<Mail>,
    script: VecDeque<Reply>,
    data_ends: usize,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    release: Arc<Notify>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// On a given port (a relay that comes back where it was).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = SmtpSink { addr, inner: Default::default(), release: Arc::new(Notify::new()) };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(stream).await;
                });
            }
        });
        sink
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Replies for the next ends of DATA, in order; afterwards 250.
    pub fn script(&self, replies: &[Reply]) {
        self.inner.lock().unwrap().script.extend(replies.iter().copied());
    }

    pub fn release_hung(&self) {
        self.release.notify_waiters();
    }

    pub fn accepted(&self) -> Vec<Mail> {
        self.inner.lock().unwrap().accepted.clone()
    }

    /// How many messages were accepted (cheap; no copies).
    pub fn accepted_count(&self) -> usize {
        self.inner.lock().unwrap().accepted.len()
    }

    /// How many messages were fully transmitted (whatever the reply).
    pub fn data_ends(&self) -> usize {
        self.inner.lock().unwrap().data_ends
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 sink.test ESMTP ready\r\n").await?;
        let (mut from, mut rcpt) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                w.write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?;
            } else if upper.starts_with("HELO") {
                w.write_all(b"250 sink.test\r\n").await?;
            } else if upper.starts_with("MAIL FROM:") {
                from = cmd[10..].trim().to_owned();
                rcpt.clear();
                w.write_all(b"250 2.1.0 ok\r\n").await?;
            } else if upper.starts_with("RCPT TO:") {
                rcpt.push(cmd[8..].trim().trim_start_matches('<').trim_end_matches('>').to_owned());
                w.write_all(b"250 2.1.5 ok\r\n").await?;
            } else if upper == "DATA" {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                let reply = {
                    let mut inner = self.inner.lock().unwrap();
                    inner.data_ends += 1;
                    inner.script.pop_front().unwrap_or(Reply::Code(250))
                };
                let reply = match reply {
                    Reply::Slow(d) => {
                        tokio::time::sleep(d).await;
                        Reply::Code(250)
                    }
                    other => other,
                };
                match reply {
                    Reply::Slow(_) => unreachable!(),
                    Reply::Hang => {
                        self.release.notified().await;
                        return Ok(());
                    }
                    Reply::Code(250) => {
                        self.inner.lock().unwrap().accepted.push(Mail {
                            mail_from: from.clone(),
                            rcpt_to: rcpt.clone(),
                            data,
                        });
                        w.write_all(b"250 2.0.0 queued as sink\r\n").await?;
                    }
                    Reply::Code(c) if c >= 500 => {
                        w.write_all(format!("{c} 5.1.1 mailbox unavailable\r\n").as_bytes()).await?
                    }
                    Reply::Code(c) => w.write_all(format!("{c} 4.3.0 try again later\r\n").as_bytes()).await?,
                }
            } else if upper == "RSET" || upper == "NOOP" {
                w.write_all(b"250 2.0.0 ok\r\n").await?;
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                w.write_all(b"502 5.5.2 command not recognized\r\n").await?;
            }
        }
    }
}
