//! Password hashing off the async runtime.
//!
//! bcrypt at cost 12 burns a few hundred milliseconds of CPU. Running it on a tokio
//! worker would stall every other call on that worker, so hashes run on a pool of their
//! own: one thread per core (more could not hash faster), behind a semaphore of the
//! same size so a login burst waits in line instead of piling up threads.
//!
//! The pool's threads run at a lower scheduling priority (nice 10). When nothing else
//! wants the CPU they take all of it, so logins still reach the machine's bcrypt bound;
//! when the CPU is contended, the runtime's threads — every other call (Me, Refresh,
//! token checks) — run first, so a login storm does not stretch their latency. Measured
//! by `strongbox-bench` (docs/PERFORMANCE.md).

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{Semaphore, oneshot};

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
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> Result<Self, AuthError> {
        let pool = HashingPool::start(std::thread::available_parallelism().map_or(2, usize::from))?;
        let decoy = pool
            .run(move || bcrypt::hash("strongbox-decoy-password", cost))
            .await?;
        Ok(Self {
            cost,
            pool,
            decoy_hash: decoy.into(),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let password = password.clone();
        let cost = self.cost;
        self.pool
            .run(move || bcrypt::hash(password.expose(), cost))
            .await
    }

    /// Checks `password` against `hash`, or against the decoy when there is no user.
    pub async fn verify(&self, password: &Password, hash: Option<&str>) -> Result<bool, AuthError> {
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| self.decoy_hash.clone(), Arc::from);
        let password = password.clone();
        let matches = self
            .pool
            .run(move || bcrypt::verify(password.expose(), &hash))
            .await?;
        Ok(known && matches)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run hashing jobs at low priority; they stop when the last handle goes.
#[derive(Clone)]
struct HashingPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
}

impl HashingPool {
    fn start(threads: usize) -> Result<Self, AuthError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
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
            permits: Arc::new(Semaphore::new(threads)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.permits.acquire().await.map_err(|_| stopped())?;
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        self.jobs.send(job).map_err(|_| stopped())?;
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
        let hasher = PasswordHasher::new(5).await.unwrap();
        // The decoy is a real bcrypt hash at the configured cost, so a miss does the
        // same work as a wrong password.
        let decoy = bcrypt::HashParts::from_str(&hasher.decoy_hash).unwrap();
        assert_eq!(decoy.get_cost(), 5);
        let password = Password::parse("strongbox-decoy-password".into()).unwrap();
        assert!(
            !hasher.verify(&password, None).await.unwrap(),
            "the decoy must never log anyone in"
        );
    }

    #[tokio::test]
    async fn hashing_threads_run_at_a_lower_priority() {
        let pool = HashingPool::start(1).unwrap();
        // SAFETY: getpriority reads no memory of ours.
        let niceness = pool
            .run(|| Ok(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }))
            .await
            .unwrap();
        assert_eq!(niceness, HASHING_NICENESS);
        // SAFETY: as above.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(here, 0, "only the hashing threads are lowered");
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let right = Password::parse("right password".into()).unwrap();
        let wrong = Password::parse("wrong password".into()).unwrap();
        let hash = hasher.hash(&right).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.verify(&right, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap());
    }
}
