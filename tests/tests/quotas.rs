//! Each user's share of one server, black-box: quotas on bytes and files hold to the
//! byte on every upload path and under concurrent uploads, deleting frees them at once,
//! the limits on open sessions and uploads in progress refuse the next one and leave
//! other users alone, and GetUsage shows it all. Real auth-service and storage-service
//! on loopback, against a local directory and a real S3 server.

use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::storage::v1::{
    AbortUploadRequest, CreateUploadRequest, DeleteFileRequest, FileMetadata, GetUsageResponse,
    UploadChunkRequest,
};
use strongbox_tests::on_every_backend;
use strongbox_tests::storage::{
    Backend, Stack, User, chunk_message, end_message, metadata, pseudo_random, sha256_hex,
};
use tonic::{Code, Status};

on_every_backend!(
    a_byte_quota_holds_to_the_byte_on_every_upload_path_and_deleting_frees_it,
    concurrent_uploads_of_one_user_never_pass_the_quotas,
    a_streams_look_ahead_takes_no_room_and_its_file_must_still_fit,
    a_user_at_the_limits_on_work_in_progress_is_refused_and_others_are_not,
);

const QUOTA: u64 = 100_000;

fn assert_over_quota(outcome: Result<impl std::fmt::Debug, Status>, what: &str, setting: &str) {
    let status = outcome.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(
        status.message().contains(setting)
            && status.message().contains("Nothing was stored")
            && status.message().contains("delete files"),
        "{what}: the message names the quota and what to do: {status:?}"
    );
}

/// The bytes and files GetUsage reports as stored, and what is in progress.
fn stored(usage: &GetUsageResponse) -> (u64, u64) {
    (usage.bytes_used, usage.files)
}

/// With USER_QUOTA_BYTES = 100,000: a stream without a declared size, a PutFile and a
/// session chunk each take their bytes; an upload that would pass the quota — declared
/// (refused before any byte), undeclared (refused at the byte that passes it), whole,
/// or a session's chunk — is refused naming the quota, and stores nothing; the last
/// free byte can be used and not one more; deleting a file, aborting a session or
/// cancelling an upload gives its bytes back at once; GetUsage tells the truth
/// throughout.
async fn a_byte_quota_holds_to_the_byte_on_every_upload_path_and_deleting_frees_it(
    backend: Backend,
) {
    let stack = Stack::start(backend, |config| config.user_quota_bytes = Some(QUOTA)).await;
    let user = stack.user("quota").await;
    let usage = user.usage().await;
    assert_eq!(usage.quota_bytes, Some(QUOTA));
    assert_eq!(usage.max_files, None, "no file limit unless set");
    assert_eq!((stored(&usage), usage.bytes_reserved), ((0, 0), 0));

    let streamed = pseudo_random(30_000, 1);
    let first = user
        .upload(
            metadata("streamed.bin", ""),
            vec![Bytes::from(streamed.clone())],
        )
        .await
        .expect("a stream of unknown size within the quota");
    user.put_file(
        metadata("whole.bin", ""),
        Bytes::from(pseudo_random(30_000, 2)),
    )
    .await
    .expect("a PutFile within the quota");
    let usage = user.usage().await;
    assert_eq!((stored(&usage), usage.bytes_reserved), ((60_000, 2), 0));

    // A session of unknown size holds what its chunks reached.
    let session = user.create_session(metadata("session.bin", "")).await;
    append(&user, &session.upload_id, 0, pseudo_random(30_000, 3))
        .await
        .expect("a chunk within the quota");
    let usage = user.usage().await;
    assert_eq!(
        (usage.bytes_reserved, usage.open_sessions),
        (30_000, 1),
        "{usage:?}"
    );
    assert_over_quota(
        append(&user, &session.upload_id, 30_000, pseudo_random(10_001, 4)).await,
        "a chunk passing the quota",
        "USER_QUOTA_BYTES",
    );
    assert_eq!(user.session_offset(&session.upload_id).await, 30_000);
    assert_over_quota(
        user.put_file(metadata("over.bin", ""), Bytes::from(vec![1u8; 10_001]))
            .await,
        "a PutFile passing the quota",
        "USER_QUOTA_BYTES",
    );
    user.client()
        .abort_upload(user.req(AbortUploadRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await
        .expect("abort the session");
    assert_eq!(user.usage().await.bytes_reserved, 0, "aborting gives back");

    // 40,000 bytes are free now.
    let declared = FileMetadata {
        size: Some(40_001),
        ..metadata("declared.bin", "")
    };
    let (sender, call) = user.open_upload(declared.clone());
    let refused = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a declared size over the quota is refused before any byte is sent")
        .unwrap();
    drop(sender);
    assert_over_quota(
        refused,
        "a declared size over the quota",
        "USER_QUOTA_BYTES",
    );
    let refused = user
        .client()
        .create_upload(user.req(CreateUploadRequest {
            metadata: Some(declared),
        }))
        .await;
    assert_over_quota(refused, "a session declaring too much", "USER_QUOTA_BYTES");
    let refused = user
        .upload(
            metadata("undeclared.bin", ""),
            vec![
                Bytes::from(pseudo_random(39_000, 5)),
                Bytes::from(pseudo_random(1_001, 6)),
            ],
        )
        .await;
    assert_over_quota(
        refused,
        "a stream that passes the quota",
        "USER_QUOTA_BYTES",
    );

    // A cancelled upload gives its reservation back.
    let (sender, call) = user.open_upload(FileMetadata {
        size: Some(40_000),
        ..metadata("cancelled.bin", "")
    });
    sender
        .send(chunk_message(pseudo_random(10_000, 8)))
        .await
        .unwrap();
    let holding = usage_once(&user, |usage| usage.bytes_reserved == 40_000).await;
    assert_eq!(holding.uploads_in_progress, 1, "{holding:?}");
    call.abort();
    drop(sender);
    let after = usage_once(&user, |usage| usage.uploads_in_progress == 0).await;
    assert_eq!(after.bytes_reserved, 0, "{after:?}");

    let last = pseudo_random(40_000, 7);
    user.upload(metadata("last.bin", ""), vec![Bytes::from(last.clone())])
        .await
        .expect("the quota's last free byte can be used");
    let usage = user.usage().await;
    assert_eq!((stored(&usage), usage.bytes_reserved), ((QUOTA, 3), 0));
    assert_over_quota(
        user.put_file(metadata("one-more.bin", ""), Bytes::from(vec![1u8]))
            .await,
        "one byte over a full quota",
        "USER_QUOTA_BYTES",
    );
    let other = stack.user("neighbour").await;
    other
        .put_file(metadata("theirs.bin", ""), Bytes::from(vec![2u8; 50_000]))
        .await
        .expect("a quota is per user");

    user.client()
        .delete_file(user.req(DeleteFileRequest {
            key: first.key.clone(),
        }))
        .await
        .expect("delete");
    assert_eq!(stored(&user.usage().await), (70_000, 2), "freed at once");
    user.put_file(
        metadata("after-delete.bin", ""),
        Bytes::from(vec![3u8; 30_000]),
    )
    .await
    .expect("deleting made room");

    let names = user.filenames().await;
    assert_eq!(names, ["after-delete.bin", "last.bin", "whole.bin"]);
    let at_the_limit = user
        .list_all()
        .await
        .into_iter()
        .find(|file| file.filename == "last.bin")
        .expect("listed");
    let (_, downloaded) = user.download(&at_the_limit.key).await.expect("download");
    assert!(downloaded == last, "the file at the limit is whole");
    let left = stack.settle_stored_files(4).await;
    assert_eq!(left.len(), 4, "nothing of the refused uploads: {left:?}");
}

/// With USER_QUOTA_BYTES for exactly ten 10,000-byte files, twenty uploads of one user
/// at once (streams with and without a declared size, and PutFiles) store exactly ten;
/// then with USER_MAX_FILES = 5, twelve at once store exactly five. The refused ones
/// name their quota and leave nothing.
async fn concurrent_uploads_of_one_user_never_pass_the_quotas(backend: Backend) {
    const SIZE: usize = 10_000;
    let stack = Stack::start(backend, |config| {
        config.user_quota_bytes = Some(10 * SIZE as u64)
    })
    .await;
    let user = stack.user("racing").await;
    let uploads = (0..20).map(|index| upload_one_way(&user, index, SIZE));
    let outcomes = futures::future::join_all(uploads).await;
    let (stored, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(stored.len(), 10, "{refused:?}");
    for outcome in refused {
        assert_over_quota(outcome, "an upload past the quota", "USER_QUOTA_BYTES");
    }
    let usage = user.usage().await;
    assert_eq!(
        (usage.bytes_used, usage.files, usage.bytes_reserved),
        (10 * SIZE as u64, 10, 0)
    );
    assert_eq!(stack.settle_stored_files(10).await.len(), 10);

    let stack = Stack::start(backend, |config| config.user_max_files = Some(5)).await;
    let user = stack.user("many").await;
    let outcomes =
        futures::future::join_all((0..12).map(|index| upload_one_way(&user, index, SIZE))).await;
    let (stored, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(stored.len(), 5, "{refused:?}");
    for outcome in refused {
        assert_over_quota(outcome, "an upload past the file limit", "USER_MAX_FILES");
    }
    assert_eq!(user.usage().await.files, 5);
    assert_eq!(user.list_all().await.len(), 5);
    assert_eq!(stack.settle_stored_files(5).await.len(), 5);
}

/// A stream of unknown size checks the quota once per part, not per message, but that
/// look-ahead is not held against its user: with 10,000 bytes of it received, a
/// PutFile of 80,000 fits in a 100,000-byte quota. The stream then goes on to 25,000
/// bytes, which no longer fit: it is refused when it ends, naming the quota, and stores
/// nothing; a stream that ends at the last free byte is stored.
async fn a_streams_look_ahead_takes_no_room_and_its_file_must_still_fit(backend: Backend) {
    let stack = Stack::start(backend, |config| config.user_quota_bytes = Some(QUOTA)).await;
    let user = stack.user("ahead").await;
    let (stream, call) = user.open_upload(metadata("growing.bin", ""));
    stream
        .send(chunk_message(vec![1; 10_000]))
        .await
        .expect("the stream is open");
    let on_record = tokio::time::Instant::now() + Duration::from_secs(10);
    while user.usage().await.bytes_reserved != 10_000 {
        assert!(
            tokio::time::Instant::now() < on_record,
            "the stream's bytes are never on record"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    user.put_file(metadata("beside.bin", ""), Bytes::from(vec![2u8; 80_000]))
        .await
        .expect("the stream's look-ahead leaves the rest of the quota free");
    stream
        .send(chunk_message(vec![3; 15_000]))
        .await
        .expect("the stream is open");
    stream
        .send(end_message())
        .await
        .expect("the stream is open");
    drop(stream);
    assert_over_quota(
        call.await.expect("the call's task"),
        "a stream that outgrew the room left",
        "USER_QUOTA_BYTES",
    );
    let usage = user.usage().await;
    assert_eq!((stored(&usage), usage.bytes_reserved), ((80_000, 1), 0));

    let last = user
        .upload(
            metadata("to-the-byte.bin", ""),
            vec![
                Bytes::from(vec![4u8; 10_000]),
                Bytes::from(vec![5u8; 10_000]),
            ],
        )
        .await
        .expect("a stream ending at the last free byte");
    assert_eq!(last.size, 20_000);
    assert_eq!(stored(&user.usage().await), (QUOTA, 2));
    assert_eq!(stack.settle_stored_files(2).await.len(), 2);
}

/// The `index`th of a mix of upload kinds: a declared stream, an undeclared stream, a
/// PutFile. Returns the stored file's key.
async fn upload_one_way(user: &User, index: usize, size: usize) -> Result<String, Status> {
    let content = pseudo_random(size, index as u64);
    let name = format!("racer-{index}.bin");
    match index % 3 {
        0 => user
            .upload_bytes(&name, &content)
            .await
            .map(|file| file.key),
        1 => user
            .upload(metadata(&name, ""), vec![Bytes::from(content)])
            .await
            .map(|file| file.key),
        _ => user
            .put_file(
                FileMetadata {
                    sha256: Some(sha256_hex(&content)),
                    ..metadata(&name, "")
                },
                Bytes::from(content),
            )
            .await
            .map(|file| file.key),
    }
}

/// With MAX_OPEN_SESSIONS_PER_USER = 3 and MAX_CONCURRENT_UPLOADS_PER_USER = 2: a fourth
/// session is refused and the three open ones are all still there; a third upload
/// while two streams are open is refused with `retry-after`; another user is served
/// meanwhile; when one session is aborted and the streams finish, the user may go on.
async fn a_user_at_the_limits_on_work_in_progress_is_refused_and_others_are_not(backend: Backend) {
    let stack = Stack::start(backend, |config| {
        config.max_open_sessions_per_user = 3;
        config.max_concurrent_uploads_per_user = 2;
    })
    .await;
    let (busy, other) = (stack.user("busy").await, stack.user("other").await);

    let mut sessions = Vec::new();
    for index in 0..3 {
        let session = busy
            .create_session(metadata(&format!("session-{index}.bin"), ""))
            .await;
        sessions.push(session.upload_id);
    }
    let refused = busy
        .client()
        .create_upload(busy.req(CreateUploadRequest {
            metadata: Some(metadata("fourth.bin", "")),
        }))
        .await
        .expect_err("a fourth session");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("MAX_OPEN_SESSIONS_PER_USER")
            && refused.message().contains("abort"),
        "{refused:?}"
    );
    for id in &sessions {
        assert_eq!(
            busy.session_offset(id).await,
            0,
            "the open sessions are kept"
        );
    }
    other.create_session(metadata("theirs.bin", "")).await;

    let (first, first_call) = busy.open_upload(metadata("first.bin", ""));
    let (second, second_call) = busy.open_upload(metadata("second.bin", ""));
    let (one, two) = (pseudo_random(1000, 1), pseudo_random(1000, 2));
    first.send(chunk_message(one.clone())).await.unwrap();
    second.send(chunk_message(two.clone())).await.unwrap();
    let usage = usage_once(&busy, |usage| usage.uploads_in_progress == 2).await;
    assert_eq!(
        (usage.uploads_in_progress, usage.open_sessions),
        (2, 3),
        "{usage:?}"
    );
    assert_eq!(
        (usage.max_concurrent_uploads, usage.max_open_sessions),
        (2, 3)
    );

    let third = busy
        .put_file(metadata("third.bin", ""), Bytes::from(vec![3u8; 100]))
        .await;
    let status = third.expect_err("a third upload at once");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("MAX_CONCURRENT_UPLOADS_PER_USER"),
        "{status:?}"
    );
    assert!(
        status.metadata().get("retry-after").is_some(),
        "says when to retry: {status:?}"
    );
    let chunk = append(&busy, &sessions[0], 0, vec![4u8; 100]).await;
    assert_eq!(
        chunk.expect_err("a session chunk is an upload too").code(),
        Code::ResourceExhausted
    );
    other
        .upload_bytes("theirs-streamed.bin", &pseudo_random(100_000, 9))
        .await
        .expect("another user uploads meanwhile");

    busy.client()
        .abort_upload(busy.req(AbortUploadRequest {
            upload_id: sessions.remove(0),
        }))
        .await
        .expect("abort");
    busy.create_session(metadata("now-there-is-room.bin", ""))
        .await;
    for (sender, call, content) in [(first, first_call, one), (second, second_call, two)] {
        sender.send(end_message()).await.unwrap();
        drop(sender);
        let file = call.await.unwrap().expect("a held stream finishes");
        let (_, downloaded) = busy.download(&file.key).await.unwrap();
        assert!(downloaded == content);
    }
    busy.put_file(metadata("third.bin", ""), Bytes::from(vec![3u8; 100]))
        .await
        .expect("room again once the streams finished");
    let usage = busy.usage().await;
    assert_eq!(
        (usage.files, usage.open_sessions, usage.uploads_in_progress),
        (3, 3, 0)
    );
}

/// GetUsage once `settled` holds of it (the server ends a cancelled upload on its own
/// time); fails after five seconds.
async fn usage_once(user: &User, settled: impl Fn(&GetUsageResponse) -> bool) -> GetUsageResponse {
    for _ in 0..50 {
        let usage = user.usage().await;
        if settled(&usage) {
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("usage never settled: {:?}", user.usage().await);
}

async fn append(user: &User, upload_id: &str, offset: u64, data: Vec<u8>) -> Result<u64, Status> {
    Ok(user
        .client()
        .upload_chunk(user.req(UploadChunkRequest {
            upload_id: upload_id.to_owned(),
            offset,
            data: Bytes::from(data),
        }))
        .await?
        .into_inner()
        .offset)
}
