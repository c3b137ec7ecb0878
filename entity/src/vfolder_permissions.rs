//! A virtual folder shared with another keypair, and how far that key may go.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What a key may do with a folder: each level includes the ones before it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(2))")]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read: list, info, download.
    #[sea_orm(string_value = "ro")]
    Ro,
    /// Read and write: also mkdir and upload.
    #[sea_orm(string_value = "rw")]
    Rw,
    /// Read, write and delete files (an owner's level).
    #[sea_orm(string_value = "wd")]
    Wd,
}

impl Permission {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ro => "ro",
            Self::Rw => "rw",
            Self::Wd => "wd",
        }
    }
}

/// One row of `vfolder_permissions`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "vfolder_permissions")]
pub struct Model {
    /// The shared folder.
    #[sea_orm(primary_key, auto_increment = false)]
    pub vfolder: Uuid,
    /// The key it is shared with.
    #[sea_orm(primary_key, auto_increment = false)]
    pub access_key: String,
    /// What that key may do.
    pub permission: Permission,
}

/// Relations of a permission.
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
}

impl Related<super::vfolders::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Vfolder.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
