//! A small stand-alone migration CLI: `migration up|down|status`, with the
//! database URL in `DATABASE_URL`. The manager's `schema` commands do the same.

use migration::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::Database;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let command = std::env::args().nth(1).unwrap_or_else(|| "status".to_owned());
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let db = Database::connect(&url).await?;
    match command.as_str() {
        "up" => Migrator::up(&db, None).await?,
        "down" => Migrator::down(&db, Some(1)).await?,
        "status" => Migrator::status(&db).await?,
        other => return Err(format!("unknown command {other:?}: use up, down or status").into()),
    }
    Ok(())
}
