//! `herald`: the one binary. `serve` runs the API, the console and the dispatchers;
//! `migrate` applies migrations; `api-key` manages API keys; `config` and `doctor`
//! check a deployment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_core::config::{Config, Roles, Settings};
use herald_core::{apikeys, db};
use herald_server::{shutdown_signal, Application};

// musl's allocator serialises threads on one lock; the static build uses mimalloc
// (measured in docs/operations.md).
#[cfg(all(target_env = "musl", not(feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("HERALD_COMMIT"), ", ", env!("HERALD_TARGET"), ")");

#[derive(Parser)]
#[command(name = "herald", version = VERSION, about = "Herald, a self-hosted notification service")]
struct Cli {
    /// Optional TOML file with settings named like the environment variables
    /// (`DATABASE_URL = "..."`); the environment wins over it.
    #[arg(long, global = true, env = "HERALD_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve the API, the console and the dispatchers.
    Serve {
        /// Comma-separated roles: api, relay, email, webhook (default: all; also HERALD_ROLES).
        #[arg(long)]
        roles: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// HERALD_SECRET_KEY.
    #[command(subcommand)]
    SecretKey(SecretKeyCommand),
    /// Check or describe the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Try every dependency the configuration names (database, bus, SMTP, identity
    /// provider) and report each with its latency or why it failed (exit status 1).
    Doctor,
    /// Exit 0 when this host's `herald serve` answers `/healthz` (for a container's
    /// HEALTHCHECK: the image has no shell or curl). Asks HERALD_LISTEN_ADDR, or --addr.
    Healthcheck {
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Subcommand)]
enum SecretKeyCommand {
    /// Move everything sealed under HERALD_SECRET_KEY to the key in HERALD_NEW_SECRET_KEY
    /// (endpoint signing secrets, custom headers, the audit chain), in one transaction.
    /// Stop every Herald process first; start them with the new key (and the old one as
    /// HERALD_PREVIOUS_SECRET_KEY, so tracking links already sent keep working).
    Rotate,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate every setting; print each with its value (secrets hidden) and source
    /// (default, file or environment); exit 1 naming each problem.
    Check,
    /// Print the reference of every setting as a Markdown table.
    Reference,
    /// Print a settings file with every setting commented out at its default.
    Template,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the keyed hash chain: prints OK with the entry count and head hash, or the
    /// first broken entry (exit status 1).
    Verify {
        /// Verify from a checkpoint line printed earlier by `herald audit checkpoint`
        /// (the line itself, or @FILE): its tag, its entry's hash, and every entry since.
        #[arg(long = "since-checkpoint", value_name = "LINE|@FILE")]
        since_checkpoint: Option<String>,
    },
    /// Verify the chain and print its head as a signed checkpoint line, to keep outside
    /// the database (a later `verify --since-checkpoint` then detects any rewrite or
    /// removal up to it).
    Checkpoint,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key; the key itself is printed alone on the last line, once.
    Create {
        #[arg(long)]
        name: String,
        /// notifications:write, notifications:read, endpoints:read, endpoints:write or
        /// admin; repeat for several.
        #[arg(long = "scope", default_values_t = ["notifications:write".to_owned(), "notifications:read".to_owned()])]
        scopes: Vec<String>,
        /// Owner subject (defaults to the key itself). Keys with the same owner share
        /// endpoints and notifications.
        #[arg(long)]
        owner: Option<String>,
        /// Where Herald writes to the owner, for example when it disables one of their
        /// webhook endpoints.
        #[arg(long)]
        owner_email: Option<String>,
        /// Requests per second this key may make (default HERALD_API_RATE_LIMIT; 0: no limit).
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Limits the key to notifications that reach only this owner's endpoints
        /// (repeat for several; default: any owner).
        #[arg(long = "address-owner")]
        address_owners: Vec<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let to_stdout = std::env::var("HERALD_LOG_OUTPUT").is_ok_and(|v| v.trim().eq_ignore_ascii_case("stdout"));
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        if to_stdout {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::stderr())
        }
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v.trim() == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// GET /healthz on `--addr` or the listen address the settings name (a wildcard address
/// is asked on loopback), within 3 s.
async fn healthcheck(addr: Option<String>, settings: &Settings) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock: std::net::SocketAddr = match addr {
        Some(a) => {
            a.trim().parse().map_err(|_| anyhow::anyhow!("--addr: '{a}' is not an address such as 127.0.0.1:3000"))?
        }
        None => settings.listen_addr()?,
    };
    if sock.ip().is_unspecified() {
        sock.set_ip(if sock.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(sock).await?;
        s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {sock}\r\n\r\n").as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{sock}: no answer within 3s"))?
        .map_err(|e| anyhow::anyhow!("{sock}: {e}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{sock}/healthz answered {status:?}");
    println!("healthy");
    Ok(())
}

fn hex_encode(bytes: Vec<u8>) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CLI as a caller of the domain (and the actor of audited changes): the OS user
/// running it, an operator holding the database's credentials.
fn cli_principal() -> herald_core::access::Principal {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    herald_core::access::Principal::cli(&user)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // What describes the settings needs none.
    match cli.command {
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", herald_core::reference::markdown_table());
            return Ok(());
        }
        Command::Config(ConfigCommand::Template) => {
            print!("{}", herald_core::reference::toml_template());
            return Ok(());
        }
        _ => {}
    }
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Healthcheck { addr } => healthcheck(addr, &settings).await,
        Command::Config(ConfigCommand::Check) => {
            let report = settings.check();
            if let Some(file) = &cli.config {
                println!("settings file: {}", file.display());
            }
            let width = report.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
            for (name, value, source) in &report.rows {
                println!("{name:width$}  {:<11}  {value}", source.as_str());
            }
            for w in &report.warnings {
                println!("warning: {w}");
            }
            if report.problems.is_empty() {
                println!("configuration OK");
                return Ok(());
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            anyhow::bail!("{} problem(s) in the configuration", report.problems.len());
        }
        Command::Config(_) => unreachable!("handled above"),
        Command::SecretKey(SecretKeyCommand::Rotate) => {
            let (old, new) = (settings.secret_key()?, settings.new_secret_key()?);
            let pool = db::connect(&settings.database_url()?, 2).await?;
            db::migrate(&pool).await?;
            let r = herald_core::rekey::rotate_secret_key(&pool, &cli_principal(), &old, &new).await?;
            println!(
                "rotated: {} endpoint secret(s) and {} header set(s) re-sealed; audit entry {} ends the old key's segment",
                r.endpoint_secrets, r.endpoint_headers, r.seq
            );
            if r.endpoint_auth > 0 {
                println!("also re-sealed: {} endpoint OAuth client secret(s)", r.endpoint_auth);
            }
            println!(
                "start Herald with HERALD_SECRET_KEY set to the new key, and HERALD_PREVIOUS_SECRET_KEY to the old one"
            );
            Ok(())
        }
        Command::Doctor => {
            let config = Config::from_settings(&settings)?;
            let checks = herald_core::doctor::run(&config).await;
            let mut failed = 0;
            for c in &checks {
                match &c.result {
                    Ok(detail) => {
                        println!("ok    {:<18} {} ({} ms): {detail}", c.name, c.target, c.latency.as_millis())
                    }
                    Err(why) => {
                        failed += 1;
                        println!("FAIL  {:<18} {} ({} ms): {why}", c.name, c.target, c.latency.as_millis())
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} dependencies failed", checks.len());
            }
            println!("all {} dependencies answer", checks.len());
            Ok(())
        }
        Command::Serve { roles } => {
            let mut config = Config::from_settings(&settings)?;
            if let Some(r) = roles {
                config.roles = Roles::parse(&r).map_err(|m| anyhow::anyhow!("--roles: {m}"))?;
                if config.roles.inbound && config.inbound_smtp_addr.is_none() {
                    if r.split(',').any(|p| p.trim() == "inbound") {
                        anyhow::bail!("--roles: the inbound role needs HERALD_INBOUND_SMTP_ADDR");
                    }
                    config.roles.inbound = false;
                }
            }
            Application::build(config).await?.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            let pool = db::connect(&settings.database_url()?, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Audit(cmd) => {
            use herald_core::audit::{self, Checkpoint, Verdict};
            let pool = db::connect(&settings.database_url()?, 2).await?;
            db::migrate(&pool).await?;
            audit::use_key(&settings.secret_key()?)?;
            let verdict = match cmd {
                AuditCommand::Verify { since_checkpoint: None } => audit::verify(&pool).await?,
                AuditCommand::Verify { since_checkpoint: Some(line) } => {
                    let line = match line.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path)
                            .map_err(|e| anyhow::anyhow!("--since-checkpoint: cannot read {path}: {e}"))?,
                        None => line,
                    };
                    let cp = Checkpoint::parse_signed(line.trim())
                        .map_err(|m| anyhow::anyhow!("--since-checkpoint: {m}"))?;
                    audit::verify_from(&pool, Some(&cp)).await?
                }
                AuditCommand::Checkpoint => match audit::checkpoint(&pool).await? {
                    Ok(Some(cp)) => {
                        println!("{}", cp.signed_line()?);
                        return Ok(());
                    }
                    Ok(None) => anyhow::bail!("the audit log is empty: there is no head to checkpoint"),
                    Err(broken) => broken,
                },
            };
            match verdict {
                Verdict::Intact { count, head, unkeyed } => {
                    let head = head.map(hex_encode).unwrap_or_else(|| "none".into());
                    let older = if unkeyed > 0 {
                        format!(" ({unkeyed} written before the chain was keyed, checked by SHA-256 only)")
                    } else {
                        String::new()
                    };
                    println!("OK: {count} entries, head {head}{older}");
                    Ok(())
                }
                Verdict::Broken { seq, reason } => anyhow::bail!("the audit log is broken at entry {seq}: {reason}"),
            }
        }
        Command::ApiKey(cmd) => {
            let pool = db::connect(&settings.database_url()?, 2).await?;
            db::migrate(&pool).await?;
            herald_core::audit::use_key(&settings.secret_key()?)?;
            match cmd {
                ApiKeyCommand::Create { name, scopes, owner, owner_email, rate_limit, address_owners } => {
                    let new = apikeys::NewKey {
                        name,
                        scopes,
                        owner,
                        rate_limit,
                        addressable_owners: (!address_owners.is_empty()).then_some(address_owners),
                    };
                    let k = apikeys::create(&pool, &cli_principal(), new, owner_email.as_deref(), 0).await?;
                    println!(
                        "created API key {} ({}) with scopes {} for owner {}",
                        k.info.id,
                        k.info.name,
                        k.info.scopes.join(","),
                        k.info.owner
                    );
                    println!("store it now; it is not shown again:");
                    println!("{}", k.secret);
                }
                ApiKeyCommand::List => {
                    println!(
                        "{:<36}  {:<20}  {:<12}  {:<8}  {:<30}  SCOPES",
                        "ID", "NAME", "PREFIX", "STATE", "LAST USED"
                    );
                    for k in apikeys::list(&pool, &cli_principal()).await? {
                        println!(
                            "{:<36}  {:<20}  {:<12}  {:<8}  {:<30}  {}",
                            k.id,
                            k.name,
                            k.prefix,
                            if k.revoked_at.is_some() { "revoked" } else { "active" },
                            k.last_used_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
                            k.scopes.join(",")
                        );
                    }
                }
                ApiKeyCommand::Revoke { id } => {
                    let id: uuid::Uuid =
                        id.parse().map_err(|_| anyhow::anyhow!("'{id}' is not an API key id (a UUID)"))?;
                    match apikeys::revoke(&pool, &cli_principal(), id).await {
                        Err(herald_core::error::Error::NotFound) => anyhow::bail!("no API key with id {id}"),
                        other => other?,
                    }
                    println!("revoked API key {id}");
                }
            }
            Ok(())
        }
    }
}
