//! storage-service when its S3 server dies: calls that need the store fail promptly
//! with UNAVAILABLE instead of hanging, calls that need only the index keep working,
//! nothing half-uploaded becomes a file, and everything works again once the server is
//! back on its old address.
//!
//! Stopping a [`TestS3`] drops its runtime and with it every connection: to
//! storage-service that is the server crashing mid-call, not a graceful drain.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::storage::v1::{
    FileMetadata, GetUploadStatusRequest, UploadChunkRequest, UploadRequest, upload_request,
};
use strongbox_tests::s3::TestS3;
use strongbox_tests::storage::{BUCKET, Backend, Stack, metadata, pseudo_random, sha256_hex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

const MIB: usize = 1024 * 1024;
/// Every call is bounded by this; with STORAGE_TIMEOUT_SECONDS=3 and two retries a
/// failing call takes seconds, so only a hang reaches it.
const CALL_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_server_makes_store_calls_unavailable_until_it_returns() {
    let mut stack = Stack::start(Backend::S3, |config| config.storage_timeout_seconds = 3).await;
    let user = stack.user("outage").await;
    let earlier = pseudo_random(6 * MIB + 7, 21);
    let stored = user.upload_bytes("before.bin", &earlier).await.unwrap();

    let (root, port) = kill_s3(&mut stack).await;

    let download = bounded("Download", user.download(&stored.key)).await;
    assert_unavailable("Download", download.map(|_| ()));

    let retried = pseudo_random(3 * MIB + 1, 22);
    let upload = bounded("Upload", user.upload_bytes("during.bin", &retried)).await;
    assert_unavailable("Upload", upload.map(|_| ()));

    // Listing reads only the index (and signs URLs locally): the outage is invisible.
    let listed = bounded("ListFiles", user.list_all()).await;
    let keys: Vec<_> = listed.iter().map(|file| file.key.as_str()).collect();
    assert_eq!(keys, [stored.key.as_str()]);

    stack.s3 = Some(TestS3::start_at(root, Some(port)));

    let uploaded = bounded(
        "Upload after recovery",
        user.upload_bytes("during.bin", &retried),
    )
    .await
    .expect("the same upload succeeds once S3 is back");
    assert_eq!(uploaded.sha256, sha256_hex(&retried));
    let (_, downloaded) = bounded("Download after recovery", user.download(&stored.key))
        .await
        .expect("the earlier file downloads once S3 is back");
    assert!(downloaded == earlier, "the earlier file's bytes differ");
    let (_, downloaded) = bounded(
        "Download of the retried upload",
        user.download(&uploaded.key),
    )
    .await
    .unwrap();
    assert!(downloaded == retried, "the retried upload's bytes differ");
    assert_eq!(bounded("ListFiles", user.list_all()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_dying_mid_upload_fails_the_upload_and_stores_no_file() {
    let mut stack = Stack::start(Backend::S3, |config| {
        config.storage_timeout_seconds = 3;
        // The periodic cleanup (which retries failed aborts) runs every TTL / 10.
        config.upload_session_ttl_seconds = 10;
    })
    .await;
    let user = stack.user("crash").await;
    // 20 MiB: four 5 MiB parts (the suites' part size), so the kill lands mid-way.
    let chunks: Vec<Bytes> = (0..20)
        .map(|seed| Bytes::from(pseudo_random(MIB, 100 + seed)))
        .collect();
    let content = chunks.concat();
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("big.bin", "application/octet-stream")
    };

    // The client feeds the stream chunk by chunk, so the test decides when S3 dies.
    let (feed, fed) = mpsc::channel(1);
    feed.send(message(upload_request::Payload::Metadata(declared.clone())))
        .await
        .unwrap();
    let mut client = user.client();
    let request = user.req(ReceiverStream::new(fed));
    let call = tokio::spawn(async move { client.upload(request).await });
    let mut next_chunk = chunks.iter().cloned();
    for chunk in next_chunk.by_ref().take(7) {
        feed.send(message(upload_request::Payload::Chunk(chunk)))
            .await
            .unwrap();
    }
    // Kill S3 only once the first part is stored on it: the upload is really mid-way.
    let first_part = bounded("the first part to reach S3", async {
        loop {
            if let Some(part) = multipart_leftovers(&stack)
                .into_iter()
                .find(|path| TestS3::is_part(path))
            {
                return part;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (root, port) = kill_s3(&mut stack).await;

    // The rest of the file; the service may refuse it early by ending the call.
    for chunk in next_chunk {
        let sent = bounded(
            "sending a chunk",
            feed.send(message(upload_request::Payload::Chunk(chunk))),
        )
        .await;
        if sent.is_err() {
            break;
        }
    }
    drop(feed);
    let outcome = bounded("the interrupted Upload", call).await.unwrap();
    assert_unavailable("the interrupted Upload", outcome.map(|_| ()));
    assert!(
        bounded("ListFiles", user.list_all()).await.is_empty(),
        "a failed upload must not be listed"
    );

    stack.s3 = Some(TestS3::start_at(root, Some(port)));

    // No object was completed: the bucket holds nothing.
    let bucket_dir = stack.s3.as_ref().unwrap().root().join(BUCKET);
    assert!(
        strongbox_tests::files_below(&bucket_dir).is_empty(),
        "an object was stored: {:?}",
        strongbox_tests::files_below(&bucket_dir)
    );
    // storage-service aborted the multipart upload before answering, but S3 was dead
    // then, so the abort failed and its parts stayed on S3. The upload id is on record,
    // and the periodic cleanup aborts it again once S3 is back: nothing is left.
    assert!(
        TestS3::is_part(&first_part),
        "the interrupted upload had a part on S3"
    );
    let leftovers = bounded("the cleanup of the abandoned multipart upload", async {
        loop {
            let leftovers = multipart_leftovers(&stack);
            if leftovers.is_empty() {
                return leftovers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(leftovers.is_empty());

    // Retrying the same upload works and stores exactly one more object.
    let mut retry = vec![message(upload_request::Payload::Metadata(declared))];
    retry.extend(
        chunks
            .into_iter()
            .map(|chunk| message(upload_request::Payload::Chunk(chunk))),
    );
    let uploaded = bounded(
        "the retried Upload",
        user.client().upload(user.req(futures::stream::iter(retry))),
    )
    .await
    .expect("the retried upload succeeds")
    .into_inner();
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    let listed = user.list_all().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, uploaded.key);
    let (_, downloaded) = bounded("Download", user.download(&uploaded.key))
        .await
        .unwrap();
    assert!(downloaded == content, "the retried upload's bytes differ");
    assert_eq!(
        strongbox_tests::files_below(&bucket_dir).len(),
        1,
        "exactly the retried object is stored"
    );
    assert!(
        multipart_leftovers(&stack).is_empty(),
        "the retried upload left multipart files: {:?}",
        multipart_leftovers(&stack)
    );
}

/// A session's next chunk may be sent while the one before is still being stored (the
/// page does, so sending and storing overlap). When S3 stops answering with both in
/// flight, neither is kept: the session still holds nothing, and the client sends both
/// again once S3 is back. (An S3 server that accepts connections but never answers keeps
/// the first chunk in flight for seconds, until its timeouts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_in_flight_when_s3_stops_answering_are_not_kept() {
    let mut stack = Stack::start(Backend::S3, |config| config.storage_timeout_seconds = 1).await;
    let user = stack.user("ahead").await;
    let chunk_size = stack.config.upload_part_size as usize;
    let content = pseudo_random(2 * chunk_size + 3, 31);
    let session = user
        .create_session(FileMetadata {
            size: Some(content.len() as u64),
            sha256: Some(sha256_hex(&content)),
            ..metadata("ahead.bin", "")
        })
        .await;
    let send = |index: usize| {
        let (mut client, end) = (user.client(), ((index + 1) * chunk_size).min(content.len()));
        let request = user.req(UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset: (index * chunk_size) as u64,
            data: Bytes::copy_from_slice(&content[index * chunk_size..end]),
        });
        async move {
            client
                .upload_chunk(request)
                .await
                .map(|r| r.into_inner().offset)
        }
    };

    let (root, port) = kill_s3(&mut stack).await;
    // Connections queue in the backlog and are never read.
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the S3 port is free");
    let first = tokio::spawn(send(0));
    // Long enough for the first chunk to be on its way to the (dead) S3 server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::spawn(send(1));
    let first = bounded("the first chunk", first).await.unwrap();
    let second = bounded("the second chunk", second).await.unwrap();
    assert_unavailable("the first chunk", first.map(drop));
    // Its own part could not be stored either, or (had it been) its predecessor's was not.
    let refused = second.unwrap_err();
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::FailedPrecondition),
        "{refused:?}"
    );
    let status = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.offset, 0, "a chunk was kept past a missing one");

    drop(silent);
    stack.s3 = Some(TestS3::start_at(root, Some(port)));
    for index in 0..3 {
        bounded("a chunk after recovery", send(index))
            .await
            .expect("the chunk is stored once S3 is back");
    }
    let file = user.complete_session(&session.upload_id).await;
    let (_, downloaded) = user.download(&file.key).await.unwrap();
    assert!(downloaded == content, "the session's bytes differ");
}

/// Stops the stack's S3 server as if it crashed, returning where to restart it.
async fn kill_s3(stack: &mut Stack) -> (PathBuf, u16) {
    let s3 = stack.s3.as_mut().expect("an S3 backend");
    let place = (s3.root().to_path_buf(), s3.service.addr.port());
    s3.service.stop().await.expect("the S3 server stops");
    place
}

/// Waits for `call`, failing the test if it takes longer than [`CALL_LIMIT`].
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than {CALL_LIMIT:?}"))
}

/// The status an outage must produce: UNAVAILABLE, in words a user can act on, with no
/// internal detail (endpoint, S3 error) sent to the client.
fn assert_unavailable(what: &str, outcome: Result<(), Status>) {
    let status = match outcome {
        Ok(()) => panic!("{what} succeeded while S3 was down"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().contains("unavailable") && status.message().contains("try again"),
        "{what}: {}",
        status.message()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "{what} leaks the endpoint: {}",
        status.message()
    );
}

fn message(payload: upload_request::Payload) -> UploadRequest {
    UploadRequest {
        payload: Some(payload),
    }
}

fn multipart_leftovers(stack: &Stack) -> Vec<PathBuf> {
    stack.s3.as_ref().expect("an S3 backend").multipart_files()
}
