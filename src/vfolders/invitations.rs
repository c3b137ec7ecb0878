//! Sharing a folder: its owner invites users (by user id) with a permission; each
//! invitee accepts for one of its keys, or rejects. Invitations are addressed to users,
//! and only the invitee sees, accepts or rejects one: to anyone else it does not exist.

use chrono::Utc;
use entity::vfolder_invitations::{self, Permission};
use entity::{keypairs, vfolder_permissions, vfolders};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{find, name_taken, python_datetime, require_owner};
use crate::error::{ApiError, Error, Problem};

/// Most users one call may invite.
pub const MAX_INVITEES: usize = 64;

fn bad(detail: impl Into<String>) -> Error {
    ApiError::new(Problem::InvalidApiParams).with_detail(detail).into()
}

fn no_invitation() -> Error {
    ApiError::new(Problem::GenericNotFound).with_detail("No such invitation found.").into()
}

/// Invites `user_ids` to the folder `name` of `inviter` with `permission`; the ids
/// invited (users with a pending invitation to it already, and the owner, are skipped).
/// An unknown user id is refused, and nothing is sent.
pub async fn invite(
    db: &DatabaseConnection,
    inviter: &keypairs::Model,
    name: &str,
    permission: Permission,
    user_ids: &[String],
) -> Result<Vec<String>, Error> {
    let access = require_owner(db, &inviter.access_key, name).await?;
    if user_ids.is_empty() {
        return Err(bad("no user_ids given"));
    }
    if user_ids.len() > MAX_INVITEES {
        return Err(bad(format!("at most {MAX_INVITEES} users per invitation")));
    }
    let mut wanted: Vec<&String> = user_ids.iter().filter(|u| **u != inviter.user_id).collect();
    wanted.sort();
    wanted.dedup();
    let known: Vec<String> = keypairs::Entity::find()
        .filter(keypairs::Column::UserId.is_in(wanted.iter().map(|u| u.as_str())))
        .all(db)
        .await?
        .into_iter()
        .map(|k| k.user_id)
        .collect();
    if let Some(unknown) = wanted.iter().find(|u| !known.contains(u)) {
        let shown: String = unknown.chars().take(256).collect();
        return Err(bad(format!("no such user: {shown:?}")));
    }
    let txn = db.begin().await?;
    let pending: Vec<String> = vfolder_invitations::Entity::find()
        .filter(vfolder_invitations::Column::Vfolder.eq(access.folder.id))
        .filter(vfolder_invitations::Column::State.eq("pending"))
        .all(&txn)
        .await?
        .into_iter()
        .map(|i| i.invitee)
        .collect();
    let mut invited = Vec::new();
    for user in wanted {
        if pending.contains(user) {
            continue;
        }
        vfolder_invitations::ActiveModel {
            id: Set(Uuid::new_v4()),
            permission: Set(permission),
            inviter: Set(inviter.user_id.clone()),
            invitee: Set(user.clone()),
            state: Set("pending".into()),
            created_at: Set(Utc::now().fixed_offset()),
            vfolder: Set(access.folder.id),
        }
        .insert(&txn)
        .await?;
        invited.push(user.clone());
    }
    txn.commit().await?;
    Ok(invited)
}

/// The pending invitations to the user of `caller`.
pub async fn pending(db: &DatabaseConnection, caller: &keypairs::Model) -> Result<Vec<Value>, Error> {
    let rows = vfolder_invitations::Entity::find()
        .filter(vfolder_invitations::Column::Invitee.eq(&caller.user_id))
        .filter(vfolder_invitations::Column::State.eq("pending"))
        .find_also_related(vfolders::Entity)
        .order_by_asc(vfolder_invitations::Column::CreatedAt)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(inv, folder)| {
            json!({
                "id": inv.id.to_string(),
                "inviter": inv.inviter,
                "perm": inv.permission.as_str(),
                "state": inv.state,
                "created_at": python_datetime(&inv.created_at),
                "vfolder_id": inv.vfolder.to_string(),
                "vfolder_name": folder.map(|f| f.name),
            })
        })
        .collect())
}

/// A pending invitation to the user of `caller`; any other is 404.
async fn pending_for(
    db: &impl sea_orm::ConnectionTrait,
    caller: &keypairs::Model,
    id: &str,
) -> Result<vfolder_invitations::Model, Error> {
    let id = Uuid::parse_str(id).map_err(|_| no_invitation())?;
    let invitation = vfolder_invitations::Entity::find_by_id(id).one(db).await?.ok_or_else(no_invitation)?;
    if invitation.invitee != caller.user_id {
        return Err(no_invitation());
    }
    if invitation.state != "pending" {
        return Err(bad(format!("the invitation was already {}", invitation.state)));
    }
    Ok(invitation)
}

/// Accepts an invitation for the key `access_key` of the invited user: the key gets
/// the invitation's permission on the folder.
pub async fn accept(
    db: &DatabaseConnection,
    caller: &keypairs::Model,
    id: &str,
    access_key: &str,
) -> Result<String, Error> {
    let txn = db.begin().await?;
    let invitation = pending_for(&txn, caller, id).await?;
    let key = keypairs::Entity::find_by_id(access_key.to_owned()).one(&txn).await?;
    if key.is_none_or(|k| k.user_id != invitation.invitee) {
        return Err(bad("inv_ak must be an access key of the invited user"));
    }
    let folder = vfolders::Entity::find_by_id(invitation.vfolder).one(&txn).await?.ok_or_else(no_invitation)?;
    if folder.belongs_to == access_key {
        return Err(bad("the key owns the folder already"));
    }
    if name_taken(&txn, access_key, &folder.name).await? {
        // Shared with that key already, or it has a folder of that name.
        let already = find(&txn, access_key, &folder.name).await.is_ok_and(|a| a.folder.id == folder.id);
        if !already {
            return Err(ApiError::new(Problem::FolderAlreadyExists).into());
        }
        vfolder_permissions::Entity::delete_by_id((folder.id, access_key.to_owned())).exec(&txn).await?;
    }
    vfolder_permissions::ActiveModel {
        vfolder: Set(folder.id),
        access_key: Set(access_key.to_owned()),
        permission: Set(invitation.permission),
    }
    .insert(&txn)
    .await?;
    let mut row: vfolder_invitations::ActiveModel = invitation.into();
    row.state = Set("accepted".into());
    row.update(&txn).await?;
    txn.commit().await?;
    Ok(format!("Access key ({access_key} by {}) now can access vfolder {}.", caller.user_id, folder.id))
}

/// Rejects an invitation to the user of `caller`.
pub async fn reject(db: &DatabaseConnection, caller: &keypairs::Model, id: &str) -> Result<String, Error> {
    let invitation = pending_for(db, caller, id).await?;
    let id = invitation.id;
    let mut row: vfolder_invitations::ActiveModel = invitation.into();
    row.state = Set("rejected".into());
    row.update(db).await?;
    Ok(format!("Vfolder invitation is rejected: {id}."))
}
