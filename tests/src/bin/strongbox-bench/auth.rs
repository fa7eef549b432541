//! auth-service under load, against its bound: one bcrypt hash at cost 12 takes `t`
//! on one core, so no server can log in faster than `cores ÷ t` per second. `Me` (a JWT
//! check and one indexed SQLite read) is measured idle at 16 and 64 concurrent callers,
//! and again at 16 while logins keep every core busy hashing. Then the database's own
//! cost: `Me` and `Refresh` (a write transaction) at 16 concurrent, on SQLite and on a
//! second auth-service whose accounts are on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{MeRequest, RefreshRequest};
use strongbox_tests::auth::{new_account, with_bearer};
use tonic::transport::Channel;

use crate::system::{BCRYPT_COST, PASSWORD, System, login};

pub struct AuthNumbers {
    pub cores: usize,
    /// One bcrypt hash at cost 12 on one core.
    pub hash_time: Duration,
    /// Hashes per second with one bare thread per core hashing, no service involved:
    /// what the machine gives when every core hashes at once.
    pub bare_hashes_per_second: f64,
    pub logins_per_second: f64,
    pub me_16: Latencies,
    pub me_64: Latencies,
    /// `Me` at 16 concurrent while logins saturate the CPU.
    pub me_16_loaded: Latencies,
    /// Logins per second during that loaded measurement.
    pub logins_while_loaded: f64,
    /// 16 sessions each rotating its refresh token back to back, on SQLite.
    pub refresh_16: Latencies,
    /// The same `Me` and `Refresh` measurements on an auth-service on PostgreSQL.
    pub me_16_postgres: Latencies,
    pub refresh_16_postgres: Latencies,
}

impl AuthNumbers {
    /// The most logins per second this machine can do: every core hashing.
    pub fn bound(&self) -> f64 {
        self.cores as f64 / self.hash_time.as_secs_f64()
    }

    /// Logins per second as a share of [`Self::bound`].
    pub fn login_ratio(&self) -> f64 {
        self.logins_per_second / self.bound()
    }

    /// Bare threads' hashes per second as a share of [`Self::bound`].
    pub fn bare_ratio(&self) -> f64 {
        self.bare_hashes_per_second / self.bound()
    }
}

pub struct Latencies {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

pub async fn measure(system: &System, quick: bool) -> AuthNumbers {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Enough callers that a core never waits for a request to arrive.
    let login_callers = 2 * cores;
    let emails: Vec<String> = (0..login_callers)
        .map(|index| format!("login-{index}@bench.example"))
        .collect();
    let mut token = String::new();
    for email in &emails {
        token = system.user(email).await;
    }
    let hash_time = tokio::task::spawn_blocking(hash_time)
        .await
        .expect("the hash timing runs");
    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let login_window = if quick { window } else { window * 2 };
    let bare_hashes_per_second =
        tokio::task::spawn_blocking(move || bare_hash_rate(cores, login_window))
            .await
            .expect("the bare hashing runs");

    let client = system.auth_client();
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicU64::new(0));
    let load = start_logins(&client, &emails, &stop, &logins);
    // Counted while every caller is busy: not while the first logins start hashing, nor
    // while the last ones finish with cores already idle. A full run counts over twice
    // the window, so one login more or less moves the ratio by about 1.5 %.
    tokio::time::sleep(hash_time * 2).await;
    let (counted_from, began) = (logins.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(login_window.max(hash_time * 8)).await;
    let logins_per_second =
        (logins.load(Ordering::Relaxed) - counted_from) as f64 / began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    join_all(load).await;

    let me_16 = me(&client, &token, 16, window).await;
    let me_64 = me(&client, &token, 64, window).await;

    stop.store(false, Ordering::Relaxed);
    logins.store(0, Ordering::Relaxed);
    let load = start_logins(&client, &emails, &stop, &logins);
    // Let the hashing pool fill before measuring.
    tokio::time::sleep(hash_time * 2).await;
    let loaded_began = Instant::now();
    let me_16_loaded = me(&client, &token, 16, window).await;
    let logins_while_loaded =
        logins.load(Ordering::Relaxed) as f64 / loaded_began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    join_all(load).await;

    let refresh_16 = refresh(&client, &emails, 16, window).await;
    let on_postgres = system.auth_on_postgres().await;
    let postgres_client = AuthServiceClient::new(on_postgres.channel());
    let postgres_token = new_account(on_postgres.channel(), &emails[0], PASSWORD)
        .await
        .access_token;
    let me_16_postgres = me(&postgres_client, &postgres_token, 16, window).await;
    let refresh_16_postgres = refresh(&postgres_client, &emails[..1], 16, window).await;
    on_postgres.stop().await;

    AuthNumbers {
        cores,
        hash_time,
        bare_hashes_per_second,
        logins_per_second,
        me_16,
        me_64,
        me_16_loaded,
        logins_while_loaded,
        refresh_16,
        me_16_postgres,
        refresh_16_postgres,
    }
}

/// The fastest of a few cost-12 hashes on this thread: the per-core cost a server pays.
pub fn hash_time() -> Duration {
    (0..3)
        .map(|_| {
            let began = Instant::now();
            one_hash();
            began.elapsed()
        })
        .min()
        .expect("three samples")
}

/// One hash as auth-service computes it for a login.
fn one_hash() {
    bcrypt::hash(PASSWORD, BCRYPT_COST).expect("bcrypt hashes");
}

/// Hashes per second with `cores` threads hashing at once for about `window` (each
/// finishes the hash it is in): the same time span as the login measurement, so the two
/// see the machine alike.
fn bare_hash_rate(cores: usize, window: Duration) -> f64 {
    let began = Instant::now();
    let hashes: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut hashes = 0;
                    while began.elapsed() < window {
                        one_hash();
                        hashes += 1;
                    }
                    hashes
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a hashing thread"))
            .sum()
    });
    hashes as f64 / began.elapsed().as_secs_f64()
}

/// One caller per email logging in again and again until `stop`.
fn start_logins(
    client: &AuthServiceClient<Channel>,
    emails: &[String],
    stop: &Arc<AtomicBool>,
    logins: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    emails
        .iter()
        .map(|email| {
            let (mut client, email) = (client.clone(), email.clone());
            let (stop, logins) = (stop.clone(), logins.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.login(login(&email)).await.expect("a login");
                    logins.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// `concurrency` callers asking `Me` back to back for `window`.
async fn me(
    client: &AuthServiceClient<Channel>,
    token: &str,
    concurrency: usize,
    window: Duration,
) -> Latencies {
    let began = Instant::now();
    let callers = (0..concurrency).map(|_| {
        let mut client = client.clone();
        let token = token.to_owned();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while began.elapsed() < window {
                let sent = Instant::now();
                client
                    .me(with_bearer(MeRequest {}, &token))
                    .await
                    .expect("Me answers");
                latencies.push(sent.elapsed());
            }
            latencies
        })
    });
    latencies(join_all(callers).await, began)
}

/// `concurrency` sessions (logins of `emails`, in turn), each rotating its own refresh
/// token back to back for `window`: one write transaction per call.
async fn refresh(
    client: &AuthServiceClient<Channel>,
    emails: &[String],
    concurrency: usize,
    window: Duration,
) -> Latencies {
    let mut sessions = Vec::with_capacity(concurrency);
    for email in emails.iter().cycle().take(concurrency) {
        let pair = client.clone().login(login(email)).await.expect("a login");
        let tokens = pair.into_inner().tokens.expect("a token pair");
        sessions.push(tokens.refresh_token);
    }
    let began = Instant::now();
    let callers = sessions.into_iter().map(|mut refresh_token| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while began.elapsed() < window {
                let sent = Instant::now();
                let rotated = client
                    .refresh(RefreshRequest {
                        refresh_token: refresh_token.clone(),
                    })
                    .await
                    .expect("Refresh answers");
                latencies.push(sent.elapsed());
                refresh_token = rotated
                    .into_inner()
                    .tokens
                    .expect("a token pair")
                    .refresh_token;
            }
            latencies
        })
    });
    latencies(join_all(callers).await, began)
}

/// Every caller's latencies, as calls per second since `began` and percentiles.
fn latencies(
    callers: Vec<Result<Vec<Duration>, tokio::task::JoinError>>,
    began: Instant,
) -> Latencies {
    let mut latencies: Vec<Duration> = callers
        .into_iter()
        .flat_map(|caller| caller.expect("a caller"))
        .collect();
    let elapsed = began.elapsed();
    latencies.sort();
    let at = |quantile: f64| latencies[((latencies.len() - 1) as f64 * quantile) as usize];
    Latencies {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}
