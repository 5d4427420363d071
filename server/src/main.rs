//! `herald`: the one binary. `serve` runs the API, the console and the dispatchers;
//! `migrate` applies migrations; `api-key` manages API keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_core::config::{Config, Roles, Settings};
use herald_core::{apikeys, db};
use herald_server::{shutdown_signal, Application};

#[derive(Parser)]
#[command(name = "herald", version, about = "Herald, a self-hosted notification service")]
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("HERALD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
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
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { roles } => {
            let mut config = Config::from_settings(&settings)?;
            if let Some(r) = roles {
                config.roles = Roles::parse(&r).map_err(|m| anyhow::anyhow!("--roles: {m}"))?;
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
