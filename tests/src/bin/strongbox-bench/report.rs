//! `docs/BENCHMARKS.md`: the tables, and each target of issue 6 with its verdict
//! computed from this run's numbers (never typed in by hand).

use std::fmt::Write as _;
use std::time::Duration;

use crate::Plan;
use crate::auth::{AuthNumbers, Latencies};
use crate::uploads::{Cpu, MIB, Row, human};

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
    table
}

pub fn render(plan: &Plan, rows: &[Row], auth: &AuthNumbers) -> String {
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
    out.push_str("\n## auth-service\n\n");
    out.push_str(&auth_table(auth));
    out.push_str(
        "\n## Targets\n\nRatios to three places, so one at a target reads as what was compared; next to \
         a throughput ratio, its row's CPU-cost ratio (see above).\n\n\
         | target | this run | verdict |\n|---|---|---|\n",
    );
    for (target, measured, met) in verdicts(rows, auth) {
        let _ = writeln!(
            out,
            "| {target} | {measured} | {} |",
            if met { "met" } else { "**missed**" }
        );
    }
    out
}

/// (a)'s CPU per MiB over `path`'s (1 to 3: (b) to (d)) in `row`: the ratio to (a) the
/// path reaches if the machine runs it with as much of its CPU busy as it ran (a).
fn cost_ratio(row: &Row, path: usize) -> f64 {
    let per_mib = |cpu: Cpu| cpu.bench + cpu.storage + cpu.gateway;
    per_mib(row.cpu[0]) / per_mib(row.cpu[path])
}

fn cost_line(row: &Row) -> String {
    let [_, b, c, d] = row.rates.map(|rate| rate / row.rates[0]);
    format!(
        "| {} | {} | {b:.2} / {:.2} | {c:.2} / {:.2} | {d:.2} / {:.2} |",
        human(row.size),
        row.concurrency,
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
