//! The keypair mutations of the admin schema. Refusals a client can act on (no
//! such key, a key with sessions) answer `ok: false` with a message, as 1.0.x
//! did; only server failures are GraphQL errors.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use chrono::Utc;
use entity::{kernels, keypairs};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, Set, SqlErr};

use super::types::KeyPair;
use super::{internal, GqlContext};
use crate::actors::keypair;
use crate::auth::generate_keypair;

/// Defaults of a new keypair for the props left null.
const DEFAULT_CONCURRENCY_LIMIT: i32 = 1;
const DEFAULT_RATE_LIMIT: i32 = 1000;

/// The longest idle timeout or session lifetime a key may have: 30 days.
const MAX_LIMIT_SECS: i32 = 30 * 24 * 3600;

/// The settable properties of a keypair; null fields are left unchanged (or
/// take their default on creation).
#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case")]
pub struct KeyPairInput {
    /// Inactive keys are refused by the gateway.
    pub is_active: Option<bool>,
    /// Admin keys get the admin schema (default false).
    pub is_admin: Option<bool>,
    /// Name of the resource policy.
    pub resource_policy: Option<String>,
    /// How many live sessions the key may own at once (0 or more).
    pub concurrency_limit: Option<i32>,
    /// Requests allowed per 15-minute window (0 or more).
    pub rate_limit: Option<i32>,
    /// Seconds a session may go unused before it is reclaimed (0: never; at most 30 days).
    pub idle_timeout: Option<i32>,
    /// Seconds a session may run at all, from RUNNING (0: no limit; at most 30 days).
    pub max_session_lifetime: Option<i32>,
}

impl KeyPairInput {
    /// Why the props are unacceptable, if they are.
    fn invalid(&self) -> Option<&'static str> {
        if self.concurrency_limit.is_some_and(|v| v < 0) {
            Some("concurrency_limit must not be negative")
        } else if self.rate_limit.is_some_and(|v| v < 0) {
            Some("rate_limit must not be negative")
        } else if self.idle_timeout.is_some_and(|v| !(0..=MAX_LIMIT_SECS).contains(&v)) {
            Some("idle_timeout must be 0 to 2592000 seconds")
        } else if self.max_session_lifetime.is_some_and(|v| !(0..=MAX_LIMIT_SECS).contains(&v)) {
            Some("max_session_lifetime must be 0 to 2592000 seconds")
        } else {
            None
        }
    }

    /// The columns to set, for the non-null fields.
    fn changes(&self) -> Vec<(keypairs::Column, SimpleExpr)> {
        let mut changes = Vec::new();
        if let Some(v) = self.is_active {
            changes.push((keypairs::Column::IsActive, Expr::value(v)));
        }
        if let Some(v) = self.is_admin {
            changes.push((keypairs::Column::IsAdmin, Expr::value(v)));
        }
        if let Some(v) = &self.resource_policy {
            changes.push((keypairs::Column::ResourcePolicy, Expr::value(v.clone())));
        }
        if let Some(v) = self.concurrency_limit {
            changes.push((keypairs::Column::ConcurrencyLimit, Expr::value(v)));
        }
        if let Some(v) = self.rate_limit {
            changes.push((keypairs::Column::RateLimit, Expr::value(v)));
        }
        if let Some(v) = self.idle_timeout {
            changes.push((keypairs::Column::IdleTimeout, Expr::value(v)));
        }
        if let Some(v) = self.max_session_lifetime {
            changes.push((keypairs::Column::MaxSessionLifetime, Expr::value(v)));
        }
        changes
    }
}

/// The answer of `create_keypair`.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct CreateKeyPair {
    /// Whether the key was created.
    ok: bool,
    /// Why not, or what happened.
    msg: Option<String>,
    /// The new key, with its secret.
    keypair: Option<KeyPair>,
}

/// The answer of `modify_keypair`.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyKeyPair {
    /// Whether the key was changed.
    ok: bool,
    /// Why not, or what happened.
    msg: Option<String>,
}

/// The answer of `delete_keypair`.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct DeleteKeyPair {
    /// Whether the key was deleted.
    ok: bool,
    /// Why not, or what happened.
    msg: Option<String>,
}

fn refused<T: From<(bool, Option<String>)>>(msg: impl Into<String>) -> T {
    T::from((false, Some(msg.into())))
}

impl From<(bool, Option<String>)> for ModifyKeyPair {
    fn from((ok, msg): (bool, Option<String>)) -> Self {
        Self { ok, msg }
    }
}

impl From<(bool, Option<String>)> for DeleteKeyPair {
    fn from((ok, msg): (bool, Option<String>)) -> Self {
        Self { ok, msg }
    }
}

impl From<(bool, Option<String>)> for CreateKeyPair {
    fn from((ok, msg): (bool, Option<String>)) -> Self {
        Self { ok, msg, keypair: None }
    }
}

fn is_foreign_key_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}

/// Mutations for admin keys.
pub struct AdminMutation;

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl AdminMutation {
    /// Creates a keypair for a user; the server generates the access key
    /// (`AKIA` + 16 base32 characters) and a URL-safe secret key.
    async fn create_keypair(&self, ctx: &Context<'_>, user_id: String, props: KeyPairInput) -> Result<CreateKeyPair> {
        if let Some(why) = props.invalid() {
            return Ok(refused(why));
        }
        let (access_key, secret_key) = generate_keypair();
        let row = keypairs::ActiveModel {
            access_key: Set(access_key),
            user_id: Set(user_id),
            secret_key: Set(secret_key),
            is_active: Set(props.is_active.unwrap_or(true)),
            is_admin: Set(props.is_admin.unwrap_or(false)),
            resource_policy: Set(props.resource_policy),
            created_at: Set(Utc::now().fixed_offset()),
            last_used: Set(None),
            concurrency_limit: Set(props.concurrency_limit.unwrap_or(DEFAULT_CONCURRENCY_LIMIT)),
            concurrency_used: Set(0),
            rate_limit: Set(props.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT)),
            num_queries: Set(0),
            idle_timeout: Set(props.idle_timeout.unwrap_or(0)),
            max_session_lifetime: Set(props.max_session_lifetime.unwrap_or(0)),
        };
        let row = row.insert(&ctx.data::<GqlContext>()?.db).await.map_err(internal)?;
        Ok(CreateKeyPair { ok: true, msg: None, keypair: Some(KeyPair(row)) })
    }

    /// Changes the non-null properties of a keypair. A deactivated key is refused at
    /// once by this manager and by the others once their caches expire (2 seconds).
    async fn modify_keypair(
        &self,
        ctx: &Context<'_>,
        access_key: String,
        props: KeyPairInput,
    ) -> Result<ModifyKeyPair> {
        if let Some(why) = props.invalid() {
            return Ok(refused(why));
        }
        let context = ctx.data::<GqlContext>()?;
        let found = keypair::update_row(&context.db, &context.directory, &access_key, props.changes())
            .await
            .map_err(internal)?;
        if !found {
            return Ok(refused(format!("no such keypair: {access_key}")));
        }
        Ok(ModifyKeyPair { ok: true, msg: None })
    }

    /// Deletes a keypair and its virtual folders. Refused (ok = false) for the
    /// key that signs the request and for a key that owns sessions: their rows
    /// are kept for accounting, so such a key can only be deactivated.
    async fn delete_keypair(&self, ctx: &Context<'_>, access_key: String) -> Result<DeleteKeyPair> {
        let context = ctx.data::<GqlContext>()?;
        if context.caller.access_key == access_key {
            return Ok(refused("a keypair cannot delete itself"));
        }
        let sessions = kernels::Entity::find()
            .filter(kernels::Column::AccessKey.eq(access_key.clone()))
            .count(&context.db)
            .await
            .map_err(internal)?;
        if sessions > 0 {
            return Ok(refused(format!(
                "the keypair owns {sessions} compute session(s), kept for accounting; \
                 deactivate it with modify_keypair(props: {{is_active: false}}) instead"
            )));
        }
        match keypair::delete_row(&context.db, &context.directory, &access_key).await {
            Ok(true) => Ok(DeleteKeyPair { ok: true, msg: None }),
            Ok(false) => Ok(refused(format!("no such keypair: {access_key}"))),
            // A session was created with the key since the count.
            Err(error) if is_foreign_key_violation(&error) => {
                Ok(refused("the keypair owns compute sessions; deactivate it instead"))
            }
            Err(error) => Err(internal(error)),
        }
    }
}
