//! The `backendai-manager` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use figment::providers::Serialized;
use figment::Figment;
use serde_json::{json, Map, Value};

use crate::config::Settings;
use crate::startup::Application;
use crate::stores::{ConfigStore, EmbeddedConfigStore, EtcdConfigStore};
use crate::{db, fixtures, images, telemetry};

/// The Backend.AI manager: API gateway, scheduler and agent registry.
///
/// Settings come from defaults < the TOML file < BACKENDAI_<SECTION>__<KEY>
/// environment variables < these flags. Without database, etcd and Redis
/// addresses everything runs embedded under ./data.
#[derive(Debug, Parser)]
#[command(name = "backendai-manager", version)]
pub struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

/// Flags that override the configuration (the seed's server flags).
#[derive(Debug, Args)]
struct Overrides {
    /// The TOML configuration file (env: BACKENDAI_CONFIG) [default: none]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The cluster's namespace in the config store [default: local]
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// etcd v3 host:port [default: none, an in-process store]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    etcd_addr: Option<String>,
    /// Redis host:port [default: none, in-process stores]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    redis_addr: Option<String>,
    /// PostgreSQL host:port [default: none, the embedded SQLite file]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    db_addr: Option<String>,
    /// A full database URL, postgres:// or sqlite:// (wins over --db-addr) [default: none]
    #[arg(long, global = true, value_name = "URL")]
    db_url: Option<String>,
    /// The PostgreSQL database name [default: backend]
    #[arg(long, global = true)]
    db_name: Option<String>,
    /// The PostgreSQL user [default: postgres]
    #[arg(long, global = true)]
    db_user: Option<String>,
    /// The PostgreSQL password [default: empty]
    #[arg(long, global = true)]
    db_password: Option<String>,
    /// Where the embedded database and config store live [default: ./data]
    #[arg(long, global = true, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// The address the API gateway listens on [default: 127.0.0.1]
    #[arg(long, global = true, value_name = "IP")]
    service_ip: Option<String>,
    /// The port the API gateway listens on [default: 8080]
    #[arg(long, global = true)]
    service_port: Option<u16>,
    /// The port agents send events to [default: 5002]
    #[arg(long, global = true)]
    events_port: Option<u16>,
    /// PEM certificate chain for HTTPS [default: none]
    #[arg(long, global = true, value_name = "PATH")]
    ssl_cert: Option<PathBuf>,
    /// PEM private key for HTTPS [default: none]
    #[arg(long, global = true, value_name = "PATH")]
    ssl_key: Option<PathBuf>,
    /// Seconds without a heartbeat before an agent is lost [default: 5.0]
    #[arg(long, global = true, value_name = "SECONDS")]
    heartbeat_timeout: Option<f64>,
    /// The Docker registry of kernel images [default: lablup]
    #[arg(long, global = true)]
    docker_registry: Option<String>,
    /// Log level or tracing filter [default: info]
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format, text or json [default: text]
    #[arg(long, global = true)]
    log_format: Option<String>,
}

impl Overrides {
    /// The flags that were given, as a figment layer.
    fn figment(&self) -> Figment {
        let mut tree = Map::new();
        let mut set = |section: &str, key: &str, value: Option<Value>| {
            if let Some(value) = value {
                let entry = tree.entry(section.to_owned()).or_insert_with(|| json!({}));
                entry[key] = value;
            }
        };
        let string = |v: &Option<String>| v.as_ref().map(|s| json!(s));
        let path = |v: &Option<PathBuf>| v.as_ref().map(|p| json!(p));
        set("manager", "namespace", string(&self.namespace));
        set("etcd", "addr", string(&self.etcd_addr));
        set("redis", "addr", string(&self.redis_addr));
        set("db", "addr", string(&self.db_addr));
        set("db", "url", string(&self.db_url));
        set("db", "name", string(&self.db_name));
        set("db", "user", string(&self.db_user));
        set("db", "password", string(&self.db_password));
        set("db", "data_dir", path(&self.data_dir));
        set("manager", "service_ip", string(&self.service_ip));
        set("manager", "service_port", self.service_port.map(|v| json!(v)));
        set("manager", "events_port", self.events_port.map(|v| json!(v)));
        set("manager", "ssl_cert", path(&self.ssl_cert));
        set("manager", "ssl_key", path(&self.ssl_key));
        set("manager", "heartbeat_timeout", self.heartbeat_timeout.map(|v| json!(v)));
        set("manager", "docker_registry", string(&self.docker_registry));
        set("logging", "level", string(&self.log_level));
        set("logging", "format", string(&self.log_format));
        Figment::from(Serialized::defaults(Value::Object(tree)))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API gateway (and, embedded, a built-in agent).
    Serve,
    /// Manage the database schema.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Populate the database with fixtures.
    #[command(subcommand)]
    Fixture(FixtureCommand),
    /// Manage keypairs.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Read and write the config store (etcd, or the embedded store).
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Check that each agent's occupied slots and each key's session count match their
    /// live sessions, repair what drifted, and print what was found.
    Audit {
        /// Only report [default: false]
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Create every table in an empty database and record the schema version.
    Oneshot,
    /// Apply the pending migrations.
    Upgrade,
    /// Show which migrations are applied.
    Status,
}

#[derive(Debug, Subcommand)]
enum FixtureCommand {
    /// Insert a fixture's rows (existing keys are left alone).
    Populate {
        /// A built-in fixture name (see `fixture list`) or a JSON file.
        name: String,
    },
    /// List the built-in fixtures.
    List,
}

#[derive(Debug, Subcommand)]
enum KeypairCommand {
    /// Generate a new access key and secret key.
    Generate {
        /// Also store the keypair in the database, for this user id [default: print only]
        #[arg(long, value_name = "USER_ID")]
        save_for_user: Option<i32>,
        /// With --save-for-user: make it an admin key [default: false]
        #[arg(long)]
        admin: bool,
    },
    /// Change a key's session limits (its resource policy); unset flags are left as they are.
    SetLimits {
        /// The access key.
        access_key: String,
        /// Seconds a session may go unused before it is reclaimed; 0: never [default: unchanged]
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=2_592_000))]
        idle_timeout: Option<i32>,
        /// Seconds a session may run at all, from RUNNING; 0: no limit [default: unchanged]
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=2_592_000))]
        max_session_lifetime: Option<i32>,
        /// How many sessions (running and waiting) the key may have [default: unchanged]
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=1_000_000))]
        concurrency_limit: Option<i32>,
    },
}

#[derive(Debug, Subcommand)]
enum EtcdCommand {
    /// Set a key (relative to the namespace).
    Put {
        /// The key, e.g. config/overbook/cpu.
        key: String,
        /// The value.
        value: String,
    },
    /// Print a key's value, or every key under a prefix.
    Get {
        /// The key.
        key: String,
        /// Print every key starting with KEY [default: false]
        #[arg(long)]
        prefix: bool,
    },
    /// Delete a key, or every key under a prefix.
    Delete {
        /// The key.
        key: String,
        /// Delete every key starting with KEY [default: false]
        #[arg(long)]
        prefix: bool,
    },
    /// Load kernel image definitions from a TOML file (see fixtures/images.toml).
    UpdateImages {
        /// The file.
        file: PathBuf,
    },
    /// Load image aliases from a TOML file (see fixtures/aliases.toml).
    UpdateAliases {
        /// The file.
        file: PathBuf,
    },
}

/// Warns when the configuration file holds a secret (a cluster secret or a database
/// password) and users other than its owner may read it.
fn warn_if_secrets_are_exposed(file: Option<&std::path::Path>) {
    use std::os::unix::fs::PermissionsExt;
    let file = file.map(PathBuf::from).or_else(|| std::env::var_os("BACKENDAI_CONFIG").map(PathBuf::from));
    let Some(file) = file else { return };
    let (Ok(meta), Ok(text)) = (std::fs::metadata(&file), std::fs::read_to_string(&file)) else { return };
    let mode = meta.permissions().mode();
    let secret = text.parse::<toml::Table>().ok().is_some_and(|table| {
        let set = |section: &str, key: &str| {
            table.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str()).is_some_and(|v| !v.is_empty())
        };
        set("manager", "cluster_secret") || set("db", "password") || set("db", "url")
    });
    if secret && mode & 0o044 != 0 {
        tracing::warn!(
            file = %file.display(),
            mode = format!("{:o}", mode & 0o7777),
            "the configuration file holds secrets and other users can read it (chmod 600 it)"
        );
    }
}

/// Runs the command line; the process exits with the returned code
/// (2 for bad usage or configuration, 1 for other failures).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.overrides.config.as_deref(), cli.overrides.figment())
        .and_then(|s| s.validate().map(|()| s))
    {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("backendai-manager: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.logging);
    warn_if_secrets_are_exposed(cli.overrides.config.as_deref());
    let system = actix_web::rt::System::new();
    match system.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("backendai-manager: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            tracing::info!(
                ip = %settings.manager.service_ip,
                port = settings.manager.service_port,
                embedded_db = settings.db.is_embedded(),
                etcd = settings.etcd.addr.as_deref().unwrap_or("embedded"),
                redis = settings.redis.addr.as_deref().unwrap_or("embedded"),
                "starting the manager"
            );
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "serving the API");
            app.run_until_stopped().await
        }
        Command::Schema(command) => schema(command, &settings).await,
        Command::Fixture(FixtureCommand::List) => {
            for (name, _) in fixtures::BUILTIN {
                println!("{name}");
            }
            Ok(())
        }
        Command::Fixture(FixtureCommand::Populate { name }) => {
            let fixture = fixtures::load(&name).map_err(anyhow::Error::msg)?;
            let db = db::connect(&settings.db).await?;
            let inserted = fixtures::populate(&db, fixture).await?;
            println!("populated fixture {name:?}: {inserted} new rows");
            Ok(())
        }
        Command::Keypair(KeypairCommand::Generate { save_for_user, admin }) => {
            let (access_key, secret_key) = crate::auth::generate_keypair();
            if let Some(user_id) = save_for_user {
                let db = db::connect(&settings.db).await?;
                let row = json!({"keypairs": [{"user_id": user_id, "access_key": access_key,
                    "secret_key": secret_key, "is_admin": admin}]});
                let fixture = serde_json::from_value(row)?;
                fixtures::populate(&db, fixture).await?;
            }
            println!("access_key: {access_key}\nsecret_key: {secret_key}");
            Ok(())
        }
        Command::Keypair(KeypairCommand::SetLimits {
            access_key,
            idle_timeout,
            max_session_lifetime,
            concurrency_limit,
        }) => {
            use entity::keypairs::Column;
            use sea_orm::sea_query::Expr;
            let changes: Vec<_> = [
                (Column::IdleTimeout, idle_timeout),
                (Column::MaxSessionLifetime, max_session_lifetime),
                (Column::ConcurrencyLimit, concurrency_limit),
            ]
            .into_iter()
            .filter_map(|(column, value)| value.map(|v| (column, Expr::value(v))))
            .collect();
            let db = db::connect(&settings.db).await?;
            let directory = crate::actors::registry::Directory::default();
            if !crate::actors::keypair::update_row(&db, &directory, &access_key, changes).await? {
                anyhow::bail!("no such key: {access_key}");
            }
            println!("updated {access_key}");
            Ok(())
        }
        Command::Etcd(command) => etcd(command, &settings).await,
        Command::Audit { dry_run } => {
            let db = db::connect(&settings.db).await?;
            let drifts = crate::ledger::audit(&db, dry_run).await?;
            if drifts.is_empty() {
                println!("no drift: every agent's slots and every key's sessions match their live sessions");
            }
            for d in &drifts {
                let action = if d.repaired { "repaired" } else { "found" };
                println!(
                    "{action} {} {}: recorded cpu {} mem {} gpu {}, actual cpu {} mem {} gpu {}",
                    d.kind, d.id, d.recorded.0, d.recorded.1, d.recorded.2, d.actual.0, d.actual.1, d.actual.2
                );
            }
            Ok(())
        }
    }
}

async fn schema(command: SchemaCommand, settings: &Settings) -> anyhow::Result<()> {
    use migration::{Migrator, MigratorTrait};
    let db = db::connect(&settings.db).await?;
    match command {
        SchemaCommand::Oneshot => {
            let applied = Migrator::get_applied_migrations(&db).await?;
            if !applied.is_empty() {
                anyhow::bail!("the schema already exists ({} migrations applied); use `schema upgrade`", applied.len());
            }
            println!("Creating tables...");
            db::upgrade(&db).await?;
            let latest = Migrator::migrations().last().map(|m| m.name().to_owned()).unwrap_or_default();
            println!("Stamping schema version to {latest}");
        }
        SchemaCommand::Upgrade => {
            let pending = db::pending_migrations(&db).await?;
            db::upgrade(&db).await?;
            println!("applied {} migrations", pending.len());
        }
        SchemaCommand::Status => {
            let applied: Vec<String> =
                Migrator::get_applied_migrations(&db).await?.iter().map(|m| m.name().to_owned()).collect();
            for migration in Migrator::migrations() {
                let state = if applied.iter().any(|a| a == migration.name()) { "applied" } else { "pending" };
                println!("{state:8} {}", migration.name());
            }
        }
    }
    Ok(())
}

async fn etcd(command: EtcdCommand, settings: &Settings) -> anyhow::Result<()> {
    let store: Box<dyn ConfigStore> = match &settings.etcd.addr {
        Some(addr) => Box::new(EtcdConfigStore::connect(addr, &settings.manager.namespace).await?),
        None => Box::new(EmbeddedConfigStore::open(settings.db.data_dir.join("config-store.json"))?),
    };
    match command {
        EtcdCommand::Put { key, value } => {
            crate::scheduler::validate_setting(&key, &value).map_err(anyhow::Error::msg)?;
            store.put(&key, &value).await?
        }
        EtcdCommand::Get { key, prefix: false } => match store.get(&key).await? {
            Some(value) => println!("{value}"),
            None => anyhow::bail!("no such key: {key}"),
        },
        EtcdCommand::Get { key, prefix: true } => {
            for (key, value) in store.get_prefix(&key).await? {
                println!("{key}: {value}");
            }
        }
        EtcdCommand::Delete { key, prefix } => store.delete(&key, prefix).await?,
        EtcdCommand::UpdateImages { file } => {
            let pairs = images::image_pairs(&std::fs::read_to_string(&file)?).map_err(anyhow::Error::msg)?;
            store.put_many(&pairs).await?;
            println!("updated {} keys from {}", pairs.len(), file.display());
        }
        EtcdCommand::UpdateAliases { file } => {
            let pairs = images::alias_pairs(&std::fs::read_to_string(&file)?).map_err(anyhow::Error::msg)?;
            store.put_many(&pairs).await?;
            println!("updated {} aliases from {}", pairs.len(), file.display());
        }
    }
    Ok(())
}
