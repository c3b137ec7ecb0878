//! The admin GraphQL API (`POST /v{N}/admin/graphql`): an admin schema and a
//! user schema over keypairs, agents, compute sessions and virtual folders, with
//! snake_case names as backend.ai-manager 1.0.x had them (graphene with
//! `auto_camelcase=False`).
//!
//! - Admin keys get [`AdminSchema`]: every query field takes the access key to
//!   look at, plus the keypair mutations.
//! - Other keys get [`UserSchema`]: its query fields take no access key at all
//!   and read the caller's own from the request context, so there is no way to
//!   name another key's data (asking with an `access_key` argument fails
//!   validation: an error, never the data).
//! - Every list is one database query per field, and nested lists go through
//!   the per-request [`loaders`], one batched query per field level.
//! - Depth and complexity are limited ([`MAX_DEPTH`], [`MAX_COMPLEXITY`]).

mod compat;
pub mod loaders;
mod mutation;
mod query;
mod types;

use std::sync::Arc;

use async_graphql::{EmptyMutation, EmptySubscription, ErrorExtensions, Schema};
use entity::keypairs;
use sea_orm::DatabaseConnection;

use crate::stores::StatStore;

pub use mutation::{AdminMutation, KeyPairInput};
pub use query::{AdminQuery, UserQuery};
pub use types::{Agent, ComputeSession, KeyPair, VirtualFolder};

/// The schema admin keys get.
pub type AdminSchema = Schema<AdminQuery, AdminMutation, EmptySubscription>;
/// The schema every other key gets.
pub type UserSchema = Schema<UserQuery, EmptyMutation, EmptySubscription>;

/// Deepest selection accepted (`keypairs { compute_sessions { workers { id } } }` is 4).
pub const MAX_DEPTH: usize = 6;
/// Highest complexity accepted: a field costs 1 and a list field costs
/// [`LIST_FACTOR`] times its selection, so nested lists grow fast.
pub const MAX_COMPLEXITY: usize = 1000;
/// How much more a list field costs than one object.
pub const LIST_FACTOR: usize = 5;

/// The error code (in `extensions.code`) of failures that are the server's fault.
pub const INTERNAL: &str = "INTERNAL_SERVER_ERROR";

/// Builds the admin schema.
pub fn admin_schema() -> AdminSchema {
    Schema::build(AdminQuery, AdminMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// Builds the user schema.
pub fn user_schema() -> UserSchema {
    Schema::build(UserQuery, EmptyMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// Both schemas, built once at start.
pub struct Schemas {
    /// For admin keys.
    pub admin: AdminSchema,
    /// For every other key.
    pub user: UserSchema,
}

impl Default for Schemas {
    fn default() -> Self {
        Self { admin: admin_schema(), user: user_schema() }
    }
}

/// What every resolver may read: who asks, and where the data lives.
#[derive(Clone)]
pub struct GqlContext {
    /// The database.
    pub db: DatabaseConnection,
    /// Live kernel stats.
    pub stats: Arc<dyn StatStore>,
    /// The key that signed the request.
    pub caller: Arc<keypairs::Model>,
    /// The running key actors of this process, whose caches a change drops.
    pub directory: Arc<crate::actors::registry::Directory>,
    /// What the actors share (the scheduler's view of the queue).
    pub core: Arc<crate::Core>,
}

/// Runs one operation for `context.caller` against the schema its key may use.
/// Fresh data loaders per request: nothing is cached across requests.
pub async fn execute(
    schemas: &Schemas,
    context: GqlContext,
    request: async_graphql::Request,
) -> async_graphql::Response {
    let request = compat::user_id_as_string(request);
    let request = loaders::attach(request, &context).data(context.clone());
    if context.caller.is_admin {
        schemas.admin.execute(request).await
    } else {
        schemas.user.execute(request).await
    }
}

/// A failure of the server (database, store): logged with its cause, answered
/// with an opaque message marked [`INTERNAL`].
pub fn internal(error: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!(error = %error, "admin GraphQL resolver failed");
    async_graphql::Error::new("internal server error").extend_with(|_, e| e.set("code", INTERNAL))
}

/// A mistake of the client, e.g. an unknown status name.
pub fn bad_request(message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", "BAD_REQUEST"))
}
