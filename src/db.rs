//! The relational database: connecting within a deadline, and the schema.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

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
    if settings.is_embedded() || settings.connection_url().expose().starts_with("sqlite:") {
        // SQLite serializes writers anyway; one connection avoids "database is locked".
        options.max_connections(1).min_connections(1);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), Database::connect(options)).await {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(sea_orm::DbErr::Custom("the database did not answer in time".to_owned()).into()),
    }
}

/// The migrations not applied yet, by name.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, Error> {
    Ok(Migrator::get_pending_migrations(db).await?.iter().map(|m| m.name().to_owned()).collect())
}

/// Applies every pending migration.
pub async fn upgrade(db: &DatabaseConnection) -> Result<(), Error> {
    Ok(Migrator::up(db, None).await?)
}
