//! Virtual folders: storage a keypair owns, shares with other users' keys through
//! invitations, and mounts into its sessions.
//!
//! The database says who may do what ([`Access`]); the files live on disk under
//! `vfolder.root`, at `<root>/<host>/<id hex>` ([`files`]). An owner has the `wd`
//! permission; a share has the permission of the invitation it came from. Folders a key
//! cannot see answer 404 `folder-not-found`, whatever the reason, so a key learns
//! nothing about another key's folders.

pub mod files;
pub mod invitations;

use chrono::Utc;
use entity::vfolder_permissions::{self, Permission};
use entity::{kernels, vfolder_attachment, vfolders};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    RelationTrait, Set,
};
use uuid::Uuid;

use crate::config::Settings;
use crate::error::{ApiError, Error, Problem};

/// A folder as one key sees it.
#[derive(Debug, Clone)]
pub struct Access {
    /// The folder's row.
    pub folder: vfolders::Model,
    /// Whether the key owns it.
    pub is_owner: bool,
    /// What the key may do with it.
    pub permission: Permission,
}

/// Longest folder name.
pub const MAX_NAME: usize = 64;

/// Checks a folder name: 1 to 64 of `[a-zA-Z0-9._-]`, starting and ending with a
/// letter or digit.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let inner_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let ends_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if name.len() > MAX_NAME || !inner_ok || !ends_ok {
        let shown: String = name.chars().take(MAX_NAME).collect();
        return Err(ApiError::new(Problem::InvalidApiParams).with_detail(format!(
            "invalid folder name {shown:?}: 1 to {MAX_NAME} letters, digits, '.', '_' or '-', \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Parses a permission name.
pub fn parse_permission(name: &str) -> Result<Permission, ApiError> {
    match name {
        "ro" => Ok(Permission::Ro),
        "rw" => Ok(Permission::Rw),
        "wd" => Ok(Permission::Wd),
        other => {
            let shown: String = other.chars().take(16).collect();
            Err(ApiError::new(Problem::InvalidApiParams)
                .with_detail(format!("unknown permission {shown:?} (ro, rw or wd)")))
        }
    }
}

/// Every folder `access_key` owns or was given, owned first, each by name.
pub async fn visible(db: &impl ConnectionTrait, access_key: &str) -> Result<Vec<Access>, Error> {
    let owned = vfolders::Entity::find()
        .filter(vfolders::Column::BelongsTo.eq(access_key))
        .order_by_asc(vfolders::Column::Name)
        .all(db)
        .await?;
    let shared = vfolders::Entity::find()
        .join(JoinType::InnerJoin, vfolder_permissions::Relation::Vfolder.def().rev())
        .filter(vfolder_permissions::Column::AccessKey.eq(access_key))
        .select_also(vfolder_permissions::Entity)
        .order_by_asc(vfolders::Column::Name)
        .all(db)
        .await?;
    let mut out: Vec<Access> =
        owned.into_iter().map(|folder| Access { folder, is_owner: true, permission: Permission::Wd }).collect();
    out.extend(shared.into_iter().filter_map(|(folder, share)| {
        let share = share?;
        (folder.belongs_to != access_key).then_some(Access { folder, is_owner: false, permission: share.permission })
    }));
    Ok(out)
}

/// The folder `name` as `access_key` sees it: its own first, then one shared with it.
pub async fn find(db: &impl ConnectionTrait, access_key: &str, name: &str) -> Result<Access, Error> {
    validate_name(name).map_err(|_| ApiError::new(Problem::FolderNotFound))?;
    let owned = vfolders::Entity::find()
        .filter(vfolders::Column::BelongsTo.eq(access_key))
        .filter(vfolders::Column::Name.eq(name))
        .one(db)
        .await?;
    if let Some(folder) = owned {
        return Ok(Access { folder, is_owner: true, permission: Permission::Wd });
    }
    let shared = vfolders::Entity::find()
        .join(JoinType::InnerJoin, vfolder_permissions::Relation::Vfolder.def().rev())
        .filter(vfolder_permissions::Column::AccessKey.eq(access_key))
        .filter(vfolders::Column::Name.eq(name))
        .select_also(vfolder_permissions::Entity)
        .one(db)
        .await?;
    match shared {
        Some((folder, Some(share))) => Ok(Access { folder, is_owner: false, permission: share.permission }),
        _ => Err(ApiError::new(Problem::FolderNotFound).into()),
    }
}

/// The folder `name` if `access_key` has at least `least` on it (owners have every
/// permission); 404 otherwise, as for a folder it cannot see.
pub async fn require(
    db: &impl ConnectionTrait,
    access_key: &str,
    name: &str,
    least: Permission,
) -> Result<Access, Error> {
    let access = find(db, access_key, name).await?;
    if access.permission < least {
        return Err(ApiError::new(Problem::FolderNotFound).into());
    }
    Ok(access)
}

/// The folder `name` if `access_key` owns it; 404 otherwise.
pub async fn require_owner(db: &impl ConnectionTrait, access_key: &str, name: &str) -> Result<Access, Error> {
    let access = find(db, access_key, name).await?;
    if !access.is_owner {
        return Err(ApiError::new(Problem::FolderNotFound).into());
    }
    Ok(access)
}

/// Whether `access_key` already sees a folder called `name`.
pub async fn name_taken(db: &impl ConnectionTrait, access_key: &str, name: &str) -> Result<bool, Error> {
    match find(db, access_key, name).await {
        Ok(_) => Ok(true),
        Err(Error::Api(e)) if e.problem == Problem::FolderNotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the folder `name` of `access_key`, on disk and in the database.
pub async fn create(
    db: &DatabaseConnection,
    settings: &Settings,
    access_key: &str,
    name: &str,
) -> Result<vfolders::Model, Error> {
    validate_name(name)?;
    if name_taken(db, access_key, name).await? {
        return Err(ApiError::new(Problem::FolderAlreadyExists).into());
    }
    let folder = vfolders::Model {
        id: Uuid::new_v4(),
        host: settings.vfolder.host.clone(),
        name: name.to_owned(),
        max_files: settings.vfolder.max_files,
        max_size: settings.vfolder.max_size,
        num_files: 0,
        cur_size: 0,
        created_at: Utc::now().fixed_offset(),
        last_used: None,
        belongs_to: access_key.to_owned(),
    };
    files::make_dir(settings, &folder).await?;
    let row = vfolders::ActiveModel {
        id: Set(folder.id),
        host: Set(folder.host.clone()),
        name: Set(folder.name.clone()),
        max_files: Set(folder.max_files),
        max_size: Set(folder.max_size),
        num_files: Set(0),
        cur_size: Set(0),
        created_at: Set(folder.created_at),
        last_used: Set(None),
        belongs_to: Set(folder.belongs_to.clone()),
    };
    if let Err(error) = vfolders::Entity::insert(row).exec(db).await {
        // Two creates of one name at once: the unique index decides.
        files::remove_dir(settings, &folder).await;
        if name_taken(db, access_key, name).await.unwrap_or(false) {
            return Err(ApiError::new(Problem::FolderAlreadyExists).into());
        }
        return Err(error.into());
    }
    Ok(folder)
}

/// The live sessions that mount `folder`.
pub async fn mounted_by(db: &impl ConnectionTrait, folder: Uuid) -> Result<Vec<String>, Error> {
    let rows = kernels::Entity::find()
        .join(JoinType::InnerJoin, vfolder_attachment::Relation::Kernel.def().rev())
        .filter(vfolder_attachment::Column::Vfolder.eq(folder))
        .filter(kernels::Column::Status.is_not_in(kernels::KernelStatus::ENDED))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|k| k.sess_id).collect())
}

/// Deletes the folder `name` of its owner `access_key`: its files, then its row. A folder
/// mounted by a live session is refused (the session would lose its files under it).
pub async fn delete(db: &DatabaseConnection, settings: &Settings, access_key: &str, name: &str) -> Result<(), Error> {
    let access = require_owner(db, access_key, name).await?;
    let users = mounted_by(db, access.folder.id).await?;
    if let Some(first) = users.first() {
        return Err(ApiError::new(Problem::InvalidApiParams)
            .with_detail(format!("the folder is mounted by the running session {first:?}: terminate it first"))
            .into());
    }
    vfolders::Entity::delete_by_id(access.folder.id).exec(db).await?;
    files::remove_dir(settings, &access.folder).await;
    Ok(())
}

/// What a session mounts: the folders named in a create, checked against the key.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The folder.
    pub folder: vfolders::Model,
    /// Mounted read-only (a `ro` share).
    pub read_only: bool,
}

/// Resolves the folder names of a create (duplicates dropped); an unknown name is 404.
pub async fn mounts(db: &impl ConnectionTrait, access_key: &str, names: &[String]) -> Result<Vec<Mount>, Error> {
    let mut out: Vec<Mount> = Vec::new();
    for name in names {
        if out.iter().any(|m| &m.folder.name == name) {
            continue;
        }
        let access = find(db, access_key, name).await.map_err(|e| match e {
            Error::Api(e) if e.problem == Problem::FolderNotFound => {
                let shown: String = name.chars().take(MAX_NAME).collect();
                Error::Api(ApiError::new(Problem::FolderNotFound).with_detail(shown))
            }
            e => e,
        })?;
        out.push(Mount { read_only: access.permission == Permission::Ro, folder: access.folder });
    }
    Ok(out)
}

/// Records that `kernel` mounts `mounts` (so a delete of those folders is refused while it
/// lives) and when they were last used.
pub async fn attach(db: &impl ConnectionTrait, kernel: Uuid, mounts: &[Mount]) -> Result<(), Error> {
    if mounts.is_empty() {
        return Ok(());
    }
    let rows =
        mounts.iter().map(|m| vfolder_attachment::ActiveModel { vfolder: Set(m.folder.id), kernel: Set(kernel) });
    vfolder_attachment::Entity::insert_many(rows).on_conflict_do_nothing().exec(db).await?;
    let ids: Vec<Uuid> = mounts.iter().map(|m| m.folder.id).collect();
    vfolders::Entity::update_many()
        .col_expr(vfolders::Column::LastUsed, sea_orm::sea_query::Expr::value(Utc::now().fixed_offset()))
        .filter(vfolders::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(())
}

/// `str(datetime)` of Python, as the reference answers dates: `2018-11-20 04:05:06.123456+00:00`.
pub fn python_datetime(at: &sea_orm::prelude::DateTimeWithTimeZone) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string()
}
