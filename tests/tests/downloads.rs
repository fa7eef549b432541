//! Ranged downloads, black-box: a Download with `offset` and `length` streams exactly
//! those bytes of the file, while its first message still describes the whole file
//! (size, SHA-256), so a client can continue an interrupted download where it stopped
//! and check the whole file at the end. Real auth-service and storage-service on
//! loopback, against a local directory and a real S3 server.

use futures::StreamExt;
use strongbox_proto::storage::v1::{DownloadRequest, FileInfo, download_response};
use strongbox_tests::on_both_backends;
use strongbox_tests::storage::{Backend, Stack, User, download_with, pseudo_random, sha256_hex};
use tonic::{Code, Status};

on_both_backends!(
    a_range_is_exactly_its_bytes_and_the_info_describes_the_whole_file,
    the_end_of_a_file_gives_no_bytes_and_past_it_is_out_of_range,
    a_range_of_another_users_file_is_not_found,
    a_range_across_the_parts_of_a_multipart_file_is_byte_exact,
    a_download_cut_anywhere_resumes_into_the_whole_file,
);

const MIB: usize = 1024 * 1024;

/// Downloads `key` from `offset`, `length` bytes at most.
async fn ranged(
    user: &User,
    key: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> Result<(FileInfo, Vec<u8>), Status> {
    let request = DownloadRequest {
        key: key.into(),
        offset,
        length,
        ..Default::default()
    };
    download_with(&user.client(), user.req(request)).await
}

/// Uploads `content` as `filename` and returns its key.
async fn stored(user: &User, filename: &str, content: &[u8]) -> String {
    user.upload_bytes(filename, content)
        .await
        .expect("the upload succeeds")
        .key
}

fn assert_describes_whole_file(info: &FileInfo, key: &str, content: &[u8], what: &str) {
    assert_eq!(info.key, key, "{what}");
    assert_eq!(info.size, content.len() as u64, "{what}: the whole size");
    assert_eq!(
        info.sha256,
        sha256_hex(content),
        "{what}: the whole SHA-256"
    );
}

/// Ranges in the middle, from an offset to the end, and with a length past the end
/// (cut at the end) each give exactly their bytes; the first message describes the
/// whole file every time.
async fn a_range_is_exactly_its_bytes_and_the_info_describes_the_whole_file(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("ranges").await;
    let content = pseudo_random(1_000_000, 1);
    let key = stored(&user, "ranges.bin", &content).await;
    let size = content.len() as u64;

    let len = content.len();
    // What is asked for, and which bytes of the file come back.
    let cases = [
        ("the middle", Some(1000), Some(5000), 1000..6000),
        ("an offset only", Some(123_457), None, 123_457..len),
        ("a length only", None, Some(10), 0..10),
        (
            "a length past the end",
            Some(size - 1000),
            Some(10_000),
            len - 1000..len,
        ),
        ("the last byte", Some(size - 1), Some(1), len - 1..len),
        ("everything, asked for", Some(0), Some(u64::MAX), 0..len),
        ("no range", None, None, 0..len),
    ];
    for (what, offset, length, expected) in cases {
        let (info, bytes) = ranged(&user, &key, offset, length)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status:?}"));
        assert_describes_whole_file(&info, &key, &content, what);
        assert_eq!(info.filename, "ranges.bin", "{what}");
        assert_eq!(bytes.len(), expected.len(), "{what}: how many bytes");
        assert!(bytes == content[expected], "{what}: the bytes differ");
    }
}

/// At the very end of a file, and with a length of 0 anywhere, there is the file's
/// description and no bytes; an offset past the end is OUT_OF_RANGE, and the message
/// names the file's size so the client can tell where to ask.
async fn the_end_of_a_file_gives_no_bytes_and_past_it_is_out_of_range(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("ends").await;
    let content = pseudo_random(1_000_000, 2);
    let key = stored(&user, "ends.bin", &content).await;
    let size = content.len() as u64;

    for (what, offset, length) in [
        ("offset == size", Some(size), None),
        ("offset == size with a length", Some(size), Some(5)),
        ("length 0 at the start", None, Some(0)),
        ("length 0 in the middle", Some(10), Some(0)),
    ] {
        let (info, bytes) = ranged(&user, &key, offset, length)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status:?}"));
        assert_describes_whole_file(&info, &key, &content, what);
        assert!(bytes.is_empty(), "{what}: {} bytes", bytes.len());
    }

    for offset in [size + 1, size + 10 * MIB as u64, u64::MAX] {
        let status = ranged(&user, &key, Some(offset), None)
            .await
            .expect_err("past the end");
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "offset {offset}: {status:?}"
        );
        assert!(
            status.message().contains(&size.to_string()),
            "offset {offset}: the message names the size: {status:?}"
        );
    }
    // The file is untouched by the refusals.
    let (_, whole) = ranged(&user, &key, None, None).await.expect("a download");
    assert!(whole == content);
}

/// Another user's key is NOT_FOUND whatever the range, even one past its end: a range
/// must not tell a stranger that the file exists, or how large it is.
async fn a_range_of_another_users_file_is_not_found(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let owner = stack.user("owner").await;
    let stranger = stack.user("stranger").await;
    let content = pseudo_random(200_000, 3);
    let key = stored(&owner, "private.bin", &content).await;
    let size = content.len() as u64;

    for (offset, length) in [
        (Some(10), Some(10)),
        (Some(0), None),
        (Some(size), None),
        (Some(size + 1), None),
        (None, Some(0)),
    ] {
        let status = ranged(&stranger, &key, offset, length)
            .await
            .expect_err("another user's file");
        assert_eq!(
            status.code(),
            Code::NotFound,
            "{offset:?}/{length:?}: {status:?}"
        );
        assert!(
            !status.message().contains(&size.to_string()),
            "the size leaks: {status:?}"
        );
    }
    let (_, bytes) = ranged(&owner, &key, Some(10), Some(10))
        .await
        .expect("the owner's range");
    assert!(bytes == content[10..20]);
}

/// A 12 MiB file is stored in three parts on S3 (5 MiB each in the tests, the last
/// smaller); ranges that start, end or cross at the part boundaries are byte-exact.
async fn a_range_across_the_parts_of_a_multipart_file_is_byte_exact(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("parts").await;
    let part = stack.config.upload_part_size;
    assert_eq!(part, 5 * MIB as u64, "the suite's part size");
    let content = pseudo_random(12 * MIB + 3, 4);
    let key = stored(&user, "parts.bin", &content).await;
    let size = content.len() as u64;

    let cases = [
        ("across the first boundary", part - 1000, Some(2000)),
        ("across both boundaries", part - 1, Some(part + 2)),
        ("exactly the second part", part, Some(part)),
        ("the first byte of the third part", 2 * part, Some(1)),
        ("the last byte of the first part", part - 1, Some(1)),
        (
            "from inside the second part to the end",
            part + 12_345,
            None,
        ),
        ("the tail", size - 3, None),
    ];
    for (what, offset, length) in cases {
        let (info, bytes) = ranged(&user, &key, Some(offset), length)
            .await
            .unwrap_or_else(|status| panic!("{what}: {status:?}"));
        assert_describes_whole_file(&info, &key, &content, what);
        let start = offset as usize;
        let end = length.map_or(content.len(), |length| start + length as usize);
        assert_eq!(bytes.len(), end - start, "{what}: how many bytes");
        assert!(bytes == content[start..end], "{what}: the bytes differ");
    }
}

/// A download continued where it stopped is the whole file: the first bytes asked for
/// with a length, then the rest from that offset; a stream dropped after whatever
/// arrived, then continued from there; and a file fetched in pieces. Each time the
/// concatenation equals the original and hashes to the SHA-256 of the first message.
async fn a_download_cut_anywhere_resumes_into_the_whole_file(backend: Backend) {
    let stack = Stack::start(backend, |_| {}).await;
    let user = stack.user("resume").await;
    let content = pseudo_random(6 * MIB + 17, 5);
    let key = stored(&user, "resume.bin", &content).await;

    // The first N bytes, then the rest.
    let first_n = 1_234_567;
    let (info, mut joined) = ranged(&user, &key, None, Some(first_n))
        .await
        .expect("the first bytes");
    assert_eq!(joined.len() as u64, first_n);
    let (again, rest) = ranged(&user, &key, Some(first_n), None)
        .await
        .expect("the rest");
    assert_describes_whole_file(&again, &key, &content, "the rest");
    joined.extend_from_slice(&rest);
    assert!(joined == content, "the two ranges make the file");
    assert_eq!(sha256_hex(&joined), info.sha256);

    // A stream dropped mid-way, continued from what arrived.
    let (info, received) = cut_after(&user, &key, MIB).await;
    assert!(
        (MIB..content.len()).contains(&received.len()),
        "the stream was cut mid-file: {} bytes",
        received.len()
    );
    let (_, rest) = ranged(&user, &key, Some(received.len() as u64), None)
        .await
        .expect("the rest after a cut");
    let joined = [received, rest].concat();
    assert!(joined == content, "the cut download resumes into the file");
    assert_eq!(sha256_hex(&joined), info.sha256);

    // In pieces of an odd size, until the size the first message gave.
    let mut pieces = Vec::new();
    loop {
        let offset = pieces.len() as u64;
        let (info, piece) = ranged(&user, &key, Some(offset), Some(999_999))
            .await
            .expect("a piece");
        pieces.extend_from_slice(&piece);
        if pieces.len() as u64 >= info.size {
            assert_eq!(sha256_hex(&pieces), info.sha256);
            break;
        }
        assert_eq!(piece.len(), 999_999, "a piece short of the end is whole");
    }
    assert!(pieces == content);
}

/// Starts a whole download and drops it once at least `at_least` bytes arrived; returns
/// the file's description and the bytes received.
async fn cut_after(user: &User, key: &str, at_least: usize) -> (FileInfo, Vec<u8>) {
    let request = DownloadRequest {
        key: key.into(),
        ..Default::default()
    };
    let mut stream = user
        .client()
        .download(user.req(request))
        .await
        .expect("a download")
        .into_inner();
    let mut info = None;
    let mut received = Vec::new();
    while received.len() < at_least {
        let message = stream
            .next()
            .await
            .expect("more messages")
            .expect("a message");
        match message.payload {
            Some(download_response::Payload::Info(first)) => info = Some(first),
            Some(download_response::Payload::Chunk(chunk)) => received.extend_from_slice(&chunk),
            None => {}
        }
    }
    drop(stream);
    (info.expect("the stream starts with the info"), received)
}
