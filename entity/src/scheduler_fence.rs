//! The scheduler's fencing token: the term of the latest manager that took the
//! scheduler's lease. Every placement checks, in its own transaction, that the token is
//! still the placing manager's, so a manager that lost the lease never places again.

use sea_orm::entity::prelude::*;

/// The one row of `scheduler_fence` (`id` 1).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scheduler_fence")]
pub struct Model {
    /// Always 1.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    /// The term of the current scheduler.
    pub token: i64,
}

/// The fence relates to nothing.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
