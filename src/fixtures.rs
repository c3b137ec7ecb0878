//! Fixtures: rows to populate a database with, shipped in `fixtures/` or read
//! from a file. The format is `{"<table>": [{row}, ...]}`.

use std::path::Path;

use chrono::Utc;
use entity::keypairs;
use sea_orm::sea_query::OnConflict;
use sea_orm::{DatabaseConnection, EntityTrait, Set};
use serde::Deserialize;

use crate::error::Error;

/// The fixtures built into the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[("example_keypair", include_str!("../fixtures/example_keypair.json"))];

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Rows of `keypairs`.
    #[serde(default)]
    pub keypairs: Vec<KeypairRow>,
}

/// A keypair in a fixture; omitted fields take the usual defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeypairRow {
    #[serde(deserialize_with = "user_id")]
    user_id: String,
    access_key: String,
    secret_key: String,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    resource_policy: Option<String>,
    #[serde(default = "one")]
    concurrency_limit: i32,
    #[serde(default)]
    concurrency_used: i32,
    #[serde(default = "thousand")]
    rate_limit: i32,
    #[serde(default)]
    num_queries: i64,
    #[serde(default)]
    idle_timeout: i32,
    #[serde(default)]
    max_session_lifetime: i32,
}

/// A user id: a string, or a number (as 1.0.x fixtures have them).
fn user_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(i64),
        Text(String),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Number(n) => n.to_string(),
        Id::Text(s) => s,
    })
}

fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}
fn thousand() -> i32 {
    1000
}

/// Reads a built-in fixture by name, or a fixture file by path.
pub fn load(name_or_path: &str) -> Result<Fixture, String> {
    let text = match BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
        Some((_, text)) => (*text).to_owned(),
        None => std::fs::read_to_string(Path::new(name_or_path))
            .map_err(|e| format!("no built-in fixture {name_or_path:?} and cannot read it as a file: {e}"))?,
    };
    serde_json::from_str(&text).map_err(|e| format!("malformed fixture {name_or_path:?}: {e}"))
}

/// Inserts the fixture's rows; rows whose key already exists are left alone.
/// Returns how many rows were inserted.
pub async fn populate(db: &DatabaseConnection, fixture: Fixture) -> Result<u64, Error> {
    if fixture.keypairs.is_empty() {
        return Ok(0);
    }
    let now = Utc::now().fixed_offset();
    let rows = fixture.keypairs.into_iter().map(|row| keypairs::ActiveModel {
        access_key: Set(row.access_key),
        user_id: Set(row.user_id),
        secret_key: Set(row.secret_key),
        is_active: Set(row.is_active),
        is_admin: Set(row.is_admin),
        resource_policy: Set(row.resource_policy),
        created_at: Set(now),
        last_used: Set(None),
        concurrency_limit: Set(row.concurrency_limit),
        concurrency_used: Set(row.concurrency_used),
        rate_limit: Set(row.rate_limit),
        num_queries: Set(row.num_queries),
        idle_timeout: Set(row.idle_timeout),
        max_session_lifetime: Set(row.max_session_lifetime),
    });
    let inserted = keypairs::Entity::insert_many(rows)
        .on_conflict(OnConflict::column(keypairs::Column::AccessKey).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(inserted)
}
