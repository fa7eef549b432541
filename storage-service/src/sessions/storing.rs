//! Chunks sent ahead: a client may send a session's next chunk while the one before is
//! still on its way (the page does: sending one chunk and storing another then
//! overlap, where one at a time would alternate), and the two may reach different
//! replicas. The chunk ahead must not be refused for starting past the session's
//! offset; it needs its predecessor's part number, and it may commit only after it.
//!
//! The database coordinates them, so it works across replicas: every chunk being
//! stored is announced in `upload_chunks_storing` with the offset it ends at and the
//! part it takes. A chunk ahead finds its predecessor there (waiting a short grace for
//! it to arrive: both are sent at once, so either may be decoded first), stores itself
//! as the next part, and waits for the session to reach its offset. The waits poll the
//! database; a chunk of this process ending or announcing itself wakes them at once,
//! so a session served by one replica waits no longer than before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Session, SessionState, being_completed};
use crate::error::StorageError;
use crate::files::now_ms;
use crate::index::Index;
use crate::names::UploadId;

/// How long a chunk that arrived ahead of its predecessor waits for it to arrive. It
/// holds its memory meanwhile, and the predecessor may be waiting for memory: the wait
/// must end on its own, after which the chunk is refused and the client sends it again.
const PREDECESSOR_GRACE: Duration = Duration::from_secs(10);

/// How long an announcement stands. A chunk being stored needs nothing but storage to
/// finish; one whose replica died without withdrawing it stops being waited for then.
const ANNOUNCEMENT: Duration = Duration::from_secs(120);

/// How often a waiting chunk looks at the database for what another replica did.
const POLL: Duration = Duration::from_millis(20);

/// What a chunk ahead of the session's offset found.
pub enum Lookahead {
    /// Its predecessor is being stored as this part.
    Predecessor { part: u64 },
    /// The session reached the chunk's offset (or passed it) meanwhile.
    Reached(Session),
    /// No predecessor arrived within the grace.
    Missing(Session),
}

/// This process's side of the coordination: a wake-up for its own waiting chunks.
#[derive(Default)]
pub struct Storing {
    changed: Arc<Notify>,
}

impl Storing {
    /// Announces a chunk of `id` ending at `end`, taking part `part`, until the returned
    /// announcement commits or is dropped.
    pub async fn announce(
        &self,
        index: &Index,
        id: UploadId,
        end: u64,
        part: u64,
    ) -> Result<Announcement, StorageError> {
        let token = Uuid::new_v4().to_string();
        let expires_at = now_ms() + ANNOUNCEMENT.as_millis() as i64;
        index
            .announce_chunk(id, end, part, &token, expires_at)
            .await?;
        self.changed.notify_waiters();
        Ok(Announcement {
            changed: self.changed.clone(),
            index: index.clone(),
            id,
            end,
            token,
            committed: false,
        })
    }

    /// For a chunk starting at `offset`, past the session's end: its predecessor (the
    /// chunk ending at `offset`), waiting up to [`PREDECESSOR_GRACE`] for it to arrive.
    pub async fn predecessor(
        &self,
        index: &Index,
        user: Uuid,
        id: UploadId,
        offset: u64,
    ) -> Result<Lookahead, StorageError> {
        let deadline = Instant::now() + PREDECESSOR_GRACE;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // From here on no announcement of this process can slip by unnoticed.
            changed.as_mut().enable();
            if let Some(part) = index.chunk_storing(id, offset, now_ms()).await? {
                return Ok(Lookahead::Predecessor { part });
            }
            let session = open(index, user, id).await?;
            if session.received >= offset {
                return Ok(Lookahead::Reached(session));
            }
            if Instant::now() >= deadline {
                return Ok(Lookahead::Missing(session));
            }
            let pause = tokio::time::sleep_until(deadline.min(Instant::now() + POLL));
            tokio::select! {
                () = changed => {}
                () = pause => {}
            }
        }
    }

    /// Waits until the chunk ending at `offset` has ended, committed or not, and returns
    /// the session as it is then.
    pub async fn after_predecessor(
        &self,
        index: &Index,
        user: Uuid,
        id: UploadId,
        offset: u64,
    ) -> Result<Session, StorageError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // The announcement first: a commit ends it in the same transaction that
            // advances the session, so a session read after finding it gone shows
            // whether it committed.
            let storing = index.chunk_storing(id, offset, now_ms()).await?;
            let session = open(index, user, id).await?;
            if session.received >= offset || storing.is_none() {
                return Ok(session);
            }
            let pause = tokio::time::sleep(POLL);
            tokio::select! {
                () = changed => {}
                () = pause => {}
            }
        }
    }
}

/// A live session of `user` that accepts chunks.
pub async fn open(index: &Index, user: Uuid, id: UploadId) -> Result<Session, StorageError> {
    let session = index.session(user, id, now_ms()).await?;
    match session.state {
        SessionState::Open => Ok(session),
        SessionState::Completing => Err(being_completed()),
    }
}

/// A chunk on record as being stored. Dropped without [`Announcement::committed`]
/// (a failure, or the call cancelled), it is withdrawn.
pub struct Announcement {
    changed: Arc<Notify>,
    index: Index,
    id: UploadId,
    end: u64,
    token: String,
    committed: bool,
}

impl Announcement {
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The chunk committed, which ended the announcement in the same transaction.
    pub fn committed(mut self) {
        self.committed = true;
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.changed.notify_waiters();
        if self.committed {
            return;
        }
        let (index, changed) = (self.index.clone(), self.changed.clone());
        let (id, end, token) = (self.id, self.end, std::mem::take(&mut self.token));
        // Drop cannot wait; a chunk waiting behind this one on another replica notices
        // within a poll, and if this never lands, the announcement lapses on its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(err) = index.withdraw_chunk(id, end, &token).await {
                tracing::warn!(%err, upload_id = %id, "could not withdraw a chunk's announcement");
            }
            changed.notify_waiters();
        });
    }
}
