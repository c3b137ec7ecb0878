//! `GET /v{N}/stream/kernel/{token}/events` (one session) and
//! `GET /v{N}/stream/events` (every session of the caller's key): lifecycle
//! events as Server-Sent Events. Each event carries its id; a client that
//! reconnects with `Last-Event-ID` gets every later event once, and nothing
//! before it, across manager restarts (events live in the database).

use std::collections::VecDeque;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use entity::{kernels, session_events};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::hub::Event;
use crate::error::{ApiError, Error, Problem};
use crate::middleware::Authenticated;
use crate::state::AppState;

/// A comment line is sent after this long without an event.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events sent from one database read while catching up.
const CATCH_UP_BATCH: u64 = 500;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/stream/events", web::get().to(key_events))
        .route("/stream/kernel/{token}/events", web::get().to(session_events));
}

#[derive(Deserialize)]
struct SessionPath {
    token: String,
}

#[derive(Deserialize)]
struct ResumeQuery {
    last_event_id: Option<String>,
}

/// Which events a stream shows.
#[derive(Clone)]
struct Filter {
    access_key: String,
    token: Option<String>,
}

impl Filter {
    /// The stored events this stream shows.
    fn select(&self) -> Select<session_events::Entity> {
        let mut select =
            session_events::Entity::find().filter(session_events::Column::AccessKey.eq(self.access_key.clone()));
        if let Some(token) = &self.token {
            select = select.filter(session_events::Column::SessId.eq(token.clone()));
        }
        select
    }

    fn matches(&self, event: &session_events::Model) -> bool {
        event.access_key == self.access_key && self.token.as_ref().is_none_or(|t| *t == event.sess_id)
    }
}

/// Where to resume: `Last-Event-ID` (or `?last_event_id=`), else from now on.
fn resume_point(req: &HttpRequest, query: &ResumeQuery) -> Result<Option<i64>, ApiError> {
    let header = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("invalid").to_owned());
    match header.or_else(|| query.last_event_id.clone()) {
        None => Ok(None),
        Some(id) => {
            id.trim().parse::<i64>().ok().filter(|id| *id >= 0).map(Some).ok_or_else(|| {
                ApiError::new(Problem::InvalidApiParams).with_detail("Last-Event-ID must be an event id")
            })
        }
    }
}

async fn key_events(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ResumeQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = Filter { access_key: auth.keypair.access_key.clone(), token: None };
    stream(&req, &state, filter, resume_point(&req, &query)?).await
}

async fn session_events(
    auth: Authenticated,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<SessionPath>,
    query: web::Query<ResumeQuery>,
) -> Result<HttpResponse, ApiError> {
    let access_key = auth.keypair.access_key.clone();
    let known = kernels::Entity::find()
        .filter(kernels::Column::AccessKey.eq(access_key.clone()))
        .filter(kernels::Column::SessId.eq(path.token.clone()))
        .one(&state.db)
        .await
        .map_err(Error::from)?;
    if known.is_none() {
        return Err(ApiError::new(Problem::KernelNotFound));
    }
    let filter = Filter { access_key, token: Some(path.token.clone()) };
    stream(&req, &state, filter, resume_point(&req, &query)?).await
}

/// The newest event id of the filter (streams without `Last-Event-ID` start after it).
async fn newest_id(db: &DatabaseConnection, filter: &Filter) -> Result<i64, Error> {
    Ok(filter.select().order_by_desc(session_events::Column::Id).one(db).await?.map(|e| e.id).unwrap_or(0))
}

async fn events_after(db: &DatabaseConnection, filter: &Filter, after: i64) -> Result<Vec<Event>, Error> {
    let events = filter
        .select()
        .filter(session_events::Column::Id.gt(after))
        .order_by_asc(session_events::Column::Id)
        .limit(CATCH_UP_BATCH)
        .all(db)
        .await?;
    Ok(events.into_iter().map(std::sync::Arc::new).collect())
}

fn encode(event: &session_events::Model) -> Bytes {
    let data = json!({
        "sessionId": event.sess_id,
        "kernelId": event.kernel_id,
        "event": event.name,
        "reason": event.reason,
        "createdAt": event.created_at.to_rfc3339(),
    });
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.name))
}

/// The state of one open stream.
struct Stream {
    db: DatabaseConnection,
    filter: Filter,
    /// Events read from the database, not sent yet.
    backlog: VecDeque<Event>,
    /// New events of this process's hub (subscribed before the first read, so
    /// nothing falls between the two).
    live: broadcast::Receiver<Event>,
    /// The newest id sent: nothing at or before it is sent again.
    sent: i64,
    /// Whether the backlog may have more events in the database.
    catching_up: bool,
}

impl Stream {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, actix_web::Error>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                if event.id > self.sent {
                    self.sent = event.id;
                    return Some(Ok(encode(&event)));
                }
                continue;
            }
            if self.catching_up {
                match events_after(&self.db, &self.filter, self.sent).await {
                    Ok(events) => {
                        self.catching_up = events.len() as u64 == CATCH_UP_BATCH;
                        self.backlog.extend(events);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "event stream: cannot read events");
                        return None;
                    }
                }
            }
            match tokio::time::timeout(KEEP_ALIVE, self.live.recv()).await {
                Err(_) => return Some(Ok(Bytes::from_static(b": keep-alive\n\n"))),
                Ok(Ok(event)) => {
                    if self.filter.matches(&event) {
                        self.backlog.push_back(event);
                    }
                }
                // Fell behind the hub: read what was missed from the database.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => self.catching_up = true,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }
}

async fn stream(
    req: &HttpRequest,
    state: &AppState,
    filter: Filter,
    resume_after: Option<i64>,
) -> Result<HttpResponse, ApiError> {
    let live = state.event_hub.subscribe();
    let sent = match resume_after {
        Some(id) => id,
        None => newest_id(&state.db, &filter).await?,
    };
    let stream = Stream { db: state.db.clone(), filter, backlog: VecDeque::new(), live, sent, catching_up: true };
    // Ends as soon as the client goes away, not at the next write.
    let peer = super::peer::PeerWatch::of(req);
    let body = futures_util::stream::unfold((stream, peer), |(mut stream, peer)| async move {
        let chunk = tokio::select! {
            () = peer.gone() => return None,
            chunk = stream.next_chunk() => chunk?,
        };
        Some((chunk, (stream, peer)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
