//! storage-service, black-box: real auth-service and storage-service on loopback ports,
//! against a local directory and against a real S3 server (s3s-fs, verifying SigV4).
//! Every scenario runs on both backends.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use strongbox_proto::storage::v1::{
    AbortUploadRequest, CompleteUploadRequest, CreateUploadRequest, DeleteFileRequest,
    DownloadRequest, FileMetadata, GetDownloadUrlRequest, GetUploadStatusRequest, ListFilesRequest,
    PutFileRequest, StatFileRequest, UploadChunkRequest, UploadEnd, UploadRequest, upload_request,
};
use strongbox_tests::on_every_backend;
use strongbox_tests::storage::{
    Backend, Stack, User, download_with, metadata, pseudo_random, sha256_hex, upload_then_vanish,
};
use tonic::{Code, Request, Status};

on_every_backend!(
    upload_list_stat_download_and_delete,
    zero_byte_files_work,
    a_wrong_declared_checksum_is_data_loss_and_stores_nothing,
    a_wrong_declared_size_is_invalid_and_stores_nothing,
    the_size_limit_is_enforced_while_streaming,
    content_types_outside_the_allow_list_are_refused,
    malformed_upload_streams_are_refused,
    every_call_needs_a_valid_token,
    other_users_files_do_not_exist,
    hostile_filenames_stay_inside_the_namespace,
    same_name_uploads_at_once_get_distinct_keys,
    a_cancelled_upload_leaves_nothing_behind,
    listing_is_newest_first_and_paginated,
    resumable_upload_survives_a_restart,
    unfinished_sessions_expire_and_are_cleaned_up,
    download_urls_open_with_a_plain_http_get,
    a_session_with_a_wrong_checksum_is_data_loss_and_leaves_nothing,
    sessions_share_a_single_chunk_of_memory_and_all_finish,
    a_chunk_that_arrives_before_its_predecessor_waits_for_it,
    a_small_file_is_stored_in_one_call,
    one_message_uploads_refuse_bad_input_and_store_nothing,
);

/// PutFile: a whole file in one message, held to the same checks as a stream.
async fn a_small_file_is_stored_in_one_call(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("whole").await;
    let content = pseudo_random(700 * 1024, 31);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("../notes d'été.txt", "text/plain")
    };
    let stored = user
        .put_file(declared, Bytes::from(content.clone()))
        .await
        .expect("PutFile");
    assert_eq!(stored.filename, "../notes d'été.txt");
    assert_eq!(stored.size, content.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&content));
    assert_eq!(stored.content_type, "text/plain");
    assert!(
        stored.key.starts_with(&format!("{}/", user.id)),
        "{}",
        stored.key
    );
    let listed = user.list_all().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, stored.key);
    let (_, downloaded) = user.download(&stored.key).await.expect("a download");
    assert!(downloaded == content, "the stored bytes differ");
    // Nothing declared but the name: the service works out size and checksum.
    let empty = user
        .put_file(metadata("empty", ""), Bytes::new())
        .await
        .expect("an empty PutFile");
    assert_eq!(empty.size, 0);
    assert_eq!(empty.sha256, sha256_hex(b""));
    assert_eq!(stack.settle_stored_files(2).await.len(), 2);
}

async fn one_message_uploads_refuse_bad_input_and_store_nothing(backend: Backend) {
    let stack = Stack::start(backend, |config| config.max_upload_bytes = 1024 * 1024).await;
    let user = stack.user("whole-bad").await;
    let content = Bytes::from(pseudo_random(64 * 1024, 32));
    let cases = [
        (
            "a wrong checksum",
            FileMetadata {
                sha256: Some(sha256_hex(b"something else")),
                ..metadata("a.bin", "")
            },
            content.clone(),
            Code::DataLoss,
            "SHA-256",
        ),
        (
            "a wrong size",
            FileMetadata {
                size: Some(content.len() as u64 + 1),
                ..metadata("a.bin", "")
            },
            content.clone(),
            Code::InvalidArgument,
            "declared",
        ),
        (
            "over the upload limit",
            metadata("a.bin", ""),
            Bytes::from(vec![1u8; 1024 * 1024 + 1]),
            Code::ResourceExhausted,
            "1048576",
        ),
        (
            "a malformed checksum",
            FileMetadata {
                sha256: Some("xyz".into()),
                ..metadata("a.bin", "")
            },
            content.clone(),
            Code::InvalidArgument,
            "sha256",
        ),
    ];
    for (what, declared, data, code, expected) in cases {
        let status = user.put_file(declared, data).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{what}: {}",
            status.message()
        );
    }
    let status = user
        .client()
        .put_file(user.req(PutFileRequest {
            metadata: None,
            data: content.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("metadata"),
        "{}",
        status.message()
    );
    // More than one message may carry, as a whole file or as a session's chunk: just over
    // the chunk limit, and far over it (which the transport refuses before the service
    // sees it). Each says what to do instead.
    let session = user.create_session(metadata("huge.bin", "")).await;
    let chunk_limit = stack.config.max_chunk_bytes as usize;
    for size in [chunk_limit + 1, chunk_limit + 1024 * 1024] {
        let data = Bytes::from(vec![0u8; size]);
        let whole = user
            .put_file(metadata("huge.bin", ""), data.clone())
            .await
            .unwrap_err();
        let chunk = user
            .client()
            .upload_chunk(user.req(UploadChunkRequest {
                upload_id: session.upload_id.clone(),
                offset: 0,
                data,
            }))
            .await
            .unwrap_err();
        for status in [whole, chunk] {
            assert_eq!(status.code(), Code::ResourceExhausted, "{size}: {status:?}");
            assert!(
                status.message().contains("resumable session"),
                "{size}: {}",
                status.message()
            );
        }
    }
    user.client()
        .abort_upload(user.req(AbortUploadRequest {
            upload_id: session.upload_id,
        }))
        .await
        .expect("AbortUpload");
    assert!(user.list_all().await.is_empty());
    assert!(
        stack.settle_stored_files(0).await.is_empty(),
        "{:?}",
        stack.stored_files()
    );
}

/// A client sending a chunk while the one before is still on its way cannot tell which
/// reaches the service first; the one that is early waits (briefly) for the other
/// instead of being refused.
async fn a_chunk_that_arrives_before_its_predecessor_waits_for_it(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("early").await;
    let chunk = stack.config.upload_part_size as usize;
    let content = pseudo_random(chunk + 5, 33);
    let session = user
        .create_session(FileMetadata {
            size: Some(content.len() as u64),
            sha256: Some(sha256_hex(&content)),
            ..metadata("early.bin", "")
        })
        .await;
    let send = |offset: usize, data: &[u8]| {
        let (mut client, request) = (
            user.client(),
            user.req(UploadChunkRequest {
                upload_id: session.upload_id.clone(),
                offset: offset as u64,
                data: Bytes::copy_from_slice(data),
            }),
        );
        tokio::spawn(async move {
            client
                .upload_chunk(request)
                .await
                .map(|r| r.into_inner().offset)
        })
    };
    let second = send(chunk, &content[chunk..]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = send(0, &content[..chunk]);
    assert_eq!(first.await.unwrap().unwrap(), chunk as u64);
    assert_eq!(second.await.unwrap().unwrap(), content.len() as u64);
    let file = user.complete_session(&session.upload_id).await;
    let (_, downloaded) = user.download(&file.key).await.unwrap();
    assert!(downloaded == content);
}

/// Resumable-session chunks are under the same memory bound as streams: a chunk's room
/// is reserved before its message is read. With room for one chunk, sessions appending
/// at once on one connection take turns, and all complete intact.
async fn sessions_share_a_single_chunk_of_memory_and_all_finish(backend: Backend) {
    let stack = Stack::start(backend, |config| {
        config.max_chunk_bytes = config.upload_part_size;
        config.upload_memory_bytes = config.upload_part_size;
    })
    .await;
    let user = stack.user("session-memory").await;
    let chunk = stack.config.max_chunk_bytes as usize;
    let contents: Vec<Vec<u8>> = (0..4)
        .map(|seed| pseudo_random(2 * chunk + 3, 60 + seed))
        .collect();
    let sessions = contents.iter().map(|content| {
        let user = &user;
        async move {
            let session = user
                .create_session(FileMetadata {
                    size: Some(content.len() as u64),
                    sha256: Some(sha256_hex(content)),
                    ..metadata("turns.bin", "")
                })
                .await;
            for (index, piece) in content.chunks(chunk).enumerate() {
                user.client()
                    .upload_chunk(user.req(UploadChunkRequest {
                        upload_id: session.upload_id.clone(),
                        offset: (index * chunk) as u64,
                        data: Bytes::copy_from_slice(piece),
                    }))
                    .await
                    .expect("UploadChunk");
            }
            user.complete_session(&session.upload_id).await
        }
    });
    let completed =
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(sessions))
            .await
            .expect("sessions sharing one chunk of memory must not deadlock");
    for (content, file) in contents.iter().zip(completed) {
        let (_, downloaded) = user.download(&file.key).await.unwrap();
        assert!(downloaded == *content, "{} differs", file.key);
    }
}

/// A session chunk whose client stops sending mid-message holds a chunk's memory (taken
/// before the message is read); after UPLOAD_IDLE_TIMEOUT_SECONDS the call fails with a
/// message saying so, and the chunk that was waiting for the memory is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_chunk_is_cancelled_and_frees_its_memory() {
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    let stack = Stack::start(Backend::Local, |config| {
        config.max_chunk_bytes = config.upload_part_size;
        config.upload_memory_bytes = config.upload_part_size;
        config.upload_idle_timeout_seconds = 1;
    })
    .await;
    let user = stack.user("stalled-chunk").await;
    let session = user.create_session(metadata("chunks.bin", "")).await;

    // A raw gRPC call: a frame header announcing 1 MiB, 64 KiB of it, then nothing.
    let (stall, frames) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Status>>(2);
    let mut partial = vec![0u8];
    partial.extend_from_slice(&(1024u32 * 1024).to_be_bytes());
    partial.extend_from_slice(&[7u8; 64 * 1024]);
    stall
        .send(Ok(http_body::Frame::data(Bytes::from(partial))))
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/storage.v1.StorageService/UploadChunk",
            stack.storage.url()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", user.token))
        .body(tonic::body::Body::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(frames),
        )))
        .unwrap();
    let stalled = tokio::spawn(stack.storage.channel().oneshot(request));
    // Let the stalled call take the memory first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let content = pseudo_random(3 * 1024 * 1024, 81);
    let offset = tokio::time::timeout(
        Duration::from_secs(30),
        user.client().upload_chunk(user.req(UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset: 0,
            data: Bytes::from(content.clone()),
        })),
    )
    .await
    .expect("the waiting chunk gets the memory once the stalled one is cancelled")
    .unwrap()
    .into_inner()
    .offset;
    assert_eq!(offset, content.len() as u64);

    let response = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the stalled call ends")
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    let status = Status::from_header_map(&parts.headers)
        .or_else(|| trailers.as_ref().and_then(Status::from_header_map))
        .expect("a gRPC status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no data arrived for 1 s"),
        "{status:?}"
    );
    drop(stall);
    let file = user.complete_session(&session.upload_id).await;
    let (_, downloaded) = user.download(&file.key).await.unwrap();
    assert!(downloaded == content);
}

/// A client that stops sending mid-upload holds a part of the upload memory; after
/// UPLOAD_IDLE_TIMEOUT_SECONDS its upload is cancelled with a message saying so,
/// nothing of it is left, and the upload that was waiting for that memory finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cancelled_and_frees_its_memory() {
    let stack = Stack::start(Backend::S3, |config| {
        config.max_chunk_bytes = config.upload_part_size;
        config.upload_memory_bytes = config.upload_part_size;
        config.upload_idle_timeout_seconds = 1;
    })
    .await;
    let user = stack.user("stall").await;
    // A full part (a multipart upload on S3) and a bit of the next, then nothing.
    let (stall, stalled_stream) = tokio::sync::mpsc::channel(8);
    let chunks = (0..6).map(|seed| {
        upload_request::Payload::Chunk(Bytes::from(pseudo_random(1024 * 1024, 70 + seed)))
    });
    for payload in std::iter::once(upload_request::Payload::Metadata(metadata(
        "stalled.bin",
        "",
    )))
    .chain(chunks)
    {
        stall
            .send(UploadRequest {
                payload: Some(payload),
            })
            .await
            .unwrap();
    }
    let stalled = tokio::spawn({
        let (client, request) = (
            user.client(),
            user.req(tokio_stream::wrappers::ReceiverStream::new(stalled_stream)),
        );
        async move { client.clone().upload(request).await }
    });
    // Let the stalled upload take the memory first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let content = pseudo_random(7 * 1024 * 1024, 80);
    let waiting = tokio::time::timeout(
        Duration::from_secs(30),
        user.upload_bytes("waiting.bin", &content),
    )
    .await
    .expect("the waiting upload gets the memory once the stalled one is cancelled")
    .unwrap();

    let cancelled = stalled.await.unwrap().unwrap_err();
    assert_eq!(cancelled.code(), Code::DeadlineExceeded, "{cancelled:?}");
    assert!(
        cancelled.message().contains("no data arrived for 1 s"),
        "{cancelled:?}"
    );
    drop(stall);
    let files = user.list_all().await;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].key, waiting.key);
    let (_, downloaded) = user.download(&waiting.key).await.unwrap();
    assert!(downloaded == content);
    let left = stack.settle_stored_files(1).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let parts = stack.s3.as_ref().unwrap().multipart_files();
    assert!(
        parts.is_empty(),
        "the stalled upload's part is left: {parts:?}"
    );
}

async fn a_session_with_a_wrong_checksum_is_data_loss_and_leaves_nothing(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("mismatch").await;
    let content = pseudo_random(6 * 1024 * 1024 + 1, 9);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(b"something else")),
        ..metadata("wrong.bin", "")
    };
    let session = user.create_session(declared).await;
    user.client()
        .upload_chunk(user.req(UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset: 0,
            data: Bytes::from(content),
        }))
        .await
        .unwrap();
    let completed = user
        .client()
        .complete_upload(user.req(CompleteUploadRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(completed.code(), Code::DataLoss, "{completed:?}");
    assert!(user.list_all().await.is_empty());
    let gone = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest {
            upload_id: session.upload_id,
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Neither the completed object (S3) nor the staged chunk (local) is left.
    let left = stack.settle_stored_files(0).await;
    assert!(left.is_empty(), "{left:?}");
}

/// The upload memory (`UPLOAD_MEMORY_BYTES`) bounds every S3 upload's parts together,
/// the part being filled included. With room for a single part, concurrent multi-part
/// uploads must take turns — and all finish, intact. The six share one HTTP/2
/// connection: if the bytes of uploads waiting for memory could fill the connection's
/// window, the upload holding the memory would never receive the rest of its part and
/// this would hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_share_a_single_part_of_memory_and_all_finish() {
    let stack = Stack::start(Backend::S3, |config| {
        config.max_chunk_bytes = config.upload_part_size;
        config.upload_memory_bytes = config.upload_part_size;
    })
    .await;
    let user = stack.user("memory").await;
    user.upload_at_once_intact(6, 12 * 1024 * 1024 + 7, 40)
        .await;
}

async fn upload_list_stat_download_and_delete(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let alice = stack.user("alice").await;
    // Larger than one 5 MiB part, not a multiple of the chunk size.
    let content = pseudo_random(6 * 1024 * 1024 + 123, 1);
    let declared = FileMetadata {
        filename: "Quarterly report.pdf".into(),
        content_type: "application/pdf".into(),
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
    };
    let chunks = content
        .chunks(1024 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let uploaded = alice.upload(declared, chunks).await.unwrap();
    assert_eq!(uploaded.filename, "Quarterly report.pdf");
    assert_eq!(uploaded.status, "uploaded");
    assert_eq!(uploaded.size, content.len() as u64);
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    assert_eq!(uploaded.content_type, "application/pdf");
    assert!(
        uploaded.key.starts_with(&format!("{}/", alice.id)),
        "{}",
        uploaded.key
    );
    assert!(
        uploaded.key.ends_with("-Quarterly_report.pdf"),
        "{}",
        uploaded.key
    );
    assert!(!uploaded.url.is_empty());
    assert!(uploaded.created_at.is_some() && uploaded.url_expires_at.is_some());

    let listed = alice.list_all().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, uploaded.key);
    let stat = alice
        .client()
        .stat_file(alice.req(StatFileRequest {
            key: uploaded.key.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(stat.into_inner().file.unwrap().sha256, uploaded.sha256);

    let (info, downloaded) = alice.download(&uploaded.key).await.unwrap();
    assert_eq!(info.filename, "Quarterly report.pdf");
    assert_eq!(info.size, content.len() as u64);
    assert!(downloaded == content, "downloaded bytes differ");

    alice
        .client()
        .delete_file(alice.req(DeleteFileRequest {
            key: uploaded.key.clone(),
        }))
        .await
        .unwrap();
    let gone = alice
        .client()
        .stat_file(alice.req(StatFileRequest {
            key: uploaded.key.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(alice.list_all().await.is_empty());
    assert_eq!(
        alice.download(&uploaded.key).await.unwrap_err().code(),
        Code::NotFound
    );
    let again = alice
        .client()
        .delete_file(alice.req(DeleteFileRequest { key: uploaded.key }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert!(
        stack.settle_stored_files(0).await.is_empty(),
        "{:?}",
        stack.stored_files()
    );
}

async fn zero_byte_files_work(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("zero").await;
    let empty = FileMetadata {
        size: Some(0),
        sha256: Some(sha256_hex(b"")),
        ..metadata("empty.txt", "text/plain")
    };
    let uploaded = user.upload(empty, Vec::new()).await.unwrap();
    assert_eq!(uploaded.size, 0);
    assert_eq!(uploaded.sha256, sha256_hex(b""));
    let (info, content) = user.download(&uploaded.key).await.unwrap();
    assert_eq!(info.size, 0);
    assert!(content.is_empty());
}

async fn a_wrong_declared_checksum_is_data_loss_and_stores_nothing(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("checksum").await;
    let content = pseudo_random(6 * 1024 * 1024, 2);
    let declared = FileMetadata {
        sha256: Some(sha256_hex(b"something else")),
        ..metadata("a.bin", "")
    };
    let chunks = content
        .chunks(512 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let status = user.upload(declared, chunks).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(status.message().contains("SHA-256"), "{}", status.message());
    assert!(user.list_all().await.is_empty());
    assert!(
        stack.settle_stored_files(0).await.is_empty(),
        "{:?}",
        stack.stored_files()
    );

    let malformed = FileMetadata {
        sha256: Some("abc".into()),
        ..metadata("a.bin", "")
    };
    let status = user.upload(malformed, Vec::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn a_wrong_declared_size_is_invalid_and_stores_nothing(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("size").await;
    let content = Bytes::from(pseudo_random(300_000, 3));
    for declared_size in [299_999, 300_001] {
        let declared = FileMetadata {
            size: Some(declared_size),
            ..metadata("a.bin", "")
        };
        let status = user
            .upload(declared, vec![content.clone()])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{declared_size}");
        assert!(
            status.message().contains("declared"),
            "{}",
            status.message()
        );
    }
    assert!(user.list_all().await.is_empty());
    assert!(
        stack.settle_stored_files(0).await.is_empty(),
        "{:?}",
        stack.stored_files()
    );
}

async fn the_size_limit_is_enforced_while_streaming(backend: Backend) {
    let stack = Stack::start(backend, |config| config.max_upload_bytes = 1024 * 1024).await;
    let user = stack.user("limit").await;
    // Undeclared: refused as soon as the stream passes the limit.
    let content = pseudo_random(3 * 1024 * 1024, 4);
    let chunks = content
        .chunks(256 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let status = user
        .upload(metadata("big.bin", ""), chunks)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("1048576"), "{}", status.message());
    // Declared: refused before any byte.
    let declared = FileMetadata {
        size: Some(2 * 1024 * 1024),
        ..metadata("big.bin", "")
    };
    let status = user.upload(declared, Vec::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Exactly at the limit is fine.
    user.upload_bytes("fits.bin", &content[..1024 * 1024])
        .await
        .unwrap();
    assert_eq!(user.list_all().await.len(), 1);
    assert_eq!(
        stack.settle_stored_files(1).await.len(),
        1,
        "{:?}",
        stack.stored_files()
    );
}

async fn content_types_outside_the_allow_list_are_refused(backend: Backend) {
    let stack = Stack::start(backend, |config| {
        config.allowed_content_types = vec!["image/*".into(), "application/pdf".into()];
    })
    .await;
    let user = stack.user("types").await;
    let status = user
        .upload(
            metadata("notes.txt", "text/plain"),
            vec![Bytes::from_static(b"hi")],
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("image/*"), "{}", status.message());
    let bogus = user
        .upload(metadata("x", "not a type"), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(bogus.code(), Code::InvalidArgument);
    user.upload(
        metadata("cat.png", "image/png"),
        vec![Bytes::from_static(b"png")],
    )
    .await
    .unwrap();
    assert_eq!(user.list_all().await.len(), 1);
}

async fn malformed_upload_streams_are_refused(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("malformed").await;
    let chunk = |bytes: &'static [u8]| upload_request::Payload::Chunk(Bytes::from_static(bytes));
    let meta = || upload_request::Payload::Metadata(metadata("a.txt", "text/plain"));
    let end = || upload_request::Payload::End(UploadEnd {});
    let cases: Vec<(&str, Vec<Option<upload_request::Payload>>, &str)> = vec![
        (
            "chunk first",
            vec![Some(chunk(b"data")), Some(meta())],
            "first message",
        ),
        (
            "metadata twice",
            vec![Some(meta()), Some(chunk(b"data")), Some(meta())],
            "twice",
        ),
        ("empty stream", vec![], "empty"),
        (
            "empty message",
            vec![Some(meta()), None],
            "metadata, a chunk or end",
        ),
        (
            "stops without end or a declared size",
            vec![Some(meta()), Some(chunk(b"data"))],
            "cannot be told apart from a cancelled upload",
        ),
        (
            "a chunk after end",
            vec![Some(meta()), Some(end()), Some(chunk(b"data"))],
            "nothing may follow",
        ),
    ];
    for (what, messages, expected) in cases {
        let stream = futures::stream::iter(
            messages
                .into_iter()
                .map(|payload| UploadRequest { payload }),
        );
        let status = user.client().upload(user.req(stream)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert!(
            status.message().contains(expected),
            "{what}: {}",
            status.message()
        );
    }
    // A message over the size limit is refused by the transport with a clear code.
    let huge = Bytes::from(vec![0u8; 9 * 1024 * 1024]);
    let status = user
        .upload(metadata("huge.bin", ""), vec![huge])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(user.list_all().await.is_empty());
    assert!(
        stack.settle_stored_files(0).await.is_empty(),
        "{:?}",
        stack.stored_files()
    );
}

async fn every_call_needs_a_valid_token(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("token").await;
    let mut client = user.client();
    let key = format!("{}/1-00-x.txt", user.id);
    let expect_unauthenticated =
        |status: tonic::Status| assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    expect_unauthenticated(
        client
            .list_files(ListFilesRequest::default())
            .await
            .unwrap_err(),
    );
    expect_unauthenticated(
        client
            .stat_file(StatFileRequest { key: key.clone() })
            .await
            .unwrap_err(),
    );
    expect_unauthenticated(
        client
            .delete_file(DeleteFileRequest { key: key.clone() })
            .await
            .unwrap_err(),
    );
    expect_unauthenticated(
        client
            .get_download_url(GetDownloadUrlRequest {
                key: key.clone(),
                expires_in: 0,
            })
            .await
            .unwrap_err(),
    );
    expect_unauthenticated(
        client
            .create_upload(CreateUploadRequest {
                metadata: Some(metadata("a", "")),
            })
            .await
            .unwrap_err(),
    );
    expect_unauthenticated(
        client
            .put_file(PutFileRequest {
                metadata: Some(metadata("a", "")),
                data: Bytes::from_static(b"a"),
            })
            .await
            .unwrap_err(),
    );
    let stream = futures::stream::iter([UploadRequest {
        payload: Some(upload_request::Payload::Metadata(metadata("a", ""))),
    }]);
    expect_unauthenticated(client.upload(stream).await.unwrap_err());
    let bad = strongbox_tests::auth::with_bearer(ListFilesRequest::default(), "not.a.token");
    expect_unauthenticated(client.list_files(bad).await.unwrap_err());
    // A bare user-id header is not a credential.
    let mut spoofed = Request::new(ListFilesRequest::default());
    spoofed
        .metadata_mut()
        .insert("x-user-id", user.id.to_string().parse().unwrap());
    expect_unauthenticated(client.list_files(spoofed).await.unwrap_err());
}

async fn other_users_files_do_not_exist(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let alice = stack.user("alice").await;
    let bob = stack.user("bob").await;
    let secret = alice
        .upload_bytes("diary.txt", b"dear diary")
        .await
        .unwrap();
    let guessed = [
        secret.key.clone(),
        format!("{}/../{}", bob.id, secret.key),
        secret
            .key
            .replace(&alice.id.to_string(), &bob.id.to_string()),
        format!("{}/", alice.id),
        "../../etc/passwd".to_owned(),
    ];
    let mut client = bob.client();
    for key in &guessed {
        let stat = client
            .stat_file(bob.req(StatFileRequest { key: key.clone() }))
            .await
            .unwrap_err();
        assert_eq!(stat.code(), Code::NotFound, "stat {key}");
        assert_eq!(
            bob.download(key).await.unwrap_err().code(),
            Code::NotFound,
            "download {key}"
        );
        let url = client
            .get_download_url(bob.req(GetDownloadUrlRequest {
                key: key.clone(),
                expires_in: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(url.code(), Code::NotFound, "url {key}");
        let delete = client
            .delete_file(bob.req(DeleteFileRequest { key: key.clone() }))
            .await
            .unwrap_err();
        assert_eq!(delete.code(), Code::NotFound, "delete {key}");
    }
    assert!(bob.list_all().await.is_empty());
    // Alice's file is untouched, and the message for "someone else's" equals "missing".
    assert_eq!(alice.download(&secret.key).await.unwrap().1, b"dear diary");
    let missing = client
        .stat_file(bob.req(StatFileRequest {
            key: format!("{}/1-00-nothing.txt", bob.id),
        }))
        .await
        .unwrap_err();
    let foreign = client
        .stat_file(bob.req(StatFileRequest {
            key: secret.key.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.message(), foreign.message());
}

async fn hostile_filenames_stay_inside_the_namespace(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("hostile").await;
    let long = "ä".repeat(512); // 1 KiB of UTF-8
    let hostile = [
        "../../etc/passwd",
        "/etc/shadow",
        "..\\..\\windows\\system32",
        "bell\u{7}and\nnewline.txt",
        long.as_str(),
        "invoice\u{202e}fdp.exe",
        "...",
        "",
        "%2e%2e%2fescape",
    ];
    for (index, name) in hostile.iter().enumerate() {
        let content = format!("content {index}");
        let uploaded = user.upload_bytes(name, content.as_bytes()).await.unwrap();
        let expected_name = if name.is_empty() { "file" } else { name };
        assert_eq!(
            uploaded.filename, expected_name,
            "the original name comes back verbatim"
        );
        let (namespace, rest) = uploaded.key.split_once('/').unwrap();
        assert_eq!(namespace, user.id.to_string());
        assert!(
            !rest.contains('/') && !rest.contains('\\') && !rest.contains(".."),
            "{}",
            uploaded.key
        );
        assert!(rest.len() <= 100, "{} bytes", rest.len());
        assert!(
            rest.chars().all(|c| !c.is_control() && c != '\u{202e}'),
            "{:?}",
            rest
        );
        let (info, downloaded) = user.download(&uploaded.key).await.unwrap();
        assert_eq!(info.filename, expected_name);
        assert_eq!(downloaded, content.as_bytes());
    }
    // A NUL, which no file system allows in a name, is refused on every database.
    let nul = user
        .upload_bytes("nul\u{0}byte.txt", b"content")
        .await
        .unwrap_err();
    assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
    assert!(nul.message().contains("NUL"), "{nul:?}");
    assert_eq!(user.list_all().await.len(), hostile.len());
    // Nothing was written outside the object store's own directory.
    for file in stack.stored_files() {
        let store_root = match &stack.s3 {
            Some(s3) => s3.root().to_path_buf(),
            None => stack.config.storage_dir(),
        };
        assert!(file.starts_with(&store_root), "{}", file.display());
    }
}

async fn same_name_uploads_at_once_get_distinct_keys(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("twins").await;
    let uploads = (0..6u8).map(|index| {
        let user = &user;
        async move { user.upload_bytes("same.txt", &[index; 1000]).await.unwrap() }
    });
    let uploaded = futures::future::join_all(uploads).await;
    let keys: HashSet<_> = uploaded.iter().map(|file| file.key.clone()).collect();
    assert_eq!(keys.len(), 6);
    for (index, file) in uploaded.iter().enumerate() {
        assert_eq!(
            user.download(&file.key).await.unwrap().1,
            vec![index as u8; 1000]
        );
    }
}

async fn a_cancelled_upload_leaves_nothing_behind(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("cancel").await;
    // Enough for at least one 5 MiB part to reach the store before the client vanishes.
    upload_then_vanish(stack.storage.url(), user.token.clone(), "partial.bin", 12);
    assert!(user.list_all().await.is_empty());
    let left = stack.settle_stored_files(0).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

async fn listing_is_newest_first_and_paginated(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("pages").await;
    let mut keys = Vec::new();
    for index in 0..5 {
        keys.push(
            user.upload_bytes(&format!("file-{index}.txt"), b"x")
                .await
                .unwrap()
                .key,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = user
            .client()
            .list_files(user.req(ListFilesRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.files.len() <= 2);
        seen.extend(page.files.into_iter().map(|file| file.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    keys.reverse();
    assert_eq!(seen, keys, "newest first, each file once");
    assert_eq!(pages, 3);
    // Not base64; and well-formed base64 of a key no index holds (a NUL in it, which
    // PostgreSQL would refuse as text): both the client's mistake, on every database.
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1:a\u{0}b");
    for token in ["garbage!".to_owned(), forged] {
        let bad = user
            .client()
            .list_files(user.req(ListFilesRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{token}: {bad:?}");
    }
}

async fn resumable_upload_survives_a_restart(backend: Backend) {
    let mut stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("resume").await;
    let mib = 1024 * 1024;
    let content = pseudo_random(13 * mib + 11, 5);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("movie.mp4", "video/mp4")
    };
    let session = user.create_session(declared).await;
    assert_eq!(session.max_chunk_size, 8 * mib as u64);
    // On S3 every chunk is a multipart part, so all but the last hold 5 MiB or more.
    let min_chunk = if backend.is_s3() { 5 * mib } else { 0 };
    assert_eq!(session.min_chunk_size, min_chunk as u64);
    let id = session.upload_id.clone();
    let chunk = |start: usize, len: usize| UploadChunkRequest {
        upload_id: id.clone(),
        offset: start as u64,
        data: Bytes::copy_from_slice(&content[start..(start + len).min(content.len())]),
    };
    let acked = user
        .client()
        .upload_chunk(user.req(chunk(0, 5 * mib)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.offset, 5 * mib as u64);
    // Re-sending an acknowledged chunk is harmless.
    let again = user
        .client()
        .upload_chunk(user.req(chunk(0, 5 * mib)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.offset, 5 * mib as u64);
    // A gap is refused with the offset to resume from.
    let gap = user
        .client()
        .upload_chunk(user.req(chunk(6 * mib, mib)))
        .await
        .unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition);
    assert!(
        gap.message().contains(&(5 * mib).to_string()),
        "{}",
        gap.message()
    );
    if backend.is_s3() {
        // A small chunk before the end could never be completed on S3: refused up front.
        let small = user
            .client()
            .upload_chunk(user.req(chunk(5 * mib, mib)))
            .await
            .unwrap_err();
        assert_eq!(small.code(), Code::InvalidArgument);
        assert!(small.message().contains("at least"), "{}", small.message());
    }
    // Completing early says what is missing.
    let early = user
        .client()
        .complete_upload(user.req(CompleteUploadRequest {
            upload_id: id.clone(),
        }))
        .await;
    assert_eq!(early.unwrap_err().code(), Code::FailedPrecondition);

    stack.restart_storage().await;

    let status = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest {
            upload_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.offset, 5 * mib as u64);
    assert_eq!(status.metadata.unwrap().filename, "movie.mp4");
    // The rest in 5 MiB chunks: 5..10 MiB, then the last 3 MiB and 11 bytes.
    let mut offset = status.offset as usize;
    while offset < content.len() {
        offset = user
            .client()
            .upload_chunk(user.req(chunk(offset, 5 * mib)))
            .await
            .unwrap()
            .into_inner()
            .offset as usize;
    }
    let file = user.complete_session(&id).await;
    assert_eq!(file.size, content.len() as u64);
    assert_eq!(file.sha256, sha256_hex(&content));
    assert!(
        user.download(&file.key).await.unwrap().1 == content,
        "assembled bytes differ"
    );
    // The session is gone, and so is its staging: only the file remains.
    let gone = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest { upload_id: id }))
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        stack.settle_stored_files(1).await.len(),
        1,
        "{:?}",
        stack.stored_files()
    );

    // Another user cannot see or touch a session.
    let other = stack.user("other").await;
    let session = user.create_session(metadata("x", "")).await;
    let foreign = other
        .client()
        .get_upload_status(other.req(GetUploadStatusRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
    user.client()
        .abort_upload(user.req(AbortUploadRequest {
            upload_id: session.upload_id.clone(),
        }))
        .await
        .unwrap();
    let aborted = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest {
            upload_id: session.upload_id,
        }))
        .await;
    assert_eq!(aborted.unwrap_err().code(), Code::NotFound);
}

async fn unfinished_sessions_expire_and_are_cleaned_up(backend: Backend) {
    let stack = Stack::start(backend, |config| config.upload_session_ttl_seconds = 1).await;
    let user = stack.user("expire").await;
    let session = user.create_session(metadata("x.bin", "")).await;
    let data = Bytes::from(pseudo_random(100_000, 6));
    user.client()
        .upload_chunk(user.req(UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset: 0,
            data,
        }))
        .await
        .unwrap();
    assert!(!stack.stored_files().is_empty(), "the chunk is stored");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = user
        .client()
        .get_upload_status(user.req(GetUploadStatusRequest {
            upload_id: session.upload_id,
        }))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::NotFound);
    let left = stack.settle_stored_files(0).await;
    assert!(left.is_empty(), "the sweeper left {left:?}");
}

async fn download_urls_open_with_a_plain_http_get(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("urls").await;
    let content = pseudo_random(200_000, 7);
    let uploaded = user.upload_bytes("photo.jpg", &content).await.unwrap();
    let fresh = user
        .client()
        .get_download_url(user.req(GetDownloadUrlRequest {
            key: uploaded.key.clone(),
            expires_in: 120,
        }))
        .await
        .unwrap()
        .into_inner();
    let too_long = user
        .client()
        .get_download_url(user.req(GetDownloadUrlRequest {
            key: uploaded.key.clone(),
            expires_in: 8 * 24 * 3600,
        }))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);

    match backend {
        Backend::S3 | Backend::S3Postgres => {
            for url in [&uploaded.url, &fresh.url] {
                let response = reqwest::get(url.as_str()).await.unwrap();
                assert_eq!(response.status(), 200, "{url}");
                let disposition = response.headers().get("content-disposition").cloned();
                assert_eq!(response.bytes().await.unwrap(), content);
                if let Some(disposition) = disposition {
                    assert!(disposition.to_str().unwrap().contains("photo.jpg"));
                }
            }
        }
        Backend::Local => {
            // The gateway serves these links; here the link's own parameters authorize
            // a Download, and nothing else does.
            for url in [&uploaded.url, &fresh.url] {
                let link = url::Url::parse(url).unwrap();
                assert!(
                    link.as_str().starts_with("http://localhost:8000/files/"),
                    "{link}"
                );
                let query: std::collections::HashMap<_, _> =
                    link.query_pairs().into_owned().collect();
                let signed = DownloadRequest {
                    key: uploaded.key.clone(),
                    expires: query["expires"].parse().unwrap(),
                    signature: query["signature"].clone(),
                    ..Default::default()
                };
                let (_, downloaded) = download_with(&user.client(), Request::new(signed.clone()))
                    .await
                    .unwrap();
                assert_eq!(downloaded, content);
                let forged = DownloadRequest {
                    expires: signed.expires + 1,
                    ..signed
                };
                let refused = download_with(&user.client(), Request::new(forged))
                    .await
                    .unwrap_err();
                assert_eq!(refused.code(), Code::PermissionDenied);
            }
        }
    }
}

/// S3 only: URLs are signed for STORAGE_PUBLIC_ENDPOINT, and S3 signatures bind the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_are_signed_for_the_public_endpoint() {
    let mut stack = Stack::start(Backend::S3, |_| {}).await;
    let port = stack.s3.as_ref().unwrap().service.addr.port();
    // Browsers reach the same server as "localhost"; services as 127.0.0.1.
    stack.config.storage_public_endpoint = Some(format!("http://localhost:{port}"));
    stack.restart_storage().await;
    let user: User = stack.user("public").await;
    let content = pseudo_random(50_000, 8);
    let uploaded = user.upload_bytes("public.bin", &content).await.unwrap();
    let url = url::Url::parse(&uploaded.url).unwrap();
    assert_eq!(url.host_str(), Some("localhost"));
    let response = reqwest::get(url.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), content);

    let mut other_host = url.clone();
    other_host.set_host(Some("127.0.0.1")).unwrap();
    let refused = reqwest::get(other_host).await.unwrap();
    assert_eq!(
        refused.status(),
        403,
        "a URL signed for one host must not work at another"
    );
    let mut other_key = url;
    let swapped = other_key.path().replace("public.bin", "other.bin");
    other_key.set_path(&swapped);
    assert_eq!(reqwest::get(other_key).await.unwrap().status(), 403);
}
