//! The gateway as a front door under hostile load (issue 12), each part against a
//! gateway process of its own, started fresh with the default limits (so its peak memory
//! is that part's), in front of the same auth-service and storage-service:
//!
//! 1. **Login flood**: wrong passwords for random emails from many client addresses
//!    (distinct loopback source addresses, one connection each) at ten times what the
//!    cores can hash, for a fixed window, while a well-behaved client on an address of its
//!    own keeps calling Refresh, Me and ListFiles. The flood is open-loop (sent on a
//!    schedule, not when the last answer came), as an attacker sends.
//! 2. **Idle sockets**: thousands of TCP connections that never send a byte, spread over
//!    source addresses below the per-address cap; how many the gateway accepts, and when
//!    it closes them, while a new client's `Me` is served.
//! 3. **Concurrent connections**: N connections, each its own channel, each calling `Me`
//!    at a modest pace; `Me`'s latency per N.
//!
//! Every call carries a client-side deadline and every part a fixed window, so a run
//! ends by itself whatever the services do. Latencies are measured in this process, which
//! shares the cores with the services: they are what a client on this machine sees.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest, RefreshRequest, RegisterRequest};
use strongbox_proto::storage::v1::ListFilesRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::auth::with_bearer;
use strongbox_tests::process::mib;
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::system::{PASSWORD, Service, System, login};

/// Offered flood rate, as a multiple of what the cores can hash.
pub const FLOOD_FACTOR: f64 = 10.0;
/// A client gives up on any call after this long (counted as an error / its code).
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// The well-behaved client's pause between rounds of Me and ListFiles.
pub const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// How often the well-behaved client refreshes: under the default Refresh rate
/// (60/m per address), as a client that respects the limits does.
pub const REFRESH_EVERY: Duration = Duration::from_millis(1500);
/// Connections per source address: under `GATEWAY_MAX_CONNECTIONS_PER_ADDRESS` (128).
pub const CONNECTIONS_PER_ADDRESS: usize = 100;
/// Connections opened at once while setting up a part (a SYN flood is not the test).
const OPENING_AT_ONCE: usize = 256;
/// How much longer than the header-read timeout an idle socket may live: the gateway
/// gives a closing connection one second to say goodbye.
pub const CLOSE_SLACK: Duration = Duration::from_secs(2);

/// How big each part is: the full run, or a few seconds for `--quick`.
pub struct Scale {
    flood_addresses: u8,
    flood_window: Duration,
    idle_sockets: usize,
    header_read_timeout: Duration,
    steps: Vec<usize>,
    step_window: Duration,
    /// Each concurrent connection calls `Me` once per this.
    me_pace: Duration,
}

impl Scale {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                flood_addresses: 8,
                flood_window: Duration::from_secs(3),
                idle_sockets: 300,
                header_read_timeout: Duration::from_secs(2),
                steps: vec![200],
                step_window: Duration::from_secs(3),
                me_pace: Duration::from_secs(1),
            }
        } else {
            Self {
                flood_addresses: 64,
                flood_window: Duration::from_secs(20),
                idle_sockets: 3_000,
                header_read_timeout: Duration::from_secs(10),
                steps: vec![1_000, 2_500, 5_000, 7_500, 9_500],
                step_window: Duration::from_secs(10),
                me_pace: Duration::from_secs(5),
            }
        }
    }
}

pub struct HostileNumbers {
    pub flood: Flood,
    pub idle: IdleSockets,
    pub steps: Vec<Step>,
    pub me_pace: Duration,
    pub step_window: Duration,
}

/// Latencies of one kind of call, and how many failed.
pub struct Calls {
    pub count: usize,
    pub errors: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub slowest: Duration,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
}

impl Calls {
    fn from(mut latencies: Vec<Duration>, errors: Vec<String>) -> Self {
        latencies.sort();
        let at = |quantile: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * quantile) as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            count: latencies.len() + errors.len(),
            errors: errors.len(),
            p50: at(0.50),
            p99: at(0.99),
            slowest: latencies.last().copied().unwrap_or_default(),
            first_error: errors.into_iter().next(),
        }
    }
}

pub struct Flood {
    pub addresses: u8,
    pub window: Duration,
    /// Cores ÷ one hash: what the machine can hash per second.
    pub bound: f64,
    pub offered_per_second: f64,
    pub sent: usize,
    /// How the flood's calls were answered, by gRPC code, most first.
    pub answers: Vec<(Code, usize)>,
    /// The longest any flood call waited for its answer.
    pub slowest: Duration,
    pub gateway_peak_mib: u64,
    /// The well-behaved client meanwhile: Refresh, Me, ListFiles.
    pub client: [(&'static str, Calls); 3],
}

impl Flood {
    pub fn answered(&self, code: Code) -> usize {
        self.answers
            .iter()
            .find(|(answered, _)| *answered == code)
            .map_or(0, |(_, count)| *count)
    }
}

pub struct IdleSockets {
    pub opened: usize,
    /// Sockets that could not even connect.
    pub connect_failures: usize,
    /// Sockets the gateway closed at once (refused by a connection cap).
    pub refused: usize,
    /// Sockets still open when the wait ended.
    pub never_closed: usize,
    pub header_read_timeout: Duration,
    /// Longest time one socket stayed open, from its connect to the gateway's close.
    pub longest_open: Duration,
    /// From the moment every socket was open to the last one closed.
    pub all_closed_after: Duration,
    /// A new client's `Me` (connection included) while the sockets were held.
    pub new_client_me: Result<Duration, String>,
}

impl IdleSockets {
    pub fn accepted(&self) -> usize {
        self.opened - self.refused
    }

    pub fn closed_in_time(&self) -> bool {
        self.never_closed == 0 && self.longest_open <= self.header_read_timeout + CLOSE_SLACK
    }
}

pub struct Step {
    pub connections: usize,
    /// Connections that could not be opened (or whose first `Me` failed).
    pub unopened: usize,
    /// Why the first of those could not.
    pub first_unopened: Option<String>,
    pub me: Calls,
    pub gateway_peak_mib: u64,
}

pub async fn measure(system: &System, quick: bool) -> HostileNumbers {
    let scale = Scale::new(quick);
    raise_open_files_limit();
    let gateway = system.extra_gateway(&[]).await;
    let flood = login_flood(system, &gateway, &scale).await;
    println!("{}", crate::report::flood_lines(&flood));
    gateway.stop().await;

    let token = system.user("hostile-idle@bench.example").await;
    let timeout = scale.header_read_timeout.as_secs().to_string();
    let gateway = system
        .extra_gateway(&[("GATEWAY_HEADER_READ_TIMEOUT_SECONDS", timeout)])
        .await;
    let idle = idle_sockets(&gateway, &scale, &token).await;
    println!("{}", crate::report::idle_line(&idle));
    gateway.stop().await;

    let gateway = system.extra_gateway(&[]).await;
    let mut steps = Vec::new();
    for &connections in &scale.steps {
        let step = concurrent_me(&gateway, connections, &scale, &token).await;
        println!("{}", crate::report::step_line(&step));
        if let Some(error) = step
            .first_unopened
            .as_ref()
            .or(step.me.first_error.as_ref())
        {
            println!("  first failure: {error}");
        }
        steps.push(step);
    }
    gateway.stop().await;
    HostileNumbers {
        flood,
        idle,
        steps,
        me_pace: scale.me_pace,
        step_window: scale.step_window,
    }
}

/// This process holds thousands of sockets; the soft open-file limit (often 1,024)
/// would stop it first. The gateway raises its own the same way.
fn raise_open_files_limit() {
    let limit = gateway::connections::raise_open_files_limit();
    println!("open-file limit of the benchmark: {limit}");
}

/// A loopback source address: `127.<second>.<third>.<fourth>`, counted from `index`.
fn loopback(second: u8, index: usize) -> Ipv4Addr {
    let [_, _, third, fourth] = (index as u32 + 1).to_be_bytes();
    Ipv4Addr::new(127, second, third, fourth)
}

/// A channel to `service` whose connection comes from `source`.
fn channel_from(service: &Service, source: Ipv4Addr) -> Endpoint {
    Endpoint::from_shared(service.url.clone())
        .expect("a valid URL")
        .local_address(Some(IpAddr::V4(source)))
        .connect_timeout(CALL_DEADLINE)
}

fn deadline<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.set_timeout(CALL_DEADLINE);
    request
}

async fn login_flood(system: &System, gateway: &Service, scale: &Scale) -> Flood {
    let hash_time = tokio::task::spawn_blocking(crate::auth::hash_time)
        .await
        .expect("the hash timing runs");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let bound = cores as f64 / hash_time.as_secs_f64();
    let offered_per_second = bound * FLOOD_FACTOR;

    // The well-behaved client registers (straight at auth-service: not the point here)
    // and logs in through the gateway from its own address before the flood.
    let email = "hostile-client@bench.example";
    system
        .auth_client()
        .register(RegisterRequest {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("register the well-behaved client");
    let client_channel = channel_from(gateway, Ipv4Addr::new(127, 0, 0, 200)).connect_lazy();
    let tokens = AuthServiceClient::new(client_channel.clone())
        .login(deadline(tonic::Request::new(login(email))))
        .await
        .expect("the well-behaved client logs in")
        .into_inner()
        .tokens
        .expect("tokens");

    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(well_behaved(
        client_channel,
        tokens.access_token,
        tokens.refresh_token,
        stop.clone(),
    ));
    let channels: Vec<Channel> = (0..usize::from(scale.flood_addresses))
        .map(|index| channel_from(gateway, loopback(0, index + 1)).connect_lazy())
        .collect();
    let answers = send_flood(&channels, offered_per_second, scale.flood_window).await;
    stop.store(true, Ordering::Relaxed);
    let client = client.await.expect("the well-behaved client");

    let sent = answers.len();
    let slowest = answers
        .iter()
        .map(|(_, waited)| *waited)
        .max()
        .unwrap_or_default();
    let mut by_code: Vec<(Code, usize)> = Vec::new();
    for (code, _) in answers {
        match by_code.iter_mut().find(|(seen, _)| *seen == code) {
            Some((_, count)) => *count += 1,
            None => by_code.push((code, 1)),
        }
    }
    by_code.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    Flood {
        addresses: scale.flood_addresses,
        window: scale.flood_window,
        bound,
        offered_per_second,
        sent,
        answers: by_code,
        slowest,
        gateway_peak_mib: mib(gateway.process().peak_rss()),
        client,
    }
}

/// Logins with wrong passwords for random emails, `rate` a second for `window`, spread
/// over `channels` in turn; each call's answer code and how long it waited.
async fn send_flood(channels: &[Channel], rate: f64, window: Duration) -> Vec<(Code, Duration)> {
    let total = (rate * window.as_secs_f64()).ceil() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let began = tokio::time::Instant::now();
    let mut calls = Vec::with_capacity(total);
    for index in 0..total {
        tokio::time::sleep_until(began + interval.mul_f64(index as f64)).await;
        let mut client = AuthServiceClient::new(channels[index % channels.len()].clone());
        calls.push(tokio::spawn(async move {
            let request = LoginRequest {
                email: format!("flood-{}@bench.example", uuid::Uuid::new_v4()),
                password: "not the password".to_owned(),
            };
            let sent = Instant::now();
            let code = match client.login(deadline(tonic::Request::new(request))).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            (code, sent.elapsed())
        }));
    }
    join_all(calls)
        .await
        .into_iter()
        .map(|call| call.expect("a flood call"))
        .collect()
}

/// Rounds of Me and ListFiles (Refresh every [`REFRESH_EVERY`], following its token
/// chain) with a short pause, until `stop`.
async fn well_behaved(
    channel: Channel,
    mut access: String,
    mut refresh: String,
    stop: Arc<AtomicBool>,
) -> [(&'static str, Calls); 3] {
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut storage = StorageServiceClient::new(channel);
    let mut kinds: [(Vec<Duration>, Vec<String>); 3] = Default::default();
    let mut refreshed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if refreshed.elapsed() >= REFRESH_EVERY {
            refreshed = Instant::now();
            let request = RefreshRequest {
                refresh_token: refresh.clone(),
            };
            let began = Instant::now();
            match auth.refresh(deadline(tonic::Request::new(request))).await {
                Ok(response) => {
                    kinds[0].0.push(began.elapsed());
                    if let Some(tokens) = response.into_inner().tokens {
                        (access, refresh) = (tokens.access_token, tokens.refresh_token);
                    }
                }
                Err(status) => {
                    kinds[0]
                        .1
                        .push(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        }
        let began = Instant::now();
        match auth.me(deadline(with_bearer(MeRequest {}, &access))).await {
            Ok(_) => kinds[1].0.push(began.elapsed()),
            Err(status) => kinds[1]
                .1
                .push(format!("{:?}: {}", status.code(), status.message())),
        }
        let began = Instant::now();
        let list = with_bearer(ListFilesRequest::default(), &access);
        match storage.list_files(deadline(list)).await {
            Ok(_) => kinds[2].0.push(began.elapsed()),
            Err(status) => kinds[2]
                .1
                .push(format!("{:?}: {}", status.code(), status.message())),
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    let [refreshes, mes, lists] = kinds;
    [
        ("Refresh", Calls::from(refreshes.0, refreshes.1)),
        ("Me", Calls::from(mes.0, mes.1)),
        ("ListFiles", Calls::from(lists.0, lists.1)),
    ]
}

async fn idle_sockets(gateway: &Service, scale: &Scale, token: &str) -> IdleSockets {
    let address: SocketAddr = gateway
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let began = Instant::now();
    let give_up = scale.header_read_timeout * 3 + CLOSE_SLACK;
    let sockets: Vec<_> = futures::stream::iter(0..scale.idle_sockets)
        .map(|index| {
            let source = loopback(1, index / CONNECTIONS_PER_ADDRESS);
            idle_socket(source, address, give_up)
        })
        .buffer_unordered(OPENING_AT_ONCE)
        .collect()
        .await;
    let all_open = Instant::now();
    // Spawned tasks wait for the gateway to close each socket; meanwhile a new client.
    let new_client_me = timed_me(
        channel_from(gateway, Ipv4Addr::new(127, 0, 0, 201)).connect_lazy(),
        token,
    )
    .await;
    let mut numbers = IdleSockets {
        opened: 0,
        connect_failures: 0,
        refused: 0,
        never_closed: 0,
        header_read_timeout: scale.header_read_timeout,
        longest_open: Duration::ZERO,
        all_closed_after: Duration::ZERO,
        new_client_me,
    };
    for socket in sockets {
        let Some(waiting) = socket else {
            numbers.connect_failures += 1;
            continue;
        };
        numbers.opened += 1;
        match waiting.await.expect("an idle socket's task") {
            Some((open_for, closed_at)) => {
                if open_for < Duration::from_secs(1).min(scale.header_read_timeout / 2) {
                    numbers.refused += 1;
                }
                numbers.longest_open = numbers.longest_open.max(open_for);
                numbers.all_closed_after = numbers
                    .all_closed_after
                    .max(closed_at.saturating_duration_since(all_open));
            }
            None => numbers.never_closed += 1,
        }
    }
    println!(
        "idle sockets: {} opened in {:.1} s",
        numbers.opened,
        (all_open - began).as_secs_f64()
    );
    numbers
}

/// Connects from `source` and sends nothing; the task resolves to how long the socket
/// stayed open and when the gateway closed it, or `None` if it was still open after
/// `give_up`. `None` for the whole if it could not connect.
async fn idle_socket(
    source: Ipv4Addr,
    gateway: SocketAddr,
    give_up: Duration,
) -> Option<tokio::task::JoinHandle<Option<(Duration, Instant)>>> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((source, 0))).ok()?;
    let mut stream = tokio::time::timeout(CALL_DEADLINE, socket.connect(gateway))
        .await
        .ok()?
        .ok()?;
    let connected = Instant::now();
    Some(tokio::spawn(async move {
        let mut byte = [0u8; 1];
        // Ok(0) (closed) or an error (reset) both mean the gateway let go.
        let _closed_or_reset = tokio::time::timeout(give_up, stream.read(&mut byte))
            .await
            .ok()?;
        let closed = Instant::now();
        Some((closed - connected, closed))
    }))
}

async fn timed_me(channel: Channel, token: &str) -> Result<Duration, String> {
    let began = Instant::now();
    AuthServiceClient::new(channel)
        .me(deadline(with_bearer(MeRequest {}, token)))
        .await
        .map(|_| began.elapsed())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

async fn concurrent_me(gateway: &Service, connections: usize, scale: &Scale, token: &str) -> Step {
    // Each connection calls `Me` once as soon as it is open: the gateway closes a
    // connection that sends nothing within the header-read timeout, and opening
    // thousands takes a while.
    // Consecutive connections come from different addresses, and at most 32 per address
    // open at once, so their first calls stay under the per-client cap on open calls (64).
    let addresses = connections.div_ceil(CONNECTIONS_PER_ADDRESS);
    let at_once = OPENING_AT_ONCE.min(addresses * 32);
    let opened: Vec<Result<Channel, String>> = futures::stream::iter(0..connections)
        .map(|index| {
            let endpoint = channel_from(gateway, loopback(2, index % addresses));
            async move {
                let channel = endpoint.connect().await.map_err(|err| err.to_string())?;
                timed_me(channel.clone(), token).await?;
                Ok(channel)
            }
        })
        .buffer_unordered(at_once)
        .collect()
        .await;
    let (channels, unopened): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);
    let channels: Vec<Channel> = channels.into_iter().flatten().collect();
    let first_unopened = unopened.into_iter().find_map(Result::err);
    let unopened = connections - channels.len();
    let began = tokio::time::Instant::now();
    let (pace, window) = (scale.me_pace, scale.step_window);
    let count = channels.len().max(1);
    let callers = channels.into_iter().enumerate().map(|(index, channel)| {
        let token = token.to_owned();
        // Spread evenly over the pace, so the calls arrive at a steady rate.
        let first = began + pace.mul_f64(index as f64 / count as f64);
        tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            let mut next = first;
            while next < began + window {
                tokio::time::sleep_until(next).await;
                match timed_me(channel.clone(), &token).await {
                    Ok(latency) => latencies.push(latency),
                    Err(error) => errors.push(error),
                }
                next += pace;
            }
            (latencies, errors)
        })
    });
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    for caller in join_all(callers).await {
        let (some_latencies, some_errors) = caller.expect("a Me caller");
        latencies.extend(some_latencies);
        errors.extend(some_errors);
    }
    Step {
        connections,
        unopened,
        first_unopened,
        me: Calls::from(latencies, errors),
        gateway_peak_mib: mib(gateway.process().peak_rss()),
    }
}
