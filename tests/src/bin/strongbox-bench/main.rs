//! `strongbox-bench`: the system measured against the physical limit of this machine,
//! written to `docs/BENCHMARKS.md` with the machine and the date. Uploads (see
//! `uploads.rs`) and auth-service (see `auth.rs`) run against the three release
//! binaries as separate processes, over loopback, with s3s-fs as the S3 server.
//! Absolute numbers drift with whatever else the machine does; the ratios hold.
//!
//! ```text
//! cargo run --release -p strongbox-tests --bin strongbox-bench            # full run, writes docs/BENCHMARKS.md
//! cargo run -p strongbox-tests --bin strongbox-bench -- --quick --out F   # what the test command runs
//! cargo run --release -p strongbox-tests --bin strongbox-bench -- --auth-only   # auth numbers, printed
//! cargo run --release -p strongbox-tests --bin strongbox-bench -- --sizes 1024 --out F   # some sizes (MiB)
//! ```

mod auth;
mod report;
mod system;
mod uploads;

use std::path::PathBuf;

use uploads::MIB;

pub struct Plan {
    pub quick: bool,
    auth_only: bool,
    pub sizes: Vec<u64>,
    pub concurrency: Vec<usize>,
    /// Each measurement repeats its uploads until at least this much has moved: a
    /// single 1 MiB upload takes milliseconds, too short to time or to count CPU ticks of.
    pub least_per_measurement: u64,
    out: PathBuf,
}

fn plan() -> Plan {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let out = args
        .iter()
        .position(|arg| arg == "--out")
        .and_then(|at| args.get(at + 1))
        .map_or_else(
            || {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../docs/BENCHMARKS.md"
                ))
            },
            PathBuf::from,
        );
    let (mut sizes, concurrency) = if quick {
        (vec![MIB, 16 * MIB], vec![1, 4])
    } else {
        (vec![MIB, 64 * MIB, 1024 * MIB], vec![1, 16])
    };
    // `--sizes 64,1024`: only these file sizes, in MiB (to look at one row closely).
    if let Some(list) = args
        .iter()
        .position(|arg| arg == "--sizes")
        .and_then(|at| args.get(at + 1))
    {
        sizes = list
            .split(',')
            .map(|mib| {
                mib.trim()
                    .parse::<u64>()
                    .expect("--sizes takes MiB, comma-separated")
                    * MIB
            })
            .collect();
    }
    // `--auth-only`: just the auth-service numbers (printed, no report written).
    let auth_only = args.iter().any(|arg| arg == "--auth-only");
    Plan {
        quick,
        auth_only,
        sizes,
        concurrency,
        least_per_measurement: if quick { 0 } else { 256 * MIB },
        out,
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet; the runtime starts below.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(bench(plan()));
}

async fn bench(plan: Plan) {
    let mut system = system::System::start().await;
    if plan.auth_only {
        let auth = auth::measure(&system, plan.quick).await;
        println!("{}", report::auth_table(&auth));
        return;
    }
    let clients = uploads::Clients::new(&system).await;
    let mut rows = Vec::new();
    for &size in &plan.sizes {
        for &concurrency in &plan.concurrency {
            let rounds = (plan.least_per_measurement / (size * concurrency as u64)).max(1);
            let row = uploads::measure(&mut system, &clients, size, concurrency, rounds).await;
            println!("{}", report::throughput_line(&row));
            println!("{}", report::cpu_line(&row));
            rows.push(row);
        }
    }
    let leftovers = system.s3_files();
    assert_eq!(
        leftovers, 0,
        "the S3 server still holds {leftovers} objects or parts after every upload was deleted"
    );
    let auth = auth::measure(&system, plan.quick).await;
    let report = report::render(&plan, &rows, &auth);
    println!("{}", report::auth_table(&auth));
    std::fs::write(&plan.out, report).expect("the report is written");
    println!("wrote {}", plan.out.display());
}
