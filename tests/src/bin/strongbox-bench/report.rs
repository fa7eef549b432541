//! `docs/BENCHMARKS.md`: the tables, and each target of issues 6, 12 and 16 with its
//! verdict computed from this run's numbers (never typed in by hand).

use std::fmt::Write as _;
use std::time::Duration;

use crate::Plan;
use tonic::Code;

use crate::auth::{AuthNumbers, Latencies};
use crate::downloads::{Downloads, SlowReader, describe};
use crate::hostile::{Calls, FLOOD_FACTOR, Flood, HostileNumbers, IdleSockets, Step};
use crate::replicas::ReplicaRow;
use crate::transfers::{MIB, Row, cores, human};

const GATEWAY_GRPC_TARGET: f64 = 0.9;
const GRPC_WEB_TARGET: f64 = 0.7;
const SINGLE_UPLOAD_RSS_MIB: u64 = 64;
const CONCURRENT_RSS_MIB: u64 = 256;
const LOGIN_TARGET: f64 = 0.9;
const LOADED_P99_FACTOR: f64 = 2.0;

pub fn throughput_line(row: &Row) -> String {
    let [a, b, c, d] = row.rates;
    format!(
        "| {} | {} | {} | {a:.0} | {b:.0} ({:.2}) | {c:.0} ({:.2}) | {d:.0} ({:.2}) |",
        human(row.size),
        row.concurrency,
        row.rounds,
        b / a,
        c / a,
        d / a
    )
}

fn memory_line(row: &Row) -> String {
    let [b, c, d] = row.storage_peak;
    let [gc, gd] = row.gateway_peak;
    format!(
        "| {} | {} | {b} | {c} / {gc} | {d} / {gd} |",
        human(row.size),
        row.concurrency
    )
}

pub fn cpu_line(row: &Row) -> String {
    let [a, b, c, d] = row.cpu;
    format!(
        "| {} | {} | {:.1} | {:.1} + {:.1} | {:.1} + {:.1} + {:.1} | {:.1} + {:.1} + {:.1} |",
        human(row.size),
        row.concurrency,
        a.bench,
        b.bench,
        b.storage,
        c.bench,
        c.gateway,
        c.storage,
        d.bench,
        d.gateway,
        d.storage
    )
}

pub fn auth_table(auth: &AuthNumbers) -> String {
    let me = |name: &str, latencies: &Latencies| {
        format!(
            "| {name} | {:.0}/s | {} | {} |\n",
            latencies.per_second,
            ms(latencies.p50),
            ms(latencies.p99)
        )
    };
    let mut table = format!(
        "| measure | throughput | p50 | p99 |\n|---|---|---|---|\n\
         | one bcrypt hash, cost 12, one core | | {} | |\n\
         | {} bare threads hashing at once, no service (what the machine gives) | {:.2}/s ({:.2} of the bound) | | |\n\
         | Login, {} callers (bound: {} cores ÷ one hash = {:.2}/s) | {:.2}/s ({:.2} of the bound) | | |\n",
        ms(auth.hash_time),
        auth.cores,
        auth.bare_hashes_per_second,
        auth.bare_ratio(),
        2 * auth.cores,
        auth.cores,
        auth.bound(),
        auth.logins_per_second,
        auth.login_ratio(),
    );
    table.push_str(&me("Me, 16 concurrent", &auth.me_16));
    table.push_str(&me("Me, 64 concurrent", &auth.me_64));
    table.push_str(&me(
        &format!(
            "Me, 16 concurrent, while logins saturate the CPU ({:.2} logins/s meanwhile)",
            auth.logins_while_loaded
        ),
        &auth.me_16_loaded,
    ));
    table.push_str(&me(
        "Refresh, 16 sessions rotating at once (one write transaction each)",
        &auth.refresh_16,
    ));
    table.push_str(&me(
        "Me, 16 concurrent, accounts on PostgreSQL",
        &auth.me_16_postgres,
    ));
    table.push_str(&me(
        "Refresh, 16 sessions rotating at once, accounts on PostgreSQL",
        &auth.refresh_16_postgres,
    ));
    table
}

pub fn render(
    plan: &Plan,
    rows: &[Row],
    replicas: &[ReplicaRow],
    downloads: &Downloads,
    auth: &AuthNumbers,
    hostile: &HostileNumbers,
) -> String {
    let mut out = String::new();
    let cpu = cpu_model();
    let _ = write!(
        out,
        "# Benchmarks\n\n\
         Written by `strongbox-bench` ({mode}) on {date}: {cores} cores ({cpu}), {build} build.\n\
         Regenerate with `cargo run --release -p strongbox-tests --bin strongbox-bench`; what the\n\
         numbers mean, what was changed because of them and what is left is in\n\
         [PERFORMANCE.md](PERFORMANCE.md).\n\n\
         The three services run as separate processes on loopback; the S3 server is s3s-fs, in the\n\
         benchmark's own process with the clients. Everything shares this machine's {cores} cores, so\n\
         (a) is the limit of the machine, not of the network.\n\n",
        mode = if plan.quick { "quick mode" } else { "full run" },
        date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cores = auth.cores,
        build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let _ = write!(
        out,
        "## Upload throughput\n\nMiB/s over all concurrent uploads, ratio to (a) in parentheses. Each concurrent\n\
         client uploads one file after another until the measurement has moved at least {least} MiB\n\
         (*rounds*), so small files are timed over many uploads, not one of a few milliseconds.\n\n\
         | size | concurrent | rounds | (a) object_store → S3 | (b) storage-service | (c) gateway, gRPC | (d) gateway, grpc-web |\n\
         |---|---|---|---|---|---|---|\n",
        least = plan.least_per_measurement / MIB,
    );
    for row in rows {
        let _ = writeln!(out, "{}", throughput_line(row));
    }
    out.push_str(
        "\n## Peak memory\n\nPeak RSS in MiB (`VmHWM`; the services are started afresh for each measurement)\n\
         of storage-service, and storage-service / gateway where the gateway is in the path.\n\n\
         | size | concurrent | (b) storage | (c) storage / gateway | (d) storage / gateway |\n\
         |---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(out, "{}", memory_line(row));
    }
    out.push_str(
        "\n## Where the CPU goes\n\nMilliseconds of CPU per MiB uploaded: the benchmark process (clients and S3 server)\n\
         \\+ the gateway + storage-service, as far as each is in the path.\n\n\
         | size | concurrent | (a) bench | (b) bench + storage | (c) bench + gateway + storage | (d) bench + gateway + storage |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(out, "{}", cpu_line(row));
    }
    out.push_str(
        "\n## Throughput against CPU cost\n\nEach path's ratio to (a), measured / *CPU-cost ratio*: (a)'s CPU per MiB divided by\n\
         the path's (table above), which is the ratio the path reaches if the machine runs it\n\
         with as much CPU busy as it ran (a). Where the two agree, the path is as fast as the CPU\n\
         it costs per MiB allows, and the gap to 1.0 is the CPU the services add.\n\n\
         | size | concurrent | (b) storage-service | (c) gateway, gRPC | (d) gateway, grpc-web |\n\
         |---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(out, "{}", cost_line(row));
    }
    out.push_str(
        "\n## Storage replicas on PostgreSQL\n\nUploads through a gateway, MiB/s and files/s, ratio to the one replica on SQLite\n\
         in parentheses: the main gateway and storage-service (the index in SQLite), then a\n\
         gateway in front of one and of two storage-services whose index is one PostgreSQL\n\
         database (the server on the same cores, as in the auth-service rows below). The\n\
         gateway spreads the calls over both replicas.\n\n\
         | size | concurrent | rounds | one replica, SQLite | one replica, PostgreSQL | two replicas, PostgreSQL |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in replicas {
        let _ = writeln!(out, "{}", replicas_line(row));
    }
    out.push('\n');
    out.push_str(&downloads_section(
        downloads,
        crate::downloads::least_per_measurement(plan),
    ));
    out.push_str(
        "\n## auth-service\n\n\
         Straight to auth-service, no gateway. The PostgreSQL rows run a second auth-service \
         whose accounts are on a PostgreSQL 15 server on the same two cores (the test \
         suites' throwaway cluster: loopback, fsync off, as SQLite's WAL here commits \
         without an fsync of its own).\n\n",
    );
    out.push_str(&auth_table(auth));
    out.push('\n');
    out.push_str(&hostile_section(hostile));
    out.push_str(
        "\n## Targets\n\nRatios to three places, so one at a target reads as what was compared; next to \
         a throughput ratio, its row's CPU-cost ratio (see above).\n\n\
         | target | this run | verdict |\n|---|---|---|\n",
    );
    push_verdicts(&mut out, verdicts(rows, auth));
    push_verdicts(&mut out, download_verdicts(downloads));
    push_verdicts(&mut out, hostile_verdicts(hostile));
    out
}

pub fn replicas_line(row: &ReplicaRow) -> String {
    let cell = |column: usize| {
        format!(
            "{:.0} MiB/s, {:.0} files/s ({:.2})",
            row.rates[column],
            row.files_per_second(column),
            row.rates[column] / row.rates[0]
        )
    };
    format!(
        "| {} | {} | {} | {} | {} | {} |",
        human(row.size),
        row.concurrency,
        row.rounds,
        cell(0),
        cell(1),
        cell(2)
    )
}

/// (a)'s CPU per MiB over `path`'s (1 to 3: (b) to (d)) in `row`: the ratio to (a) the
/// path reaches if the machine runs it with as much of its CPU busy as it ran (a).
fn cost_ratio(row: &Row, path: usize) -> f64 {
    row.cpu[0].total() / row.cpu[path].total()
}

fn cost_line(row: &Row) -> String {
    format!(
        "| {} | {} | {} |",
        human(row.size),
        row.concurrency,
        cost_cells(row)
    )
}

/// Measured / CPU-cost ratio of (b), (c), (d).
fn cost_cells(row: &Row) -> String {
    let [_, b, c, d] = row.rates.map(|rate| rate / row.rates[0]);
    format!(
        "{b:.2} / {:.2} | {c:.2} / {:.2} | {d:.2} / {:.2}",
        cost_ratio(row, 1),
        cost_ratio(row, 2),
        cost_ratio(row, 3),
    )
}

/// Each target of issue 6: what it asks, what this run measured, whether it holds.
fn verdicts(rows: &[Row], auth: &AuthNumbers) -> Vec<(String, String, bool)> {
    let mut verdicts = Vec::new();
    let worst = |column: usize| {
        rows.iter()
            .map(|row| (row.rates[column] / row.rates[0], row))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .expect("at least one row")
    };
    for (column, name, target) in [
        (2, "(c) gateway, gRPC", GATEWAY_GRPC_TARGET),
        (3, "(d) gateway, grpc-web", GRPC_WEB_TARGET),
    ] {
        let (ratio, row) = worst(column);
        verdicts.push((
            format!("{name} ≥ {target} × (a), every row"),
            format!(
                "lowest {ratio:.3} ({} × {}; CPU-cost ratio {:.2})",
                human(row.size),
                row.concurrency,
                cost_ratio(row, column),
            ),
            ratio >= target,
        ));
    }
    for (single, limit) in [(true, SINGLE_UPLOAD_RSS_MIB), (false, CONCURRENT_RSS_MIB)] {
        let peak = rows
            .iter()
            .filter(|row| (row.concurrency == 1) == single)
            .flat_map(|row| row.storage_peak.into_iter().chain(row.gateway_peak))
            .max()
            .unwrap_or(0);
        let which = if single {
            "one upload"
        } else {
            "concurrent uploads"
        };
        verdicts.push((
            format!("storage-service and gateway peak RSS ≤ {limit} MiB, {which}"),
            format!("highest {peak} MiB"),
            peak <= limit,
        ));
    }
    let login_ratio = auth.login_ratio();
    verdicts.push((
        format!("Login ≥ {LOGIN_TARGET} × the bcrypt bound"),
        format!(
            "{login_ratio:.3} (bare threads hashing: {:.3})",
            auth.bare_ratio()
        ),
        login_ratio >= LOGIN_TARGET,
    ));
    let loaded = auth.me_16_loaded.p99.as_secs_f64() / auth.me_16.p99.as_secs_f64();
    verdicts.push((
        format!("Me p99 under login saturation < {LOADED_P99_FACTOR} × idle"),
        format!(
            "{} vs {} idle ({loaded:.2}×)",
            ms(auth.me_16_loaded.p99),
            ms(auth.me_16.p99)
        ),
        loaded < LOADED_P99_FACTOR,
    ));
    verdicts
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

const CLIENT_P99_MS: u64 = 100;
const FLOOD_WAIT_MS: u64 = 1_000;
const FLOOD_GATEWAY_RSS_MIB: u64 = 64;
const CONCURRENT_ME_P99_MS: u64 = 50;
const CONCURRENT_CONNECTIONS_TARGET: usize = 5_000;

pub fn flood_lines(flood: &Flood) -> String {
    let mut lines = format!(
        "Login flood: {} addresses, {:.0} s, offered {:.1}/s ({FLOOD_FACTOR:.0} × the bound of {:.2}/s), {} sent; \
         answered: {}; slowest answer {}; gateway peak RSS {} MiB\n",
        flood.addresses,
        flood.window.as_secs_f64(),
        flood.offered_per_second,
        flood.bound,
        flood.sent,
        answers(flood),
        ms(flood.slowest),
        flood.gateway_peak_mib,
    );
    for (kind, calls) in &flood.client {
        let _ = writeln!(lines, "  well-behaved {kind}: {}", calls_text(calls));
    }
    lines
}

fn answers(flood: &Flood) -> String {
    flood
        .answers
        .iter()
        .map(|(code, count)| format!("{count} {}", code_name(*code)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn code_name(code: Code) -> String {
    let meaning = match code {
        Code::Unauthenticated => " (hashed: wrong password)",
        Code::ResourceExhausted => " (gateway rate limit)",
        Code::Unavailable => " (shed by auth-service)",
        Code::DeadlineExceeded | Code::Cancelled => " (no answer within 5 s)",
        _ => "",
    };
    format!("{code:?}{meaning}")
}

fn calls_text(calls: &Calls) -> String {
    let mut text = format!(
        "{} calls, p50 {}, p99 {}, slowest {}, {} errors",
        calls.count,
        ms(calls.p50),
        ms(calls.p99),
        ms(calls.slowest),
        calls.errors
    );
    if let Some(error) = &calls.first_error {
        let _ = write!(text, " (first: {error})");
    }
    text
}

pub fn idle_line(idle: &IdleSockets) -> String {
    format!(
        "Idle sockets: {} opened ({} could not connect), {} accepted, {} refused at once; \
         header-read timeout {} s; longest open {:.1} s; all closed {:.1} s after the last opened; \
         {} still open at the end; a new client's Me meanwhile: {}",
        idle.opened,
        idle.connect_failures,
        idle.accepted(),
        idle.refused,
        idle.header_read_timeout.as_secs(),
        idle.longest_open.as_secs_f64(),
        idle.all_closed_after.as_secs_f64(),
        idle.never_closed,
        new_client_text(idle),
    )
}

fn new_client_text(idle: &IdleSockets) -> String {
    match &idle.new_client_me {
        Ok(latency) => format!("answered in {} (connection included)", ms(*latency)),
        Err(error) => format!("**failed**: {error}"),
    }
}

pub fn step_line(step: &Step) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        step.connections,
        step.unopened,
        step.me.count,
        step.me.errors,
        ms(step.me.p50),
        ms(step.me.p99),
        step.gateway_peak_mib,
    )
}

/// The connection count of the largest step whose `Me` p99 met the target, with no
/// errors and every connection open.
fn most_concurrent(hostile: &HostileNumbers) -> Option<&Step> {
    hostile
        .steps
        .iter()
        .filter(|step| {
            step.unopened == 0
                && step.me.errors == 0
                && step.me.p99 < Duration::from_millis(CONCURRENT_ME_P99_MS)
        })
        .max_by_key(|step| step.connections)
}

pub fn hostile_section(hostile: &HostileNumbers) -> String {
    let flood = &hostile.flood;
    let mut out = format!(
        "## Hostile load\n\nEach part against a gateway process of its own, started fresh with the default limits \
         (Login: 30/m per address, burst 30; 64 open calls and 128 connections per address), in front of\n\
         the same auth-service (bcrypt cost 12, a hashing queue of its default size). Clients bind distinct\n\
         loopback source addresses, so the gateway sees each as its own client. The upload measurements\n\
         above run with `RATE_LIMIT_STORAGE=off` (one benchmark user moves hundreds of files a second,\n\
         which a per-user limit meant for people would throttle); every other limit is at its default there too.\n\n\
         ### Login flood\n\n\
         Wrong passwords for random emails from {} addresses (one connection each), {:.1}/s for {:.0} s: \
         {FLOOD_FACTOR:.0} × what the cores can hash ({:.2}/s). Sent on a schedule, whatever the answers.\n\n\
         | flood | |\n|---|---|\n\
         | offered | {} calls ({:.1}/s) |\n\
         | answered | {} |\n\
         | admitted by the gateway / hashed | {} / {} |\n\
         | slowest answer | {} |\n\
         | gateway peak RSS | {} MiB |\n\n\
         Meanwhile a well-behaved client on its own address (logged in before the flood) repeats Me and\n\
         ListFiles with a {} ms pause, and Refresh (following its token chain) every {:.1} s:\n\n\
         | call | calls | errors | p50 | p99 | slowest |\n|---|---|---|---|---|---|\n",
        flood.addresses,
        flood.offered_per_second,
        flood.window.as_secs_f64(),
        flood.bound,
        flood.sent,
        flood.offered_per_second,
        answers(flood),
        flood.sent - flood.answered(Code::ResourceExhausted),
        flood.answered(Code::Unauthenticated),
        ms(flood.slowest),
        flood.gateway_peak_mib,
        crate::hostile::ROUND_PAUSE.as_millis(),
        crate::hostile::REFRESH_EVERY.as_secs_f64(),
    );
    for (kind, calls) in &flood.client {
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} | {} |",
            calls.count,
            calls.errors,
            ms(calls.p50),
            ms(calls.p99),
            ms(calls.slowest)
        );
    }
    let idle = &hostile.idle;
    let _ = write!(
        out,
        "\n### Idle connections\n\n{} TCP connections that send nothing, at most {} per source address, \
         to a gateway with\n`GATEWAY_HEADER_READ_TIMEOUT_SECONDS={}`.\n\n\
         | idle sockets | |\n|---|---|\n\
         | opened (could not connect) | {} ({}) |\n\
         | accepted / refused at once | {} / {} |\n\
         | longest any stayed open | {:.1} s |\n\
         | all closed, after the last was opened | {:.1} s |\n\
         | still open at the end | {} |\n\
         | a new client's Me meanwhile | {} |\n",
        idle.opened + idle.connect_failures,
        crate::hostile::CONNECTIONS_PER_ADDRESS,
        idle.header_read_timeout.as_secs(),
        idle.opened,
        idle.connect_failures,
        idle.accepted(),
        idle.refused,
        idle.longest_open.as_secs_f64(),
        idle.all_closed_after.as_secs_f64(),
        idle.never_closed,
        new_client_text(idle),
    );
    let _ = write!(
        out,
        "\n### Concurrent connections\n\nN connections, each its own channel (at most {} per source address), \
         each calling Me once every {:.0} s\nfor {:.0} s, spread evenly; latency as the client sees it, \
         in this process, which shares the cores.\n\n\
         | connections | could not open | Me calls | errors | p50 | p99 | gateway peak RSS (MiB) |\n\
         |---|---|---|---|---|---|---|\n",
        crate::hostile::CONNECTIONS_PER_ADDRESS,
        hostile.me_pace.as_secs_f64(),
        hostile.step_window.as_secs_f64(),
    );
    for step in &hostile.steps {
        let _ = writeln!(out, "{}", step_line(step));
    }
    out
}

/// Each target of issue 12: what it asks, what this run measured, whether it holds.
fn hostile_verdicts(hostile: &HostileNumbers) -> Vec<(String, String, bool)> {
    let flood = &hostile.flood;
    let worst_p99 = flood
        .client
        .iter()
        .max_by_key(|(_, calls)| calls.p99)
        .expect("three kinds of call");
    let errors: usize = flood.client.iter().map(|(_, calls)| calls.errors).sum();
    let idle = &hostile.idle;
    let best = most_concurrent(hostile);
    vec![
        (
            format!(
                "during a Login flood at {FLOOD_FACTOR:.0} × the bcrypt bound: a well-behaved client's p99 < {CLIENT_P99_MS} ms"
            ),
            format!("worst {} ({})", ms(worst_p99.1.p99), worst_p99.0),
            worst_p99.1.p99 < Duration::from_millis(CLIENT_P99_MS),
        ),
        (
            "… and its errors = 0".to_owned(),
            format!("{errors}"),
            errors == 0,
        ),
        (
            format!("… no flood call waits longer than {FLOOD_WAIT_MS} ms"),
            format!("slowest {}", ms(flood.slowest)),
            flood.slowest <= Duration::from_millis(FLOOD_WAIT_MS),
        ),
        (
            format!("… gateway peak RSS < {FLOOD_GATEWAY_RSS_MIB} MiB"),
            format!("{} MiB", flood.gateway_peak_mib),
            flood.gateway_peak_mib < FLOOD_GATEWAY_RSS_MIB,
        ),
        (
            format!(
                "{} idle sockets: all accepted, all closed within the header-read timeout ({} s, +{} s to close)",
                idle.opened + idle.connect_failures,
                idle.header_read_timeout.as_secs(),
                crate::hostile::CLOSE_SLACK.as_secs()
            ),
            format!(
                "{} accepted, longest open {:.1} s, {} never closed",
                idle.accepted(),
                idle.longest_open.as_secs_f64(),
                idle.never_closed
            ),
            idle.connect_failures == 0 && idle.refused == 0 && idle.closed_in_time(),
        ),
        (
            "… a new client's Me succeeds meanwhile".to_owned(),
            new_client_text(idle),
            idle.new_client_me.is_ok(),
        ),
        (
            format!(
                "concurrent connections served with Me p99 < {CONCURRENT_ME_P99_MS} ms ≥ {CONCURRENT_CONNECTIONS_TARGET}"
            ),
            best.map_or_else(
                || "none of the steps".to_owned(),
                |step| format!("{} (p99 {})", step.connections, ms(step.me.p99)),
            ),
            best.is_some_and(|step| step.connections >= CONCURRENT_CONNECTIONS_TARGET),
        ),
    ]
}

/// The hostile-load section and its targets alone (`--hostile-only`).
pub fn hostile_report(hostile: &HostileNumbers) -> String {
    let mut out = hostile_section(hostile);
    out.push_str("\n| target | this run | verdict |\n|---|---|---|\n");
    push_verdicts(&mut out, hostile_verdicts(hostile));
    out
}

/// Whether a target holds in this run; one whose condition no row meets is not judged.
enum Verdict {
    Met,
    Missed,
    NotJudged,
}

impl From<bool> for Verdict {
    fn from(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }
}

fn push_verdicts(out: &mut String, verdicts: Vec<(String, String, impl Into<Verdict>)>) {
    for (target, measured, verdict) in verdicts {
        let word = match verdict.into() {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotJudged => "not judged",
        };
        let _ = writeln!(out, "| {target} | {measured} | {word} |");
    }
}

const GATEWAY_DOWNLOAD_TARGET: f64 = 0.9;
const SINGLE_DOWNLOAD_RSS_MIB: u64 = 64;
const CONCURRENT_DOWNLOADS_RSS_MIB: u64 = 256;
/// (a) counts as CPU-bound where the machine had at least this share of its cores busy.
const CPU_BOUND_SHARE: f64 = 0.9;

/// Whether the machine's CPU was what limited (a) in `row`: its cores were busy, with
/// (a)'s processes or anything else running here.
fn baseline_cpu_bound(row: &Row) -> bool {
    row.cpu[0].machine_cores >= CPU_BOUND_SHARE * cores() as f64
}

/// The cores (a)'s processes kept busy / the whole machine did.
fn baseline_cores(row: &Row) -> String {
    format!("{:.2} / {:.2}", row.cores_busy(0), row.cpu[0].machine_cores)
}

pub fn slow_reader_line(slow: &SlowReader) -> String {
    format!(
        "| {} | {} MiB | {} | {} |",
        describe(slow),
        slow.received / MIB,
        slow.storage_peak,
        slow.gateway_peak
    )
}

fn download_cost_line(row: &Row) -> String {
    format!(
        "| {} | {} | {} | {} |",
        human(row.size),
        row.concurrency,
        baseline_cores(row),
        cost_cells(row)
    )
}

pub fn downloads_section(downloads: &Downloads, least: u64) -> String {
    let mut out = format!(
        "## Downloads\n\nMiB/s over all concurrent downloads, ratio to (a) in parentheses. Each size's files are\n\
         uploaded once through storage-service (one per client, each client its own user), then every path\n\
         downloads them; each concurrent client downloads its file again until the measurement has moved\n\
         at least {least} MiB (*rounds*). Every byte received is counted and each download's size checked; the\n\
         first download of each measurement is also hashed against the uploaded content's SHA-256. (d) asks\n\
         the gateway for the file's presigned S3 URL (`GetDownloadUrl`) and fetches it over HTTP/1.1 with\n\
         reqwest, streaming, as a browser does.\n\n\
         | size | concurrent | rounds | (a) object_store GET ← S3 | (b) storage-service Download | (c) gateway, Download | (d) presigned URL, HTTP |\n\
         |---|---|---|---|---|---|---|\n",
        least = least / MIB,
    );
    for row in &downloads.rows {
        let _ = writeln!(out, "{}", throughput_line(row));
    }
    out.push_str(
        "\n### Peak memory, downloads\n\nPeak RSS in MiB (`VmHWM`; the services are started afresh for each column) of\n\
         storage-service, and storage-service / gateway where the gateway is in the path. In (d) the bytes\n\
         come from the S3 server itself; the services only sign the URL.\n\n\
         | size | concurrent | (b) storage | (c) storage / gateway | (d) storage / gateway |\n\
         |---|---|---|---|---|\n",
    );
    for row in &downloads.rows {
        let _ = writeln!(out, "{}", memory_line(row));
    }
    if let Some(slow) = &downloads.slow_reader {
        out.push_str(
            "\nA slow reader (HTTP/2 flow control must stop both services at a few windows, however slowly a\n\
             client reads), with both services started afresh:\n\n\
             | slow reader | received | storage-service peak RSS (MiB) | gateway peak RSS (MiB) |\n\
             |---|---|---|---|\n",
        );
        let _ = writeln!(out, "{}", slow_reader_line(slow));
    }
    out.push_str(
        "\n### Where the CPU goes, downloads\n\nMilliseconds of CPU per MiB downloaded: the benchmark process (clients and S3 server)\n\
         \\+ the gateway + storage-service, as far as each is in the path.\n\n\
         | size | concurrent | (a) bench | (b) bench + storage | (c) bench + gateway + storage | (d) bench + gateway + storage |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in &downloads.rows {
        let _ = writeln!(out, "{}", cpu_line(row));
    }
    let _ = write!(
        out,
        "\n### Throughput against CPU cost, downloads\n\nEach path's ratio to (a), measured / CPU-cost ratio, as for uploads; and how many of the\n\
         {cores} cores were busy during (a): with its processes (its CPU per MiB × its MiB/s) / in the whole machine\n\
         (`/proc/stat`, whatever ran). Where the machine's cores were at least {share:.0} % busy, (a) is CPU-bound: a\n\
         path that adds CPU per MiB cannot keep its pace, and reaches its CPU-cost ratio at best. Where the\n\
         machine is busier than (a)'s processes, something else was running.\n\n\
         | size | concurrent | (a) cores busy: its processes / machine | (b) storage-service | (c) gateway, Download | (d) presigned URL |\n\
         |---|---|---|---|---|---|\n",
        cores = cores(),
        share = CPU_BOUND_SHARE * 100.0,
    );
    for row in &downloads.rows {
        let _ = writeln!(out, "{}", download_cost_line(row));
    }
    out
}

/// Each download target of issue 16: what it asks, what this run measured, whether it holds.
fn download_verdicts(downloads: &Downloads) -> Vec<(String, String, Verdict)> {
    let mut verdicts = Vec::new();
    let (judged, cpu_bound): (Vec<&Row>, Vec<&Row>) = downloads
        .rows
        .iter()
        .partition(|row| !baseline_cpu_bound(row));
    let worst = judged
        .iter()
        .map(|row| (row.rates[2] / row.rates[0], *row))
        .min_by(|x, y| x.0.total_cmp(&y.0));
    let mut measured = worst.map_or_else(
        || "no row: (a) was CPU-bound in every one".to_owned(),
        |(ratio, row)| {
            format!(
                "lowest {ratio:.3} ({} × {}; cores busy during (a): {}; CPU-cost ratio {:.2})",
                human(row.size),
                row.concurrency,
                baseline_cores(row),
                cost_ratio(row, 2)
            )
        },
    );
    if !cpu_bound.is_empty() {
        let rows: Vec<String> = cpu_bound
            .iter()
            .map(|row| {
                format!(
                    "{} × {} (cores busy {}; {:.2}, CPU-cost {:.2})",
                    human(row.size),
                    row.concurrency,
                    baseline_cores(row),
                    row.rates[2] / row.rates[0],
                    cost_ratio(row, 2)
                )
            })
            .collect();
        let _ = write!(measured, "; CPU-bound, not judged: {}", rows.join(", "));
    }
    verdicts.push((
        format!(
            "(c) gateway Download ≥ {GATEWAY_DOWNLOAD_TARGET} × (a), every row where (a) is not CPU-bound \
             (< {:.0} % of the machine's {} cores busy)",
            CPU_BOUND_SHARE * 100.0,
            cores()
        ),
        measured,
        worst.map_or(Verdict::NotJudged, |(ratio, _)| {
            (ratio >= GATEWAY_DOWNLOAD_TARGET).into()
        }),
    ));
    for (single, limit) in [
        (true, SINGLE_DOWNLOAD_RSS_MIB),
        (false, CONCURRENT_DOWNLOADS_RSS_MIB),
    ] {
        let highest = downloads
            .rows
            .iter()
            .filter(|row| (row.concurrency == 1) == single)
            .flat_map(peaks)
            .max_by_key(|(peak, _)| *peak);
        let which = if single {
            "one download"
        } else {
            "concurrent downloads"
        };
        verdicts.push((
            format!("storage-service and gateway peak RSS ≤ {limit} MiB, {which}"),
            highest.as_ref().map_or_else(
                || "no row".to_owned(),
                |(peak, at)| format!("highest {peak} MiB ({at})"),
            ),
            highest.map_or(Verdict::NotJudged, |(peak, _)| (peak <= limit).into()),
        ));
    }
    if let Some(slow) = &downloads.slow_reader {
        let peak = slow.storage_peak.max(slow.gateway_peak);
        verdicts.push((
            format!(
                "… and ≤ {SINGLE_DOWNLOAD_RSS_MIB} MiB for a client that reads slowly: {}",
                describe(slow)
            ),
            format!(
                "storage-service {} MiB, gateway {} MiB",
                slow.storage_peak, slow.gateway_peak
            ),
            (peak <= SINGLE_DOWNLOAD_RSS_MIB).into(),
        ));
    }
    verdicts
}

/// Every peak RSS of `row`, each with the process and column it was measured in.
fn peaks(row: &Row) -> Vec<(u64, String)> {
    let at = |service: &str, column: &str| {
        format!(
            "{service}, {} × {} {column}",
            human(row.size),
            row.concurrency
        )
    };
    let storage = row
        .storage_peak
        .iter()
        .zip(["(b)", "(c)", "(d)"])
        .map(|(peak, column)| (*peak, at("storage-service", column)));
    let gateway = row
        .gateway_peak
        .iter()
        .zip(["(c)", "(d)"])
        .map(|(peak, column)| (*peak, at("gateway", column)));
    storage.chain(gateway).collect()
}

/// The downloads section and its targets alone (`--downloads-only`).
pub fn downloads_report(plan: &Plan, downloads: &Downloads) -> String {
    let mut out = format!(
        "Written by `strongbox-bench --downloads-only` ({}) on {}: {} cores, {} build.\n\n",
        if plan.quick {
            "quick mode"
        } else {
            "full sizes"
        },
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cores(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    out.push_str(&downloads_section(
        downloads,
        crate::downloads::least_per_measurement(plan),
    ));
    out.push_str("\n| target | this run | verdict |\n|---|---|---|\n");
    push_verdicts(&mut out, download_verdicts(downloads));
    out
}
