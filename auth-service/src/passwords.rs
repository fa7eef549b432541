//! Password hashing off the async runtime, with a bounded queue.
//!
//! bcrypt at cost 12 burns a few hundred milliseconds of CPU. Running it on a tokio
//! worker would stall every other call on that worker, so hashes run on a pool of their
//! own: one thread per core (more could not hash faster).
//!
//! The pool admits at most `threads` hashes running plus `queue` waiting; a Login or
//! Register beyond that is refused at once ([`AuthError::Busy`], UNAVAILABLE with
//! `retry-after`) instead of joining a line that a flood makes minutes long. A call
//! takes its place ([`HashingSlot`]) before any other work, so a refused call costs
//! nothing: no database write, no hash. The place is held by the job itself, not by the
//! caller, so a caller that gives up cannot free a place its hash still occupies; a job
//! whose caller is gone is skipped instead of hashed.
//!
//! The pool's threads run at a lower scheduling priority (nice 10). When nothing else
//! wants the CPU they take all of it, so logins still reach the machine's bcrypt bound;
//! when the CPU is contended, the runtime's threads — every other call (Me, Refresh,
//! token checks) — run first, so a login storm does not stretch their latency. Measured
//! by `strongbox-bench` (docs/PERFORMANCE.md).

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::credentials::Password;
use crate::error::AuthError;

/// How much lower than normal the hashing threads run (0 normal, 19 lowest). 10 gives
/// them a tenth of a contended core: other calls come first, yet logins still progress
/// when the CPU is busy with something else (at 19, or as SCHED_IDLE, they nearly
/// stop, for no measurable gain in the other calls' latency).
const HASHING_NICENESS: i32 = 10;

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    pool: HashingPool,
    /// A real hash at the configured cost, verified against when the email is unknown,
    /// so a miss costs the same time as a wrong password (no enumeration by timing).
    decoy_hash: Arc<str>,
    /// What a refused caller is told to wait: how long a full queue takes to drain.
    retry_after: Duration,
}

impl PasswordHasher {
    /// A hasher at bcrypt `cost` with one thread per core and `queue` places to wait.
    ///
    /// The default queue is one place per thread: an admitted call then waits for at
    /// most one hash before its own starts, so at cost 12 on two cores (~250 ms a hash,
    /// two threads) it answers within about half a second, well under the one second a
    /// Login may take under a flood. A longer queue only makes every admitted call wait
    /// longer without hashing any faster.
    pub async fn new(cost: u32, queue: Option<usize>) -> Result<Self, AuthError> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let queue = queue.unwrap_or(threads);
        let pool = HashingPool::start(threads, queue)?;
        let place = pool.admit().ok_or_else(|| {
            AuthError::Internal("no place in an idle hashing pool for the decoy".into())
        })?;
        let started = Instant::now();
        let decoy = pool
            .run(place, move || {
                bcrypt::hash("strongbox-decoy-password", cost)
            })
            .await?;
        Ok(Self {
            cost,
            pool,
            decoy_hash: decoy.into(),
            retry_after: drain_time(started.elapsed(), threads, threads.saturating_add(queue)),
        })
    }

    /// A place in the hashing pool, or [`AuthError::Busy`] at once when it is full.
    pub fn reserve(&self) -> Result<HashingSlot<'_>, AuthError> {
        let Some(place) = self.pool.admit() else {
            metrics::counter!(
                "strongbox_rate_limited_total",
                "component" => "auth-service",
                "reason" => "password_hashing_full",
            )
            .increment(1);
            return Err(AuthError::Busy {
                retry_after: self.retry_after,
            });
        };
        Ok(HashingSlot {
            hasher: self,
            place,
        })
    }
}

/// A reserved place in the hashing pool, spent by one hash or one verify.
pub struct HashingSlot<'a> {
    hasher: &'a PasswordHasher,
    place: OwnedSemaphorePermit,
}

impl HashingSlot<'_> {
    pub async fn hash(self, password: &Password) -> Result<String, AuthError> {
        let password = password.clone();
        let cost = self.hasher.cost;
        self.hasher
            .pool
            .run(self.place, move || bcrypt::hash(password.expose(), cost))
            .await
    }

    /// Checks `password` against `hash`, or against the decoy when there is no user.
    pub async fn verify(self, password: &Password, hash: Option<&str>) -> Result<bool, AuthError> {
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| self.hasher.decoy_hash.clone(), Arc::from);
        let password = password.clone();
        let matches = self
            .hasher
            .pool
            .run(self.place, move || bcrypt::verify(password.expose(), &hash))
            .await?;
        Ok(known && matches)
    }
}

/// How long `capacity` admitted hashes take on `threads` threads at `hash_time` each,
/// rounded up to whole rounds: the wait after which a refused caller likely gets in.
fn drain_time(hash_time: Duration, threads: usize, capacity: usize) -> Duration {
    let threads = threads.max(1);
    let rounds = u32::try_from(capacity.div_ceil(threads)).unwrap_or(u32::MAX);
    hash_time.saturating_mul(rounds.max(1))
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run hashing jobs at low priority; they stop when the last handle goes.
#[derive(Clone)]
struct HashingPool {
    jobs: mpsc::Sender<Job>,
    /// `threads + queue` places: one per job running or waiting.
    places: Arc<Semaphore>,
}

impl HashingPool {
    fn start(threads: usize, queue: usize) -> Result<Self, AuthError> {
        let (jobs, waiting) = mpsc::channel::<Job>();
        let waiting = Arc::new(Mutex::new(waiting));
        for index in 0..threads {
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = match waiting.lock() {
                            Ok(waiting) => waiting.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })
                .map_err(|err| {
                    AuthError::Internal(format!("cannot start a hashing thread: {err}"))
                })?;
        }
        Ok(Self {
            jobs,
            // A semaphore panics above MAX_PERMITS; no queue needs to be that long.
            places: Arc::new(Semaphore::new(
                threads.saturating_add(queue).min(Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// A place for one job, or `None` when every place is taken. Never waits.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// Runs `work` on a hashing thread; `place` is released when the job ends.
    async fn run<T: Send + 'static>(
        &self,
        place: OwnedSemaphorePermit,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let (reply, answer) = oneshot::channel();
        let queued = Instant::now();
        metrics::gauge!("strongbox_password_hashes_queued").increment(1.0);
        let job: Job = Box::new(move || {
            metrics::gauge!("strongbox_password_hashes_queued").decrement(1.0);
            metrics::histogram!("strongbox_password_hash_wait_seconds")
                .record(queued.elapsed().as_secs_f64());
            // The caller gave up (deadline, cancelled): nobody would read the answer.
            if reply.is_closed() {
                return;
            }
            let hashing = Instant::now();
            let outcome = work();
            metrics::histogram!("strongbox_password_hash_seconds")
                .record(hashing.elapsed().as_secs_f64());
            // Freed before the answer is sent, so a caller holding its answer knows its
            // place is free again.
            drop(place);
            let _ = reply.send(outcome);
        });
        self.jobs.send(job).map_err(|_| {
            metrics::gauge!("strongbox_password_hashes_queued").decrement(1.0);
            stopped()
        })?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|err| AuthError::Internal(format!("bcrypt: {err}")))
    }
}

/// Lowers the calling thread's priority. On Linux the nice value is per thread, and
/// `PRIO_PROCESS` with id 0 means the calling thread. Failing is harmless: hashing then
/// runs at normal priority, as it would on the blocking pool.
fn lower_this_threads_priority() {
    // SAFETY: setpriority reads no memory of ours; any failure is reported by its
    // return value, which is ignored on purpose (see above).
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICENESS) };
}

fn stopped() -> AuthError {
    AuthError::Internal("password hashing stopped (a hashing thread failed)".into())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[tokio::test]
    async fn unknown_users_are_checked_against_a_decoy_of_the_same_cost() {
        let hasher = PasswordHasher::new(5, None).await.unwrap();
        // The decoy is a real bcrypt hash at the configured cost, so a miss does the
        // same work as a wrong password.
        let decoy = bcrypt::HashParts::from_str(&hasher.decoy_hash).unwrap();
        assert_eq!(decoy.get_cost(), 5);
        let password = Password::parse("strongbox-decoy-password".into()).unwrap();
        assert!(
            !hasher
                .reserve()
                .unwrap()
                .verify(&password, None)
                .await
                .unwrap(),
            "the decoy must never log anyone in"
        );
    }

    #[tokio::test]
    async fn hashing_threads_run_at_a_lower_priority() {
        let pool = HashingPool::start(1, 0).unwrap();
        let place = pool.admit().unwrap();
        // SAFETY: getpriority reads no memory of ours.
        let niceness = pool
            .run(place, || {
                Ok(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) })
            })
            .await
            .unwrap();
        assert_eq!(niceness, HASHING_NICENESS);
        // SAFETY: as above.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(here, 0, "only the hashing threads are lowered");
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let hasher = PasswordHasher::new(4, None).await.unwrap();
        let right = Password::parse("right password".into()).unwrap();
        let wrong = Password::parse("wrong password".into()).unwrap();
        let hash = hasher.reserve().unwrap().hash(&right).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        let verify = |password| hasher.reserve().unwrap().verify(password, Some(&hash));
        assert!(verify(&right).await.unwrap());
        assert!(!verify(&wrong).await.unwrap());
    }

    /// A job that blocks its hashing thread until the returned sender is dropped.
    fn blocking_job(
        pool: &HashingPool,
        place: OwnedSemaphorePermit,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), AuthError>>,
    ) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let pool = pool.clone();
        let job = tokio::spawn(async move {
            pool.run(place, move || {
                let _ = released.recv();
                Ok(())
            })
            .await
        });
        (release, job)
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_and_admits_again_when_a_job_ends() {
        // One thread hashing and one place to wait: the third caller is refused.
        let pool = HashingPool::start(1, 1).unwrap();
        let (release_running, running) = blocking_job(&pool, pool.admit().unwrap());
        let (release_waiting, waiting) = blocking_job(&pool, pool.admit().unwrap());
        assert!(pool.admit().is_none(), "a third job was admitted");

        drop(release_running);
        running.await.unwrap().unwrap();
        let third = pool.admit().expect("a place once the running job ended");
        drop(third);
        drop(release_waiting);
        waiting.await.unwrap().unwrap();
        assert_eq!(pool.places.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_keeps_its_place_until_its_job_is_done() {
        let pool = HashingPool::start(1, 1).unwrap();
        let (release, running) = blocking_job(&pool, pool.admit().unwrap());
        // A waiting job whose caller is cancelled before the thread reaches it.
        let (_keep, waiting) = blocking_job(&pool, pool.admit().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        assert!(
            pool.admit().is_none(),
            "the cancelled job's place was freed while it still sat in the queue"
        );
        drop(release);
        running.await.unwrap().unwrap();
        // The thread skips the abandoned job (its caller is gone) and frees its place.
        for _ in 0..100 {
            if pool.places.available_permits() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the abandoned job's place was never released");
    }

    #[tokio::test]
    async fn a_refused_call_is_busy_with_a_retry_after() {
        let hasher = PasswordHasher::new(4, Some(0)).await.unwrap();
        let held: Vec<_> = std::iter::from_fn(|| hasher.reserve().ok()).collect();
        assert!(!held.is_empty());
        assert_eq!(hasher.pool.places.available_permits(), 0);
        match hasher.reserve() {
            Err(AuthError::Busy { retry_after }) => assert_eq!(retry_after, hasher.retry_after),
            Err(other) => panic!("expected Busy, got {other:?}"),
            Ok(_) => panic!("a full pool admitted another call"),
        }
        drop(held);
        assert!(hasher.reserve().is_ok());
    }

    #[test]
    fn a_refused_caller_waits_as_long_as_the_full_queue_takes_to_drain() {
        let hash = Duration::from_millis(250);
        // Two threads, two waiting: two rounds of hashes.
        assert_eq!(drain_time(hash, 2, 4), Duration::from_millis(500));
        // A partial round still takes a whole hash.
        assert_eq!(drain_time(hash, 2, 3), Duration::from_millis(500));
        assert_eq!(drain_time(hash, 2, 2), hash);
        assert_eq!(drain_time(hash, 0, 0), hash);
    }
}
