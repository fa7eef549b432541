//! The index's concurrency rules, on each database: storage-service's `Index` opened
//! twice on one database, as two replicas would, and admissions, chunk commits,
//! completions and sweeps racing on both. The suites above it prove the same end to
//! end; here the race is dense enough that a missing lock or claim shows every time.

use sha2::{Digest, Sha256};
use storage_service::StorageError;
use storage_service::files::NewFile;
use storage_service::index::{Index, Removal};
use storage_service::names::{ObjectKey, Sha256Hex};
use storage_service::policy::ContentType;
use storage_service::sessions::{Chunk, RunningDigest, Session};
use storage_service::sink::Expectations;
use storage_service::usage::Limits;
use strongbox_tests::Scratch;
use strongbox_tests::database::Database;
use strongbox_tests::on_both_databases;
use uuid::Uuid;

on_both_databases!(
    racing_admissions_on_two_replicas_admit_exactly_what_fits,
    racing_chunks_at_one_offset_commit_once_with_the_digest_of_the_winner,
    a_chunk_announced_on_one_replica_is_found_on_the_other_until_it_ends,
    a_completion_is_claimed_once_and_taken_over_only_after_its_claim_lapses,
    expired_sessions_and_abandoned_uploads_each_go_to_one_sweeper,
);

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

const UNLIMITED: Limits = Limits {
    quota_bytes: None,
    max_files: None,
    max_open_sessions: 1000,
    max_concurrent_uploads: 1000,
};

/// A new session of `user`, open for `ttl_ms` from `now`, keeping its digest.
async fn open_session(index: &Index, user: Uuid, name: &str, now: i64, ttl_ms: u64) -> Session {
    let file = NewFile {
        user,
        key: ObjectKey::from_stored(format!("{user}/{name}")),
        filename: name.to_owned(),
        content_type: ContentType::parse("application/octet-stream").unwrap(),
        expect: Expectations {
            max_bytes: u64::MAX,
            size: None,
            sha256: None,
        },
    };
    let ttl = std::time::Duration::from_millis(ttl_ms);
    let session = Session::new(&file, now, ttl, Some(RunningDigest::default()));
    index.admit_session(&session, &UNLIMITED).await.unwrap();
    session
}

fn now() -> i64 {
    storage_service::files::now_ms()
}

/// 20 different chunks at offset 0 of one session, committed at once through both
/// replicas: one wins, the session holds exactly it, and its digest is the winner's.
async fn racing_chunks_at_one_offset_commit_once_with_the_digest_of_the_winner(db: Database) {
    let scratch = Scratch::new();
    let replicas = two_replicas(&db, &scratch).await;
    let user = Uuid::new_v4();
    let session = open_session(&replicas[0], user, "race.bin", now(), 60_000).await;
    let contents: Vec<Vec<u8>> = (0..20u8)
        .map(|seed| vec![seed; 100 + seed as usize])
        .collect();
    let commits = contents.iter().enumerate().map(|(index, content)| {
        let mut digest = RunningDigest::default();
        digest.update(content);
        let chunk = Chunk {
            start: 0,
            length: content.len() as u64,
            etag: Some(format!("etag-{index}")),
        };
        let replica = &replicas[index % 2];
        let id = session.id;
        async move {
            replica
                .commit_chunk(id, &chunk, Some(&digest), "token")
                .await
                .unwrap()
        }
    });
    let outcomes = futures::future::join_all(commits).await;
    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].is_some())
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = &contents[winners[0]];
    let stored = replicas[1].session(user, session.id, now()).await.unwrap();
    assert_eq!(stored.received, winner.len() as u64);
    let chunks = replicas[0].chunks(session.id).await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].etag, Some(format!("etag-{}", winners[0])));
    assert_eq!(
        stored.digest.expect("a kept digest").finish(),
        Sha256Hex::from_digest(&Sha256::digest(winner))
    );
}

/// The chunk after an announced one finds it through the other replica, with its part;
/// a retry of the same chunk replaces the announcement, the original's withdrawal
/// leaves the retry's, and a commit ends it in the same transaction.
async fn a_chunk_announced_on_one_replica_is_found_on_the_other_until_it_ends(db: Database) {
    let scratch = Scratch::new();
    let [first, second] = two_replicas(&db, &scratch).await;
    let user = Uuid::new_v4();
    let session = open_session(&first, user, "ahead.bin", now(), 60_000).await;
    let id = session.id;
    let lapses = now() + 60_000;
    assert_eq!(second.chunk_storing(id, 10, now()).await.unwrap(), None);
    first
        .announce_chunk(id, 10, 0, "original", lapses)
        .await
        .unwrap();
    assert_eq!(second.chunk_storing(id, 10, now()).await.unwrap(), Some(0));
    second
        .announce_chunk(id, 10, 0, "retry", lapses)
        .await
        .unwrap();
    first.withdraw_chunk(id, 10, "original").await.unwrap();
    assert_eq!(
        first.chunk_storing(id, 10, now()).await.unwrap(),
        Some(0),
        "the retry's announcement stands"
    );
    assert_eq!(
        first.chunk_storing(id, 10, lapses).await.unwrap(),
        None,
        "an announcement whose replica died lapses"
    );
    let chunk = Chunk {
        start: 0,
        length: 10,
        etag: None,
    };
    assert_eq!(
        second
            .commit_chunk(id, &chunk, None, "retry")
            .await
            .unwrap(),
        Some(10)
    );
    assert_eq!(first.chunk_storing(id, 10, now()).await.unwrap(), None);
    let tail = first.chunk_tail(id).await.unwrap();
    assert_eq!((tail.count, tail.last_length), (1, Some(10)));
}

/// 20 CompleteUpload calls at once through both replicas: one holds the session; the
/// others are refused until its claim lapses (its replica died), then one takes over.
async fn a_completion_is_claimed_once_and_taken_over_only_after_its_claim_lapses(db: Database) {
    let scratch = Scratch::new();
    let replicas = two_replicas(&db, &scratch).await;
    let user = Uuid::new_v4();
    let session = open_session(&replicas[0], user, "complete.bin", now(), 600_000).await;
    let at = now();
    let until = at + 120_000;
    let claims = (0..20).map(|index| replicas[index % 2].claim_completion(session.id, at, until));
    let claimed = futures::future::join_all(claims).await;
    assert_eq!(claimed.iter().filter(|c| *c.as_ref().unwrap()).count(), 1);
    assert!(
        !replicas[1]
            .claim_completion(session.id, until - 1, until + 1)
            .await
            .unwrap()
    );
    let after = until + 1;
    let takeovers = (0..20)
        .map(|index| replicas[index % 2].claim_completion(session.id, after, after + 120_000));
    let taken = futures::future::join_all(takeovers).await;
    assert_eq!(taken.iter().filter(|c| *c.as_ref().unwrap()).count(), 1);
    // A completion given back opens the session to chunks again.
    replicas[0].reopen(session.id).await.unwrap();
    let chunk = Chunk {
        start: 0,
        length: 1,
        etag: None,
    };
    assert_eq!(
        replicas[1]
            .commit_chunk(session.id, &chunk, None, "t")
            .await
            .unwrap(),
        Some(1)
    );
}

/// Ten expired sessions, each with a multipart upload, swept by both replicas at once:
/// each is removed once and its upload handed (abandoned, claimed) to that sweeper
/// alone. The other replica's cleanup leaves the uploads alone while the claim holds,
/// and once it lapses each goes to exactly one cleanup.
async fn expired_sessions_and_abandoned_uploads_each_go_to_one_sweeper(db: Database) {
    let scratch = Scratch::new();
    let replicas = two_replicas(&db, &scratch).await;
    let user = Uuid::new_v4();
    let created = now();
    let mut keys = Vec::new();
    for index in 0..10 {
        let session = open_session(&replicas[0], user, &format!("{index}.bin"), created, 1).await;
        replicas[index % 2]
            .record_multipart(session.key.as_str(), &format!("upload-{index}"))
            .await
            .unwrap();
        keys.push(session.key.as_str().to_owned());
    }
    let live = open_session(&replicas[0], user, "live.bin", created, 600_000).await;
    let at = created + 2;
    let claim_until = at + 60_000;
    let (swept_first, swept_second) = tokio::join!(
        replicas[0].remove_sessions(Removal::Expired, at, claim_until),
        replicas[1].remove_sessions(Removal::Expired, at, claim_until),
    );
    let mut swept: Vec<(String, Option<String>)> = swept_first
        .unwrap()
        .into_iter()
        .chain(swept_second.unwrap())
        .map(|removed| (removed.session.key.as_str().to_owned(), removed.multipart))
        .collect();
    swept.sort();
    keys.sort();
    assert_eq!(
        swept.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(),
        keys,
        "each expired session once, the live one not"
    );
    assert!(
        swept.iter().all(|(_, upload)| upload.is_some()),
        "{swept:?}"
    );
    assert!(replicas[1].session(user, live.id, at).await.is_ok());

    // Held by their sweepers: nobody else's cleanup takes them.
    assert!(
        replicas[1]
            .claim_abandoned_multiparts(at + 1, at + 1 + 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    // Their sweepers died: after the claim, each goes to one cleanup.
    let after = claim_until + 1;
    let (first, second) = tokio::join!(
        replicas[0].claim_abandoned_multiparts(after, after + 60_000),
        replicas[1].claim_abandoned_multiparts(after, after + 60_000),
    );
    let mut claimed: Vec<String> = first
        .unwrap()
        .into_iter()
        .chain(second.unwrap())
        .map(|(key, _)| key)
        .collect();
    claimed.sort();
    assert_eq!(claimed, keys);
}
