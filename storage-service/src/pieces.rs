//! An object's bytes as a download sends them.
//!
//! - `object_store` yields an object as it reads it: 8 KiB at a time from a local file
//!   (each read a trip to a blocking thread), a network read's worth from S3. [`of`] reads
//!   a local file in pieces of a whole message instead. Sent as they come, S3's pieces would
//!   be a gRPC message and an HTTP/2 frame at every hop to the client. [`coalesce`] joins
//!   the pieces that are ready at once into messages of up to a limit, never holding more
//!   than one message. A small message waits a moment for more: when the S3 server is slow
//!   to read (on a busy machine), each piece alone would make every hop pay its
//!   per-message costs many times per MiB, which slows the machine further.
//! - While a message waits, the pieces are not asked for. The S3 response is read by
//!   hyper one buffer per ask, as soon as asked; a download that asked again after every
//!   piece got what one write of the server put on the socket (8 KiB from s3s-fs: 117
//!   pieces and as many task wake-ups per MiB, most of storage-service's CPU per MiB on
//!   a lone download). Left unasked for the wait, the bytes gather in the socket and the
//!   next read takes them at once (a 64 MiB download: 7,500 pieces before, 390 after).
//! - A download lasts as long as its client takes to read it, so no deadline may cover
//!   the whole S3 request (nor reqwest's read timeout, whose clock also runs while
//!   nobody asks for bytes). [`stall_deadline`] bounds only the waits for the server:
//!   its clock runs while the stream is asked for bytes it does not have.

use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use futures::stream::BoxStream;
use object_store::{GetResult, GetResultPayload};
use tokio::time::Sleep;

/// The object's bytes: from a local file, read on a blocking thread `piece` bytes at a
/// time (one trip per message where `object_store` makes one per 8 KiB: a local
/// download cost 3.2–3.8 ms of CPU per MiB that way, 0.7–1.0 this way); from S3, as the
/// response body arrives.
pub fn of(
    object: GetResult,
    piece: usize,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    match object.payload {
        GetResultPayload::File(file, path) => {
            let range = object.range;
            let read = move |(mut file, next): (std::fs::File, u64)| {
                let path = path.clone();
                async move {
                    if next == range.end {
                        return Ok(None);
                    }
                    let length = (range.end - next).min(piece as u64);
                    tokio::task::spawn_blocking(move || {
                        let mut buffer = Vec::with_capacity(length as usize);
                        if next == range.start {
                            file.seek(SeekFrom::Start(next))?;
                        }
                        (&mut file).take(length).read_to_end(&mut buffer)?;
                        if buffer.is_empty() {
                            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                        }
                        let end = next + buffer.len() as u64;
                        Ok(Some((Bytes::from(buffer), (file, end))))
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .flatten()
                    .map_err(|err| object_store::Error::Generic {
                        store: "local directory",
                        source: format!("cannot read {}: {err}", path.display()).into(),
                    })
                }
            };
            Box::pin(futures::stream::try_unfold((file, range.start), read))
        }
        GetResultPayload::Stream(stream) => stream,
    }
}

/// Fails `pieces` with a timeout once the server has been asked for bytes and sent none
/// for `limit`; time the consumer spends not asking does not count.
pub fn stall_deadline<S>(pieces: S, limit: Duration) -> StallDeadline<S>
where
    S: Stream<Item = Result<Bytes, object_store::Error>> + Unpin,
{
    StallDeadline {
        pieces,
        limit,
        waiting: None,
    }
}

pub struct StallDeadline<S> {
    pieces: S,
    limit: Duration,
    /// Running while the last poll found nothing ready.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> Stream for StallDeadline<S>
where
    S: Stream<Item = Result<Bytes, object_store::Error>> + Unpin,
{
    type Item = Result<Bytes, object_store::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.pieces).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = None;
                Poll::Ready(item)
            }
            Poll::Pending => {
                let limit = this.limit;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(object_store::Error::Generic {
                        store: "object storage",
                        source: format!("sent nothing for {} s", limit.as_secs()).into(),
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// How a download's pieces become messages: at most `limit` bytes each; a message
/// smaller than `at_least` waits `linger` (the pieces not asked for meanwhile), takes
/// what is ready then, and goes.
#[derive(Debug, Clone, Copy)]
pub struct Gathering {
    pub limit: usize,
    pub at_least: usize,
    pub linger: Duration,
}

/// Joins pieces of `pieces` into messages as `gathering` says (a piece larger than the
/// limit goes alone). An error is passed on after the bytes that came before it.
pub fn coalesce<S, E>(pieces: S, gathering: Gathering) -> Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    Coalesce {
        pieces: Some(pieces),
        gathering,
        message: Message::default(),
        next: None,
        lingering: Linger::No,
    }
}

pub struct Coalesce<S, E> {
    /// `None` once the stream has ended.
    pieces: Option<S>,
    gathering: Gathering,
    /// The message being gathered: at most one, of at most the limit.
    message: Message,
    /// What did not fit into the last message, or an error held back behind it.
    next: Option<Result<Bytes, E>>,
    lingering: Linger,
}

/// Where the message in the making stands with its wait.
enum Linger {
    No,
    /// A small message waits for more pieces; they are not asked for until it ends.
    Waiting(Pin<Box<Sleep>>),
    /// It has waited: it goes with what is ready.
    Over,
}

/// A message's pieces, joined only when it goes: a message of one piece is that piece,
/// and one of several is copied once into a buffer of its size (joining as they came
/// would copy each byte again whenever the buffer grew).
#[derive(Default)]
struct Message {
    pieces: Vec<Bytes>,
    length: usize,
}

impl Message {
    fn len(&self) -> usize {
        self.length
    }

    fn is_empty(&self) -> bool {
        self.length == 0
    }

    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.length += piece.len();
            self.pieces.push(piece);
        }
    }

    fn take(&mut self) -> Bytes {
        let length = std::mem::take(&mut self.length);
        if self.pieces.len() == 1 {
            return self.pieces.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(length);
        for piece in self.pieces.drain(..) {
            joined.extend_from_slice(&piece);
        }
        joined.freeze()
    }
}

impl<S, E> Coalesce<S, E> {
    fn send(&mut self) -> Poll<Option<Result<Bytes, E>>> {
        self.lingering = Linger::No;
        Poll::Ready(Some(Ok(self.message.take())))
    }
}

impl<S, E> Stream for Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Gathering {
            limit,
            at_least,
            linger,
        } = this.gathering;
        if let Linger::Waiting(sleep) = &mut this.lingering {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.lingering = Linger::Over;
        }
        match this.next.take() {
            Some(Ok(piece)) if piece.len() >= limit => return Poll::Ready(Some(Ok(piece))),
            Some(Ok(piece)) => this.message.push(piece),
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            None => {}
        }
        loop {
            let Some(pieces) = this.pieces.as_mut() else {
                return if this.message.is_empty() {
                    Poll::Ready(None)
                } else {
                    this.send()
                };
            };
            match Pin::new(pieces).poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    if this.message.is_empty() && piece.len() >= limit {
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    if this.message.len() + piece.len() > limit {
                        this.next = Some(Ok(piece));
                        return this.send();
                    }
                    this.message.push(piece);
                }
                Poll::Ready(Some(Err(err))) if this.message.is_empty() => {
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.next = Some(Err(err));
                    return this.send();
                }
                Poll::Ready(None) => this.pieces = None,
                Poll::Pending if this.message.is_empty() => return Poll::Pending,
                Poll::Pending
                    if this.message.len() >= at_least || matches!(this.lingering, Linger::Over) =>
                {
                    return this.send();
                }
                Poll::Pending => {
                    let mut sleep = Box::pin(tokio::time::sleep(linger));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return this.send();
                    }
                    this.lingering = Linger::Waiting(sleep);
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn only_waiting_for_the_server_counts_against_the_deadline() {
        let (sender, receiver) =
            futures::channel::mpsc::unbounded::<Result<Bytes, object_store::Error>>();
        let mut pieces = stall_deadline(receiver, Duration::from_millis(200));
        sender.unbounded_send(Ok(Bytes::from_static(b"a"))).unwrap();
        assert!(pieces.next().await.unwrap().is_ok());
        // A reader that asks for nothing for five deadlines: the server is not to blame.
        tokio::time::sleep(Duration::from_secs(1)).await;
        sender.unbounded_send(Ok(Bytes::from_static(b"b"))).unwrap();
        assert!(pieces.next().await.unwrap().is_ok());
        // Asked, and nothing comes for longer than the deadline.
        let stalled = pieces.next().await.unwrap().unwrap_err();
        assert!(
            stalled.to_string().contains("sent nothing for 0 s"),
            "{stalled}"
        );
    }

    fn pieces(lengths: &[usize]) -> Vec<Result<Bytes, &'static str>> {
        lengths
            .iter()
            .enumerate()
            .map(|(index, &length)| Ok(Bytes::from(vec![index as u8; length])))
            .collect()
    }

    async fn lengths(stream: impl Stream<Item = Result<Bytes, &'static str>>) -> Vec<usize> {
        stream.map(|piece| piece.unwrap().len()).collect().await
    }

    /// Up to `limit`, sending anything at all without waiting.
    fn eager(limit: usize) -> Gathering {
        Gathering {
            limit,
            at_least: 0,
            linger: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn ready_pieces_are_joined_up_to_the_limit_in_order() {
        let joined = coalesce(
            futures::stream::iter(pieces(&[3, 3, 3, 3, 10, 1])),
            eager(7),
        );
        let all: Vec<u8> = joined.map(|piece| piece.unwrap().to_vec()).concat().await;
        let expected: Vec<u8> = pieces(&[3, 3, 3, 3, 10, 1])
            .into_iter()
            .flat_map(|piece| piece.unwrap().to_vec())
            .collect();
        assert_eq!(all, expected, "every byte, in order");
        let joined = coalesce(
            futures::stream::iter(pieces(&[3, 3, 3, 3, 10, 1])),
            eager(7),
        );
        assert_eq!(lengths(joined).await, [6, 6, 10, 1]);
    }

    #[tokio::test]
    async fn a_message_of_one_piece_is_that_piece_not_a_copy() {
        let piece = Bytes::from(vec![7u8; 5]);
        let items: Vec<Result<Bytes, &str>> = vec![Ok(piece.clone())];
        let mut joined = coalesce(futures::stream::iter(items), eager(7));
        let message = joined.next().await.unwrap().unwrap();
        assert_eq!(message.as_ptr(), piece.as_ptr());
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_message_waits_a_moment_for_more_and_a_large_one_does_not() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, &str>>();
        let gathering = Gathering {
            limit: 1 << 20,
            at_least: 4,
            linger: Duration::from_millis(2),
        };
        let mut joined = coalesce(receiver, gathering);
        sender
            .unbounded_send(Ok(Bytes::from_static(b"ab")))
            .unwrap();
        let began = tokio::time::Instant::now();
        // Two bytes, the stream open: they wait for more, but not past the linger.
        assert_eq!(joined.next().await.unwrap().unwrap(), "ab");
        assert_eq!(began.elapsed(), Duration::from_millis(2));
        // Enough for a message: it goes at once.
        sender
            .unbounded_send(Ok(Bytes::from_static(b"cdef")))
            .unwrap();
        let began = tokio::time::Instant::now();
        assert_eq!(joined.next().await.unwrap().unwrap(), "cdef");
        assert_eq!(began.elapsed(), Duration::ZERO);
        // A small piece followed by more within the linger: one message.
        sender.unbounded_send(Ok(Bytes::from_static(b"g"))).unwrap();
        let more = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            more.unbounded_send(Ok(Bytes::from_static(b"hij"))).unwrap();
        });
        assert_eq!(joined.next().await.unwrap().unwrap(), "ghij");
        // The end of the stream sends what is left without waiting.
        sender.unbounded_send(Ok(Bytes::from_static(b"k"))).unwrap();
        drop(sender);
        assert_eq!(joined.next().await.unwrap().unwrap(), "k");
        assert!(joined.next().await.is_none());
    }

    /// Counts how often the pieces are asked for.
    struct Asked<S> {
        pieces: S,
        times: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<S: Stream + Unpin> Stream for Asked<S> {
        type Item = S::Item;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
            self.times
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.pieces).poll_next(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pieces_are_not_asked_for_while_a_message_waits() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, &str>>();
        let times = std::sync::Arc::default();
        let asked = Asked {
            pieces: receiver,
            times: std::sync::Arc::clone(&times),
        };
        let gathering = Gathering {
            limit: 1 << 20,
            at_least: 100,
            linger: Duration::from_millis(10),
        };
        let mut joined = coalesce(asked, gathering);
        sender.unbounded_send(Ok(Bytes::from_static(b"a"))).unwrap();
        let more = sender.clone();
        tokio::spawn(async move {
            for piece in [&b"b"[..], b"c", b"d"] {
                tokio::time::sleep(Duration::from_millis(2)).await;
                more.unbounded_send(Ok(Bytes::from_static(piece))).unwrap();
            }
        });
        let began = tokio::time::Instant::now();
        assert_eq!(joined.next().await.unwrap().unwrap(), "abcd");
        assert_eq!(began.elapsed(), Duration::from_millis(10));
        // Asked for "a", found nothing more, then once the wait was over: "b", "c", "d"
        // and nothing more. Three pieces arriving did not make it ask in between.
        assert_eq!(times.load(std::sync::atomic::Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_local_file_is_read_in_whole_pieces_from_its_range() {
        use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, path::Path};

        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|n| (n % 251) as u8).collect();
        let path = Path::from("a/file");
        store.put(&path, content.clone().into()).await.unwrap();
        let options = GetOptions {
            range: Some(GetRange::Bounded(1_000..8_500)),
            ..Default::default()
        };
        let object = store.get_opts(&path, options).await.unwrap();
        let pieces: Vec<Bytes> = of(object, 3_000).map(Result::unwrap).collect().await;
        let lengths: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [3_000, 3_000, 1_500]);
        assert_eq!(pieces.concat(), content[1_000..8_500]);
    }

    #[tokio::test]
    async fn an_error_comes_after_the_bytes_before_it() {
        let mut items = pieces(&[2, 2]);
        items.push(Err("broken"));
        items.extend(pieces(&[5]));
        let mut joined = coalesce(futures::stream::iter(items), eager(100));
        assert_eq!(joined.next().await.unwrap().unwrap().len(), 4);
        assert_eq!(joined.next().await.unwrap().unwrap_err(), "broken");
    }
}
