//! What upload and download measurements share: a row of four paths side by side, the
//! CPU each process spent per MiB moved, clients that repeat their transfers in rounds,
//! and the content every benchmark file has.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use strongbox_tests::process::cpu_time;

use crate::system::System;

pub const MIB: u64 = 1024 * 1024;

/// One row of the report: a size and a concurrency, measured four ways, (a) to (d).
pub struct Row {
    pub size: u64,
    pub concurrency: usize,
    /// Transfers each concurrent client made one after another.
    pub rounds: u64,
    /// MiB/s of (a), (b), (c), (d).
    pub rates: [f64; 4],
    /// Peak RSS in MiB: storage-service during (b), (c), (d); the gateway during (c), (d).
    pub storage_peak: [u64; 3],
    pub gateway_peak: [u64; 2],
    /// CPU time per MiB moved in (a), (b), (c), (d).
    pub cpu: [Cpu; 4],
}

impl Row {
    /// How many cores' worth of CPU the processes used while `path` (0 to 3: (a) to
    /// (d)) ran: its CPU per MiB times its MiB/s. Near the machine's cores, the CPU was
    /// the limit of that measurement.
    pub fn cores_busy(&self, path: usize) -> f64 {
        self.cpu[path].total() * self.rates[path] / 1000.0
    }
}

/// Milliseconds of CPU per MiB moved, by process: this one (the clients and the S3
/// server), storage-service, the gateway. Where they add up to the cores × the time,
/// the machine is the limit, and each hop's share is what it costs.
#[derive(Default, Clone, Copy)]
pub struct Cpu {
    pub bench: f64,
    pub storage: f64,
    pub gateway: f64,
    /// How many cores the whole machine kept busy meanwhile, every process counted
    /// (ours and whatever else runs here: on a shared machine, the CPU may be the limit
    /// while ours use less of it).
    pub machine_cores: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.bench + self.storage + self.gateway
    }
}

/// CPU time of this process, storage-service and the gateway, and of the whole
/// machine, since [`CpuMeter::start`].
pub struct CpuMeter<'a> {
    system: &'a System,
    start: [Duration; 3],
    machine_start: Duration,
    began: Instant,
}

impl<'a> CpuMeter<'a> {
    pub fn start(system: &'a System) -> Self {
        Self {
            system,
            start: Self::now(system),
            machine_start: machine_busy(),
            began: Instant::now(),
        }
    }

    fn now(system: &System) -> [Duration; 3] {
        [
            cpu_time(None),
            system.storage.process().cpu_time(),
            system.gateway.process().cpu_time(),
        ]
    }

    pub fn per_mib(self, total: u64) -> Cpu {
        let end = Self::now(self.system);
        let machine = machine_busy().saturating_sub(self.machine_start);
        let mibs = total as f64 / MIB as f64;
        let ms = |at: usize| (end[at] - self.start[at]).as_secs_f64() * 1000.0 / mibs;
        Cpu {
            bench: ms(0),
            storage: ms(1),
            gateway: ms(2),
            machine_cores: machine.as_secs_f64() / self.began.elapsed().as_secs_f64(),
        }
    }
}

/// CPU time every core of the machine has spent busy since boot, whatever ran: the
/// first line of `/proc/stat` less idle and I/O wait (guest time is already counted
/// in user time).
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice, in USER_HZ (100/s).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&at| ticks.get(at))
        .sum();
    Duration::from_millis(busy * 10)
}

/// The cores this machine has: the CPU limit every measurement shares.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `concurrency` clients at once, each making `rounds` transfers one after another;
/// `start` gets the transfer's index, `client * rounds + round`.
pub async fn run<F, Fut, T>(concurrency: usize, rounds: u64, start: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T>,
{
    let start = &start;
    let clients = (0..concurrency).map(|client| async move {
        let mut done = Vec::new();
        for round in 0..rounds as usize {
            done.push(start(client * rounds as usize + round).await);
        }
        done
    });
    join_all(clients).await.into_iter().flatten().collect()
}

pub async fn timed<T>(work: impl Future<Output = T>) -> (Duration, T) {
    let began = Instant::now();
    let outcome = work.await;
    (began.elapsed(), outcome)
}

/// A file of `size` bytes as `chunk`-sized slices of `block` repeated (byte `n` is
/// `block[n % block.len()]`): producing it costs the client nothing, every way of
/// sending it (1 MiB messages, 8 MiB session chunks, one PutFile) sends the same bytes,
/// and its consecutive MiBs differ, so a path that repeated or reordered them would
/// change its SHA-256. `chunk` divides `block.len()`.
pub fn chunks(
    size: u64,
    block: &Bytes,
    chunk: u64,
) -> impl Iterator<Item = Bytes> + Send + 'static {
    let block = block.clone();
    let period = block.len() as u64;
    debug_assert_eq!(period % chunk, 0, "a chunk never wraps around the block");
    (0..size.div_ceil(chunk)).map(move |index| {
        let start = (index * chunk) % period;
        let length = chunk.min(size - index * chunk);
        block.slice(start as usize..(start + length) as usize)
    })
}

/// The SHA-256 of the [`chunks`] file of `size` bytes, as 64 lower-case hex digits.
pub fn content_sha256(size: u64, block: &Bytes) -> String {
    let mut digest = Sha256::new();
    chunks(size, block, block.len() as u64).for_each(|chunk| digest.update(&chunk));
    hex::encode(digest.finalize())
}

pub fn human(size: u64) -> String {
    if size >= 1024 * MIB {
        format!("{} GiB", size / (1024 * MIB))
    } else {
        format!("{} MiB", size / MIB)
    }
}
