//! Which virtual folder is mounted into which kernel.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of `vfolder_attachment`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "vfolder_attachment")]
pub struct Model {
    /// The mounted folder.
    #[sea_orm(primary_key, auto_increment = false)]
    pub vfolder: Uuid,
    /// The kernel it is mounted into.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kernel: Uuid,
}

/// Relations of an attachment.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The folder.
    #[sea_orm(
        belongs_to = "super::vfolders::Entity",
        from = "Column::Vfolder",
        to = "super::vfolders::Column::Id",
        on_delete = "Cascade"
    )]
    Vfolder,
    /// The kernel.
    #[sea_orm(
        belongs_to = "super::kernels::Entity",
        from = "Column::Kernel",
        to = "super::kernels::Column::Id",
        on_delete = "Cascade"
    )]
    Kernel,
}

impl Related<super::vfolders::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Vfolder.def()
    }
}

impl Related<super::kernels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Kernel.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
