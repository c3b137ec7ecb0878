//! The relational database: connecting within a deadline, and the schema.

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
        std::fs::create_dir_all(&settings.data_dir)
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
        // `scheduler`), since a read lock cannot be upgraded while another
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
    }
    Ok(connection)
}

/// The migrations not applied yet, by name.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, Error> {
    Ok(Migrator::get_pending_migrations(db).await?.iter().map(|m| m.name().to_owned()).collect())
}

/// Applies every pending migration.
pub async fn upgrade(db: &DatabaseConnection) -> Result<(), Error> {
    Ok(Migrator::up(db, None).await?)
}
