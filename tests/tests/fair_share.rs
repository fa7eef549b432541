//! One server shared with strangers, black-box: an upload session has one name only,
//! an upload that cannot get memory is told to come back instead of hanging, and an
//! upload that trickles is cut. Real auth-service and storage-service on loopback,
//! against a local directory and a real S3 server.

use std::time::{Duration, Instant};

use bytes::Bytes;
use strongbox_proto::storage::v1::{
    AbortUploadRequest, CompleteUploadRequest, FileMetadata, GetUploadStatusRequest,
    UploadChunkRequest,
};
use strongbox_tests::on_every_backend;
use strongbox_tests::storage::{
    Backend, Stack, User, chunk_message, end_message, metadata, pseudo_random, sha256_hex,
};
use tonic::{Code, Status};

on_every_backend!(
    other_spellings_of_an_upload_id_are_refused_and_touch_nothing,
    an_upload_that_finds_no_memory_is_told_to_retry_and_stores_nothing,
    a_trickling_upload_is_cut_and_stores_nothing,
    one_user_trickling_many_streams_does_not_hold_up_another,
);

/// The spellings `Uuid::parse_str` accepts for the same id besides the one handed out.
fn other_spellings(canonical: &str) -> Vec<String> {
    let upper = canonical.to_ascii_uppercase();
    let mut spellings = vec![
        format!("{{{canonical}}}"),
        format!("urn:uuid:{canonical}"),
        canonical.replace('-', ""),
    ];
    if upper != canonical {
        spellings.push(upper);
    }
    spellings
}

fn assert_refused_as_malformed(outcome: Result<impl std::fmt::Debug, Status>, spelling: &str) {
    let status = outcome.expect_err(spelling);
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{spelling}: {status:?}"
    );
    assert!(
        status
            .message()
            .contains("lower-case hex digits and hyphens"),
        "the message says what an id looks like: {status:?}"
    );
}

/// A session answers to the id CreateUpload returned and to no other spelling of it:
/// chunks, status, completion and abort under an upper-case, braced, `urn:uuid:` or
/// unhyphenated id are refused as malformed and leave the session as it was.
async fn other_spellings_of_an_upload_id_are_refused_and_touch_nothing(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("spelling").await;
    let content = pseudo_random(1000, 13);
    let session = user
        .create_session(FileMetadata {
            size: Some(content.len() as u64),
            sha256: Some(sha256_hex(&content)),
            ..metadata("one-name.bin", "")
        })
        .await;
    let id = session.upload_id.clone();
    let spellings = other_spellings(&id);
    assert!(spellings.len() >= 3, "{spellings:?}");

    for spelling in &spellings {
        let chunk = user
            .client()
            .upload_chunk(user.req(UploadChunkRequest {
                upload_id: spelling.clone(),
                offset: 0,
                data: Bytes::from(content.clone()),
            }))
            .await;
        assert_refused_as_malformed(chunk, spelling);
        let status = user
            .client()
            .get_upload_status(user.req(GetUploadStatusRequest {
                upload_id: spelling.clone(),
            }))
            .await;
        assert_refused_as_malformed(status, spelling);
    }
    assert_eq!(user.session_offset(&id).await, 0, "no chunk was stored");

    let stored = user
        .client()
        .upload_chunk(user.req(UploadChunkRequest {
            upload_id: id.clone(),
            offset: 0,
            data: Bytes::from(content.clone()),
        }))
        .await
        .expect("a chunk under the id handed out")
        .into_inner();
    assert_eq!(stored.offset, content.len() as u64);

    for spelling in &spellings {
        let complete = user
            .client()
            .complete_upload(user.req(CompleteUploadRequest {
                upload_id: spelling.clone(),
            }))
            .await;
        assert_refused_as_malformed(complete, spelling);
        let abort = user
            .client()
            .abort_upload(user.req(AbortUploadRequest {
                upload_id: spelling.clone(),
            }))
            .await;
        assert_refused_as_malformed(abort, spelling);
    }
    assert_eq!(user.session_offset(&id).await, content.len() as u64);
    assert!(user.list_all().await.is_empty(), "nothing was completed");

    let file = user.complete_session(&id).await;
    let (_, downloaded) = user.download(&file.key).await.expect("a download");
    assert!(downloaded == content);
    assert_eq!(user.list_all().await.len(), 1);
}

fn assert_busy(outcome: Result<impl std::fmt::Debug, Status>, what: &str, waited: Duration) {
    let status = outcome.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(
        status.message().contains("busy with other uploads")
            && status.message().contains("try again"),
        "{what}: {status:?}"
    );
    let retry_after = status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|seconds| seconds >= 1),
        "{what}: retry-after in seconds: {status:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "{what} gave up after {waited:?}, not after UPLOAD_MEMORY_WAIT_SECONDS"
    );
}

/// With memory for one part and a 1 s wait deadline, while one upload holds that part
/// an Upload stream, a PutFile and a session chunk each fail RESOURCE_EXHAUSTED with
/// `retry-after` instead of hanging, and store nothing; the upload holding the memory
/// still finishes.
async fn an_upload_that_finds_no_memory_is_told_to_retry_and_stores_nothing(backend: Backend) {
    let stack = Stack::start(backend, |config| {
        config.max_chunk_bytes = config.upload_part_size;
        config.upload_memory_bytes = config.upload_part_size;
        config.upload_memory_wait_seconds = 1;
    })
    .await;
    let user = stack.user("busy").await;
    let first = pseudo_random(1024 * 1024, 21);
    let (holder, held) = user.open_upload(metadata("holder.bin", ""));
    holder.send(chunk_message(first.clone())).await.unwrap();
    // Let the first upload take the whole budget.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let second = pseudo_random(2 * 1024 * 1024, 22);
    let streamed = user.upload_bytes("streamed.bin", &second);
    let streamed = tokio::time::timeout(Duration::from_secs(20), streamed)
        .await
        .expect("an Upload that finds no memory must not hang");
    assert_busy(streamed, "an Upload", started.elapsed());

    let started = Instant::now();
    let put = user.put_file(metadata("put.bin", ""), Bytes::from(vec![1u8; 1000]));
    let put = tokio::time::timeout(Duration::from_secs(20), put)
        .await
        .expect("a PutFile that finds no memory must not hang");
    assert_busy(put, "a PutFile", started.elapsed());

    let session = user.create_session(metadata("session.bin", "")).await;
    let started = Instant::now();
    let mut client = user.client();
    let chunked = client.upload_chunk(user.req(UploadChunkRequest {
        upload_id: session.upload_id.clone(),
        offset: 0,
        data: Bytes::from(vec![2u8; 1000]),
    }));
    let chunked = tokio::time::timeout(Duration::from_secs(20), chunked)
        .await
        .expect("a session chunk that finds no memory must not hang");
    assert_busy(chunked, "a session chunk", started.elapsed());
    assert_eq!(user.session_offset(&session.upload_id).await, 0);
    user.client()
        .abort_upload(user.req(AbortUploadRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await
        .expect("the session is aborted");

    // `end`, then the stream closes.
    holder.send(end_message()).await.unwrap();
    drop(holder);
    let finished = held
        .await
        .unwrap()
        .expect("the upload holding the memory finishes");
    let files = user.list_all().await;
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].key, finished.key);
    let (_, downloaded) = user.download(&finished.key).await.unwrap();
    assert!(downloaded == first);
    let left = stack.settle_stored_files(1).await;
    assert_eq!(left.len(), 1, "only the finished file is stored: {left:?}");
}

/// With MIN_UPLOAD_BYTES_PER_SECOND=1024 over 2 s, an upload at normal speed is stored,
/// while one that sends a part at full speed and then a byte every 200 ms (each byte
/// restarting any idle timer) is cut with DEADLINE_EXCEEDED within a few windows and
/// leaves nothing behind, not even its part on S3.
async fn a_trickling_upload_is_cut_and_stores_nothing(backend: Backend) {
    let stack = Stack::start(backend, |config| {
        config.min_upload_bytes_per_second = 1024;
        config.upload_rate_window_seconds = 2;
    })
    .await;
    let user = stack.user("trickle").await;
    let normal = pseudo_random(12 * 1024 * 1024, 31);
    let stored = user
        .upload_bytes("normal.bin", &normal)
        .await
        .expect("an upload at normal speed passes");

    let (trickle, trickling) = user.open_upload(metadata("trickle.bin", ""));
    let part = stack.config.upload_part_size as usize;
    for seed in 0..(part / (1024 * 1024) + 1) {
        trickle
            .send(chunk_message(pseudo_random(1024 * 1024, 40 + seed as u64)))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        while trickle.send(chunk_message(vec![7])).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let cut = tokio::time::timeout(Duration::from_secs(20), trickling)
        .await
        .expect("a trickling upload is cut within a few windows")
        .unwrap()
        .expect_err("a trickling upload is not stored");
    dripping.abort();
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    assert!(
        cut.message().contains("MIN_UPLOAD_BYTES_PER_SECOND")
            && cut.message().contains("nothing was stored"),
        "{cut:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut after {:?}",
        started.elapsed()
    );

    let files = user.list_all().await;
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].key, stored.key);
    let left = stack.settle_stored_files(1).await;
    assert_eq!(left.len(), 1, "only the normal upload is stored: {left:?}");
    if let Some(s3) = &stack.s3 {
        let parts = s3.multipart_files();
        assert!(
            parts.is_empty(),
            "the trickling upload's part is left: {parts:?}"
        );
    }
}

/// User A holds 16 Upload streams that trickle a byte at a time and 16 open sessions
/// (the most allowed). User B's 64 MiB Upload and 20 MiB session still complete while
/// A's streams are open: A's uploads wait on A's own share of the upload memory, so B
/// finds room (with a 2 s memory deadline, B would fail RESOURCE_EXHAUSTED if A's
/// streams held the whole budget). A's streams all end with an error within the rate
/// window — cut for trickling, or refused for waiting on A's share too long — and
/// store nothing.
async fn one_user_trickling_many_streams_does_not_hold_up_another(backend: Backend) {
    const WINDOW: Duration = Duration::from_secs(15);
    let stack = Stack::start(backend, |config| {
        config.upload_rate_window_seconds = WINDOW.as_secs();
        config.upload_memory_wait_seconds = 2;
    })
    .await;
    let (greedy, other) = (stack.user("greedy").await, stack.user("other").await);
    let mut held_sessions = Vec::new();
    for index in 0..16 {
        let session = greedy
            .create_session(metadata(&format!("held-{index}.bin"), ""))
            .await;
        held_sessions.push(session.upload_id);
    }
    let started = Instant::now();
    let mut trickling = Vec::new();
    let mut drips = Vec::new();
    for index in 0..16 {
        let (sender, call) = greedy.open_upload(metadata(&format!("trickle-{index}.bin"), ""));
        trickling.push(call);
        drips.push(tokio::spawn(async move {
            while sender.send(chunk_message(vec![7])).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    // Let A's streams take their memory.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let streamed = pseudo_random(64 * 1024 * 1024, 51);
    let session_content = pseudo_random(20 * 1024 * 1024, 52);
    let (streamed_file, session_file) = tokio::join!(
        other.upload_bytes("big.bin", &streamed),
        upload_in_session(&other, &session_content),
    );
    let streamed_file = streamed_file.expect("B's Upload completes beside A's trickles");
    let session_file = session_file.expect("B's session completes beside A's trickles");
    let still_open = trickling.iter().filter(|call| !call.is_finished()).count();
    assert!(
        still_open > 0,
        "B finished only after every one of A's streams had ended ({:?})",
        started.elapsed()
    );

    for call in trickling {
        let ended = tokio::time::timeout(2 * WINDOW + Duration::from_secs(10), call)
            .await
            .expect("A's stream ends within the window")
            .unwrap()
            .expect_err("a trickling stream stores nothing");
        assert!(
            matches!(
                ended.code(),
                Code::DeadlineExceeded | Code::ResourceExhausted
            ),
            "{ended:?}"
        );
    }
    for drip in drips {
        drip.abort();
    }
    assert!(greedy.list_all().await.is_empty());
    assert_eq!(greedy.usage().await.open_sessions, 16);
    for upload_id in held_sessions {
        greedy
            .client()
            .abort_upload(greedy.req(AbortUploadRequest { upload_id }))
            .await
            .expect("A gives its sessions up");
    }
    for (file, content) in [
        (&streamed_file.key, &streamed),
        (&session_file, &session_content),
    ] {
        let (_, downloaded) = other.download(file).await.expect("download");
        assert!(downloaded == *content);
    }
    let left = stack.settle_stored_files(2).await;
    assert_eq!(left.len(), 2, "only B's files are stored: {left:?}");
}

/// Uploads `content` through a session in 8 MiB chunks; returns the file's key.
async fn upload_in_session(user: &User, content: &[u8]) -> Result<String, Status> {
    let session = user.create_session(metadata("session.bin", "")).await;
    let mut offset = 0;
    for piece in content.chunks(8 * 1024 * 1024) {
        offset = user
            .client()
            .upload_chunk(user.req(UploadChunkRequest {
                upload_id: session.upload_id.clone(),
                offset,
                data: Bytes::copy_from_slice(piece),
            }))
            .await?
            .into_inner()
            .offset;
    }
    Ok(user.complete_session(&session.upload_id).await.key)
}
