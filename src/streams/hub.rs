//! The event hub: one poller per manager process reads new session events from
//! the database (where every manager writes them) and broadcasts them, in id
//! order, to the streams of this process.
//!
//! Ids come from a sequence, so a transaction may commit a smaller id after a
//! larger one, and a rolled-back one leaves a hole. The poller delivers ids
//! without holes at once; at a hole it waits up to [`GAP_WAIT`] for the missing
//! id before skipping it, so that streams see every event once and in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::session_events;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::broadcast;

use crate::error::Error;

/// How often the database is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a hole in the ids may delay later events.
pub const GAP_WAIT: Duration = Duration::from_secs(2);
/// Most events read per poll; streams catching up read the database directly.
const BATCH: u64 = 500;
/// Events a slow stream may fall behind before it re-reads the database.
const CHANNEL_CAPACITY: usize = 1024;

/// A session event, shared by every stream that shows it.
pub type Event = Arc<session_events::Model>;

/// The broadcast side of the hub.
pub struct EventHub {
    sender: broadcast::Sender<Event>,
}

impl EventHub {
    /// Starts the poller from the newest event in the database; it stops when the
    /// hub is dropped.
    pub async fn start(db: DatabaseConnection) -> Result<Arc<Self>, Error> {
        let newest = session_events::Entity::find()
            .order_by_desc(session_events::Column::Id)
            .one(&db)
            .await?
            .map(|event| event.id)
            .unwrap_or(0);
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        let hub = Arc::new(Self { sender });
        let weak = Arc::downgrade(&hub);
        actix::spawn(async move {
            let mut cursor = Cursor { delivered: newest, gap_since: None };
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            loop {
                ticker.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                if let Err(error) = cursor.poll(&db, &hub.sender).await {
                    tracing::warn!(%error, "could not poll session events");
                }
            }
        });
        Ok(hub)
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

struct Cursor {
    /// The newest id delivered (or skipped as a hole).
    delivered: i64,
    /// Since when the next id is missing while later ones exist.
    gap_since: Option<Instant>,
}

impl Cursor {
    async fn poll(&mut self, db: &DatabaseConnection, sender: &broadcast::Sender<Event>) -> Result<(), Error> {
        let events = session_events::Entity::find()
            .filter(session_events::Column::Id.gt(self.delivered))
            .order_by_asc(session_events::Column::Id)
            .limit(BATCH)
            .all(db)
            .await?;
        for event in events {
            if event.id != self.delivered + 1 {
                let since = *self.gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() < GAP_WAIT {
                    return Ok(());
                }
                // A rolled-back transaction's id: it will never appear.
            }
            self.gap_since = None;
            self.delivered = event.id;
            // No receiver is fine: nobody is streaming.
            let _ = sender.send(Arc::new(event));
        }
        Ok(())
    }
}
