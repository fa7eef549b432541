//! The index's concurrency rules, on each database: storage-service's `Index` opened
//! twice on one database, as two replicas would, and admissions racing on both. The
//! suites above it prove the same end to end; here the race is dense enough that a
//! missing lock shows every time.

use storage_service::StorageError;
use storage_service::index::Index;
use storage_service::usage::Limits;
use strongbox_tests::Scratch;
use strongbox_tests::database::Database;
use strongbox_tests::on_both_databases;
use uuid::Uuid;

on_both_databases!(racing_admissions_on_two_replicas_admit_exactly_what_fits);

const SIZE: u64 = 10_000;

async fn two_replicas(db: &Database, scratch: &Scratch) -> [Index; 2] {
    let url = db
        .url()
        .unwrap_or_else(|| format!("sqlite://{}", scratch.join("index.db").display()));
    [
        Index::open(&url, "replica-a/10.0.0.1:50052").await.unwrap(),
        Index::open(&url, "replica-b/10.0.0.2:50052").await.unwrap(),
    ]
}

/// 40 uploads of one user admitted at once, alternating between the replicas, under
/// `limits`: how many were admitted, and every refusal's kind.
async fn race(replicas: &[Index; 2], limits: Limits) -> (usize, Vec<String>) {
    let user = Uuid::new_v4();
    let admissions = (0..40).map(|index| replicas[index % 2].admit_file(user, SIZE, &limits));
    let outcomes = futures::future::join_all(admissions).await;
    let refusals = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().err())
        .map(|err| match err {
            StorageError::ByteQuota { .. } => "bytes".to_owned(),
            StorageError::FileQuota { .. } => "files".to_owned(),
            StorageError::TooManyUploads { .. } => "uploads".to_owned(),
            other => panic!("an admission failed for another reason: {other:?}"),
        })
        .collect();
    let admitted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    (admitted, refusals)
}

async fn racing_admissions_on_two_replicas_admit_exactly_what_fits(db: Database) {
    let scratch = Scratch::new();
    let replicas = two_replicas(&db, &scratch).await;
    let unlimited = Limits {
        quota_bytes: None,
        max_files: None,
        max_open_sessions: 100,
        max_concurrent_uploads: 1000,
    };
    for (limits, admits, refusal) in [
        (
            Limits {
                quota_bytes: Some(10 * SIZE),
                ..unlimited
            },
            10,
            "bytes",
        ),
        (
            Limits {
                max_files: Some(7),
                ..unlimited
            },
            7,
            "files",
        ),
        (
            Limits {
                max_concurrent_uploads: 5,
                ..unlimited
            },
            5,
            "uploads",
        ),
    ] {
        let (admitted, refusals) = race(&replicas, limits).await;
        assert_eq!(admitted, admits, "{refusal}: {refusals:?}");
        assert!(refusals.iter().all(|kind| kind == refusal), "{refusals:?}");
    }
}
