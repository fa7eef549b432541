//! The memory all uploads share for file data, with a hard bound.
//!
//! Every byte of an upload the service holds — a part being filled, a part on its way
//! to S3, a resumable-session chunk — sits in memory reserved here first, so
//! `UPLOAD_MEMORY_BYTES` bounds them all together however many clients upload at once.
//!
//! Two rules keep the bound from deadlocking:
//! - An upload reserves a whole part before it reads the bytes to fill it, and never
//!   waits for memory while holding a part it has not filled. Every reservation is then
//!   released by progress that does not need memory: a client sending the rest of a
//!   part, or S3 answering (or timing out). If uploads could hold half-filled parts
//!   while waiting for more, they could hold all of it and wait for each other forever.
//! - An upload waiting for memory stops reading its stream, and the bytes its client
//!   already sent stay in HTTP/2 buffers. Those may never use up the connection's
//!   window, or uploads that hold memory would not receive the rest of their parts:
//!   the servers' connection windows are as large as all their streams' windows
//!   together (`strongbox_common::server::flow`).
//!
//! A client that stops sending would hold its reservation forever; `guard.rs` cancels
//! an upload body that goes idle or trickles. And waiting for room has a deadline
//! (`UPLOAD_MEMORY_WAIT_SECONDS`): when uploads hold the whole budget for longer, the
//! one waiting fails RESOURCE_EXHAUSTED with `retry-after` rather than hanging, so a
//! client learns the server is busy and when to come back. Giving up is safe at the
//! only place an upload waits — before a part or a chunk, holding nothing half-filled —
//! and whatever the upload stored before is aborted by its caller, as on any failure.
//!
//! One user may hold at most a share of the budget (`UPLOAD_MEMORY_PER_USER_BYTES`, half
//! of it by default): a user whose uploads trickle, or who uploads many files at once,
//! waits for their own share to come free, while other users' uploads find the rest.
//!
//! The memory is handed out in blocks of [`BLOCK`] bytes that go back to a free list
//! when the last reference to their bytes is dropped (the part's S3 request ended), so
//! steady uploading allocates nothing. Allocating and freeing multi-MiB buffers per part
//! instead fragments the allocator's heaps: resident memory then grows well past what is
//! in use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::StorageError;

/// The unit memory is reserved and reused in.
pub const BLOCK: usize = 1024 * 1024;

/// What a client that found no memory is told to wait before trying again. Memory comes
/// free as other uploads' parts reach storage, a matter of seconds; a client that
/// already waited `UPLOAD_MEMORY_WAIT_SECONDS` gains little from coming back sooner.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The service-wide budget; cheap to clone.
#[derive(Clone)]
pub struct UploadMemory(Arc<Pool>);

struct Pool {
    /// One permit per block of the budget. Waiting is first come, first served.
    permits: Arc<Semaphore>,
    /// Allocated blocks nobody holds, ready for reuse.
    free: Mutex<Vec<Vec<u8>>>,
    /// Whether a block was handed out since the last [`UploadMemory::trim`].
    used: AtomicBool,
    /// How long a reservation may wait for room.
    wait: Duration,
    /// Blocks one user may hold at once.
    share: usize,
    /// Each user's share, while they hold or may soon take some of it.
    users: Mutex<Shares>,
}

/// The users' shares; entries of users who hold nothing are dropped as the map grows.
#[derive(Default)]
struct Shares {
    by_user: HashMap<Uuid, Weak<Semaphore>>,
    prune_at: usize,
}

impl UploadMemory {
    /// A budget of `budget` bytes, of which one user may hold `per_user`; both must
    /// hold the largest single reservation (`largest`: a part, or a session chunk). A
    /// reservation waits at most `wait`.
    pub fn new(
        budget: u64,
        per_user: u64,
        largest: u64,
        wait: Duration,
    ) -> Result<Self, StorageError> {
        let blocks_of = |bytes: u64| usize::try_from(bytes / BLOCK as u64).unwrap_or(usize::MAX);
        let (blocks, share) = (blocks_of(budget), blocks_of(per_user));
        let needed = blocks_for(usize::try_from(largest).unwrap_or(usize::MAX));
        if blocks.min(share) < needed {
            return Err(StorageError::Internal(format!(
                "UPLOAD_MEMORY_BYTES ({budget}) and UPLOAD_MEMORY_PER_USER_BYTES ({per_user}) \
                 must each hold at least one part of UPLOAD_PART_SIZE and one chunk of \
                 MAX_CHUNK_BYTES ({largest} bytes), in whole MiB"
            )));
        }
        let pool = Arc::new(Pool {
            permits: Arc::new(Semaphore::new(blocks)),
            free: Mutex::new(Vec::new()),
            used: AtomicBool::new(false),
            wait,
            share: share.min(blocks),
            users: Mutex::default(),
        });
        let sampled = Arc::downgrade(&pool);
        strongbox_common::metrics::sample_on_scrape(Box::new(move || {
            let Some(pool) = sampled.upgrade() else {
                return false;
            };
            let reserved = blocks.saturating_sub(pool.permits.available_permits());
            metrics::gauge!("strongbox_upload_memory_reserved_bytes")
                .set((reserved * BLOCK) as f64);
            metrics::gauge!("strongbox_upload_memory_budget_bytes").set((blocks * BLOCK) as f64);
            true
        }));
        Ok(Self(pool))
    }

    /// The budget as `user` sees it: reservations count against their share too.
    pub fn for_user(&self, user: Uuid) -> UserMemory {
        let mut users = self
            .0
            .users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let share = match users.by_user.get(&user).and_then(Weak::upgrade) {
            Some(share) => share,
            None => {
                let share = Arc::new(Semaphore::new(self.0.share));
                users.by_user.insert(user, Arc::downgrade(&share));
                share
            }
        };
        if users.by_user.len() > users.prune_at {
            users.by_user.retain(|_, share| share.strong_count() > 0);
            users.prune_at = (2 * users.by_user.len()).max(64);
        }
        UserMemory {
            pool: self.0.clone(),
            share,
        }
    }

    /// Frees the idle blocks if none was handed out since the last call: memory
    /// reserved for a burst of uploads goes back to the system once the burst is over.
    pub fn trim(&self) {
        if !self.0.used.swap(false, Ordering::Relaxed) {
            let idle = std::mem::take(&mut *self.0.lock_free());
            drop(idle);
        }
    }

    /// Blocks of the budget nobody has reserved.
    pub fn available_blocks(&self) -> usize {
        self.0.permits.available_permits()
    }
}

/// The budget as one user sees it; cheap to clone.
#[derive(Clone)]
pub struct UserMemory {
    pool: Arc<Pool>,
    share: Arc<Semaphore>,
}

impl UserMemory {
    /// Waits until `bytes` are free in the user's share and in the budget, and reserves
    /// them; fails with [`StorageError::Busy`] if they are not within the wait deadline.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, StorageError> {
        let blocks = blocks_for(bytes);
        if blocks > self.pool.share {
            return Err(StorageError::Internal(format!(
                "{bytes} bytes do not fit in UPLOAD_MEMORY_PER_USER_BYTES"
            )));
        }
        let deadline = Instant::now() + self.pool.wait;
        // The user's own share first: while it is used up, the user waits without
        // taking any of the budget others need.
        let share = acquire(&self.share, blocks, deadline, self.pool.wait).await?;
        let permit = acquire(&self.pool.permits, blocks, deadline, self.pool.wait).await?;
        Ok(Reservation {
            pool: self.pool.clone(),
            permit: (blocks > 0).then_some((permit, share)),
        })
    }
}

/// `blocks` permits of `semaphore`, waiting until `deadline` at most.
async fn acquire(
    semaphore: &Arc<Semaphore>,
    blocks: usize,
    deadline: Instant,
    wait: Duration,
) -> Result<OwnedSemaphorePermit, StorageError> {
    let permits = u32::try_from(blocks)
        .map_err(|_| StorageError::Internal("reservation too large".into()))?;
    if let Ok(permit) = semaphore.clone().try_acquire_many_owned(permits) {
        return Ok(permit);
    }
    tracing::debug!(blocks, "waiting for upload memory");
    metrics::counter!("strongbox_upload_memory_waits_total").increment(1);
    let began = Instant::now();
    // Dropping the acquisition on timeout leaves the queue: those behind it move up,
    // first come first served still.
    let acquire = semaphore.clone().acquire_many_owned(permits);
    let acquired = tokio::time::timeout_at(deadline, acquire).await;
    metrics::histogram!("strongbox_upload_memory_wait_seconds")
        .record(began.elapsed().as_secs_f64());
    match acquired {
        Ok(permit) => permit.map_err(|_| StorageError::Internal("upload memory is closed".into())),
        Err(_) => {
            metrics::counter!("strongbox_upload_memory_refusals_total").increment(1);
            tracing::info!(blocks, ?wait, "no upload memory came free in time");
            Err(StorageError::Busy {
                waited: wait,
                retry_after: BUSY_RETRY_AFTER,
            })
        }
    }
}

impl Pool {
    fn lock_free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // The free list is a plain stack: a panic while holding the lock cannot leave it
        // inconsistent, so a poisoned lock is still good.
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn blocks_for(bytes: usize) -> usize {
    bytes.div_ceil(BLOCK)
}

/// Memory reserved for one part or chunk, taken block by block; what is not taken is
/// returned when the reservation is dropped.
pub struct Reservation {
    pool: Arc<Pool>,
    /// Blocks of the budget and of the user's share.
    permit: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Reservation {
    /// The next block of the reservation, or `None` once it is used up.
    pub fn block(&mut self) -> Option<Block> {
        let permit = match self.permit.as_ref()?.0.num_permits() {
            1 => self.permit.take()?,
            _ => {
                let (budget, share) = self.permit.as_mut()?;
                (budget.split(1)?, share.split(1)?)
            }
        };
        self.pool.used.store(true, Ordering::Relaxed);
        let buffer = self
            .pool
            .lock_free()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BLOCK));
        Some(Block {
            buffer,
            pool: self.pool.clone(),
            _permit: permit,
        })
    }
}

/// One block of reserved memory: filled, then frozen into [`Bytes`] that return it to
/// the pool when dropped.
pub struct Block {
    buffer: Vec<u8>,
    pool: Arc<Pool>,
    // Dropped after `Drop::drop` has put the buffer back, so whoever the permit goes to
    // finds the buffer free.
    _permit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Block {
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.buffer.len() == BLOCK
    }

    /// Moves up to `limit` bytes from the front of `data` into the block, as many as
    /// fit; returns how many.
    pub fn fill_from(&mut self, data: &mut Bytes, limit: usize) -> usize {
        let n = (BLOCK - self.buffer.len()).min(limit).min(data.len());
        self.buffer.extend_from_slice(&data.split_to(n));
        n
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        self.pool.lock_free().push(buffer);
    }
}

/// Makes the allocator give buffers of 4 MiB and more back to the system when they are
/// freed. glibc otherwise raises its mmap threshold to the largest buffer freed so far
/// and keeps later ones in per-thread heaps: the multi-MiB messages tonic decodes for
/// session chunks (not in the pool: they exist before any handler runs) then stay
/// resident per worker thread. Pool blocks (1 MiB) stay below the threshold; what pays
/// the page faults is one fresh mapping per session chunk.
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; any value is valid to pass.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * BLOCK as libc::c_int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = BLOCK as u64;
    const WAIT: Duration = Duration::from_secs(30);

    /// A budget of `budget` bytes that one user may take whole, as seen by that user.
    fn unshared(budget: u64, largest: u64, wait: Duration) -> Result<UserMemory, StorageError> {
        Ok(UploadMemory::new(budget, budget, largest, wait)?.for_user(Uuid::nil()))
    }

    impl UserMemory {
        fn available_blocks(&self) -> usize {
            self.pool.permits.available_permits()
        }
    }

    #[tokio::test]
    async fn one_user_takes_at_most_their_share_and_others_find_the_rest() {
        let wait = Duration::from_millis(100);
        let memory = UploadMemory::new(4 * MIB, 2 * MIB, MIB, wait).unwrap();
        let (greedy, other) = (
            memory.for_user(Uuid::from_u128(1)),
            memory.for_user(Uuid::from_u128(2)),
        );
        let held = greedy.reserve(2 * BLOCK).await.unwrap();
        let err = greedy.reserve(1).await.err().expect("the share is used up");
        assert!(matches!(err, StorageError::Busy { .. }), "{err}");
        // Waiting on their own share took nothing of the budget.
        assert_eq!(memory.available_blocks(), 2);
        let _others = other.reserve(2 * BLOCK).await.unwrap();
        drop(held);
        greedy.reserve(2 * BLOCK).await.unwrap();
        assert!(UploadMemory::new(4 * MIB, MIB - 1, MIB, wait).is_err());
    }

    #[test]
    fn shares_of_users_who_hold_nothing_are_forgotten() {
        let memory = UploadMemory::new(2 * MIB, MIB, MIB, WAIT).unwrap();
        let kept = memory.for_user(Uuid::from_u128(0));
        for user in 1..1000 {
            drop(memory.for_user(Uuid::from_u128(user)));
        }
        let users = memory.0.users.lock().unwrap();
        assert!(users.by_user.len() <= 64, "{}", users.by_user.len());
        assert!(users.by_user.contains_key(&Uuid::from_u128(0)));
        drop(kept);
    }

    #[tokio::test]
    async fn waiting_for_room_ends_at_the_deadline_and_takes_nothing() {
        let wait = Duration::from_millis(100);
        let memory = unshared(2 * MIB, MIB, wait).unwrap();
        let held = memory.reserve(2 * BLOCK).await.unwrap();
        let started = std::time::Instant::now();
        let err = memory
            .reserve(1)
            .await
            .err()
            .expect("no room within the deadline");
        assert!(
            started.elapsed() >= wait,
            "gave up early: {:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, StorageError::Busy { waited, .. } if waited == wait),
            "{err}"
        );
        // The one that gave up left the queue: room freed goes to the next in line.
        drop(held);
        assert_eq!(memory.available_blocks(), 2);
        memory.reserve(2 * BLOCK).await.unwrap();
    }

    #[tokio::test]
    async fn a_reservation_that_gets_room_in_time_waits_for_it() {
        let memory = unshared(MIB, MIB, Duration::from_secs(5)).unwrap();
        let held = memory.reserve(BLOCK).await.unwrap();
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(BLOCK).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap().unwrap();
    }

    #[test]
    fn a_budget_must_hold_the_largest_reservation() {
        assert!(unshared(8 * MIB, 8 * MIB, WAIT).is_ok());
        let err = unshared(8 * MIB - 1, 8 * MIB, WAIT).err().unwrap();
        assert!(err.to_string().contains("UPLOAD_MEMORY_BYTES"), "{err}");
    }

    #[tokio::test]
    async fn blocks_return_to_the_budget_when_their_bytes_are_dropped() {
        let memory = unshared(4 * MIB, MIB, WAIT).unwrap();
        let mut reservation = memory.reserve(3 * BLOCK - 1).await.unwrap();
        assert_eq!(memory.available_blocks(), 1);
        let mut block = reservation.block().unwrap();
        let mut data = Bytes::from(vec![7u8; BLOCK + 10]);
        assert_eq!(block.fill_from(&mut data, usize::MAX), BLOCK);
        assert_eq!(data.len(), 10);
        let bytes = block.freeze();
        let copy = bytes.clone();
        drop(reservation);
        // The reservation's two untaken blocks are back; the frozen one is not.
        assert_eq!(memory.available_blocks(), 3);
        drop(bytes);
        assert_eq!(memory.available_blocks(), 3);
        assert!(copy.iter().all(|&b| b == 7));
        drop(copy);
        assert_eq!(memory.available_blocks(), 4);
    }

    #[tokio::test]
    async fn a_reservation_hands_out_exactly_its_blocks_and_buffers_are_reused() {
        let memory = unshared(2 * MIB, MIB, WAIT).unwrap();
        let mut reservation = memory.reserve(2 * BLOCK).await.unwrap();
        let first = reservation.block().unwrap();
        let address = first.buffer.as_ptr();
        let _second = reservation.block().unwrap();
        assert!(reservation.block().is_none());
        drop(first);
        let mut again = memory.reserve(1).await.unwrap();
        assert_eq!(again.block().unwrap().buffer.as_ptr(), address);
    }

    #[tokio::test]
    async fn a_reservation_waits_for_room_first_come_first_served() {
        let memory = unshared(2 * MIB, MIB, WAIT).unwrap();
        let held = memory.reserve(BLOCK).await.unwrap();
        let big = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(2 * BLOCK).await.map(drop) }
        });
        tokio::task::yield_now().await;
        // A request that would fit but came later must not overtake the waiting one.
        let small = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(1).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!big.is_finished() && !small.is_finished());
        drop(held);
        big.await.unwrap().unwrap();
        small.await.unwrap().unwrap();
        assert_eq!(memory.available_blocks(), 2);
    }

    #[tokio::test]
    async fn trimming_frees_idle_blocks_only_after_a_quiet_interval() {
        let memory = UploadMemory::new(2 * MIB, MIB, MIB, WAIT).unwrap();
        let user = memory.for_user(Uuid::nil());
        drop(user.reserve(BLOCK).await.unwrap().block());
        memory.trim();
        assert_eq!(memory.0.lock_free().len(), 1, "used since the last trim");
        memory.trim();
        assert!(memory.0.lock_free().is_empty());
    }
}
