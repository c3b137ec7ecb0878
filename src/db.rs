//! The relational database: connecting within a deadline, and the schema.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

use crate::config::DbSettings;
use crate::error::Error;

/// How long start-up waits for the database.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the configured database (creating the SQLite file's folder).
pub async fn connect(settings: &DbSettings) -> Result<DatabaseConnection, Error> {
    if settings.is_embedded() {
        private_dir(&settings.data_dir)
            .map_err(|e| sea_orm::DbErr::Custom(format!("cannot create {}: {e}", settings.data_dir.display())))?;
    }
    let mut options = ConnectOptions::new(settings.connection_url().expose().to_owned());
    options
        .max_connections(settings.max_connections)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT)
        .sqlx_logging(false);
    let sqlite = settings.connection_url().expose().starts_with("sqlite:");
    if sqlite {
        // A few connections; SQLite serializes writers (each waits up to sqlx's 5 s
        // busy timeout). Write transactions start with a write (see
        // `ledger`), since a read lock cannot be upgraded while another
        // connection writes.
        options.max_connections(settings.max_connections.clamp(1, 4));
    }
    let connection =
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), Database::connect(options)).await {
            Ok(connection) => connection?,
            Err(_) => return Err(sea_orm::DbErr::Custom("the database did not answer in time".to_owned()).into()),
        };
    if sqlite {
        // Persistent in the file: other processes (the CLI) read while serve writes.
        connection.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        // Every secret key is in these files: the owner's only.
        if let Some(file) = settings.connection_url().expose().strip_prefix("sqlite://") {
            let file = file.split('?').next().unwrap_or(file);
            for suffix in ["", "-wal", "-shm"] {
                let path = PathBuf::from(format!("{file}{suffix}"));
                if path.exists() {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| sea_orm::DbErr::Custom(format!("cannot restrict {}: {e}", path.display())))?;
                }
            }
        }
    }
    Ok(connection)
}

/// Creates `dir` (and its parents) readable by its owner only; an existing one that
/// others can read is left as it is, with a warning (it may be shared on purpose).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        // Search (x) for others is fine: the virtual folder root may be inside (see
        // `vfolders::files::prepare_root`), and nothing can be listed or read.
        if mode & 0o066 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o7777),
                "the data dir is open to other users; it holds secrets (chmod 700 it)"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The migrations not applied yet, by name.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, Error> {
    Ok(Migrator::get_pending_migrations(db).await?.iter().map(|m| m.name().to_owned()).collect())
}

/// Applies every pending migration.
pub async fn upgrade(db: &DatabaseConnection) -> Result<(), Error> {
    Ok(Migrator::up(db, None).await?)
}

/// Attempts of a transaction that lost a race (a deadlock or serialization failure).
const MAX_ATTEMPTS: u32 = 6;

/// Whether `error` is a transaction that lost a race with another and may simply be run
/// again: a serialization failure or deadlock on PostgreSQL (SQLSTATE 40001, 40P01),
/// a busy or locked database on SQLite.
pub fn is_retryable(error: &Error) -> bool {
    let Error::Db(error) = error else { return false };
    let runtime = match error {
        sea_orm::DbErr::Exec(e) | sea_orm::DbErr::Query(e) | sea_orm::DbErr::Conn(e) => e,
        _ => return false,
    };
    let sea_orm::RuntimeErr::SqlxError(sea_orm::sqlx::Error::Database(error)) = runtime else { return false };
    matches!(error.code().as_deref(), Some("40001" | "40P01" | "5" | "6" | "517" | "262"))
}

/// Whether `error` means the database cannot be reached (no connection could be made or
/// kept), as opposed to a failed statement: answered 503, not 500.
pub fn is_unavailable(error: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match error {
        sea_orm::DbErr::ConnectionAcquire(_) => return true,
        sea_orm::DbErr::Exec(e) | sea_orm::DbErr::Query(e) | sea_orm::DbErr::Conn(e) => e,
        _ => return false,
    };
    match runtime {
        sea_orm::RuntimeErr::SqlxError(error) => matches!(
            error,
            Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Protocol(_)
        ),
        _ => matches!(error, sea_orm::DbErr::Conn(_)),
    }
}

/// How often [`Reachability`] probes the database, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the database answers, probed in the background over a connection of its
/// own (so a busy pool is not taken for an outage). While it does not, the gateway
/// answers 503 at once instead of letting each request wait out the pool's timeout.
pub struct Reachability {
    down: std::sync::atomic::AtomicBool,
}

impl Reachability {
    /// Starts probing the database at `url` (until the returned value is dropped).
    pub fn start(url: &str) -> std::sync::Arc<Self> {
        let this = std::sync::Arc::new(Self { down: Default::default() });
        let watched = std::sync::Arc::downgrade(&this);
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(1)
            .min_connections(0)
            .connect_timeout(PROBE_TIMEOUT)
            .acquire_timeout(PROBE_TIMEOUT)
            .sqlx_logging(false);
        tokio::spawn(async move {
            let mut probe: Option<DatabaseConnection> = None;
            let mut ticks = tokio::time::interval(PROBE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(this) = watched.upgrade() else { return };
                let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
                    if probe.is_none() {
                        probe = Some(Database::connect(options.clone()).await?);
                    }
                    match &probe {
                        Some(connection) => connection.ping().await,
                        None => Ok(()),
                    }
                })
                .await;
                let up = matches!(answered, Ok(Ok(())));
                if !up {
                    // A fresh connection next time: this one may be half-open.
                    probe = None;
                }
                let was_down = this.down.swap(!up, std::sync::atomic::Ordering::Relaxed);
                match (was_down, up) {
                    (false, false) => tracing::warn!("the database does not answer; requests get 503 until it does"),
                    (true, true) => tracing::info!("the database answers again"),
                    _ => {}
                }
            }
        });
        this
    }

    /// Whether the latest probe failed.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `work` (a whole transaction) until it does not lose a race with another, at
/// most [`MAX_ATTEMPTS`] times, waiting a random few milliseconds in between. Every
/// transaction that locks keypairs, agents or kernels goes through here (see
/// `crate::ledger` for the lock order they share).
pub async fn retrying<T, F, Fut>(what: &'static str, mut work: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 1;
    loop {
        match work().await {
            Err(error) if attempt < MAX_ATTEMPTS && is_retryable(&error) => {
                tracing::debug!(what, attempt, %error, "a transaction lost a race; running it again");
                let pause = rand::random_range(1..=(5u64 << attempt));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}
