//! An object's bytes as a download sends them.
//!
//! - `object_store` yields an object as it reads it: 8 KiB at a time from a local file, a
//!   network read's worth (often tens of KiB) from S3. Sent as they come, each piece would
//!   be a gRPC message and an HTTP/2 frame at every hop to the client. [`coalesce`] joins
//!   the pieces that are ready at once into messages of up to a limit, never holding more
//!   than one message. A small message waits a moment for more: when the S3 server is slow
//!   to read (on a busy machine), each piece alone would make every hop pay its
//!   per-message costs many times per MiB, which slows the machine further.
//! - A download lasts as long as its client takes to read it, so no deadline may cover
//!   the whole S3 request (nor reqwest's read timeout, whose clock also runs while
//!   nobody asks for bytes). [`stall_deadline`] bounds only the waits for the server:
//!   its clock runs while the stream is asked for bytes it does not have.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::time::Sleep;

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
/// smaller than `at_least` waits up to `linger` for more pieces before it goes.
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
        message: BytesMut::new(),
        next: None,
        lingering: None,
    }
}

pub struct Coalesce<S, E> {
    /// `None` once the stream has ended.
    pieces: Option<S>,
    gathering: Gathering,
    /// The message being gathered: at most one, of at most the limit.
    message: BytesMut,
    /// What did not fit into the last message, or an error held back behind it.
    next: Option<Result<Bytes, E>>,
    /// Running while a small message waits for more pieces.
    lingering: Option<Pin<Box<Sleep>>>,
}

impl<S, E> Coalesce<S, E> {
    fn send(&mut self) -> Poll<Option<Result<Bytes, E>>> {
        self.lingering = None;
        Poll::Ready(Some(Ok(std::mem::take(&mut self.message).freeze())))
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
        match this.next.take() {
            Some(Ok(piece)) if piece.len() >= limit => return Poll::Ready(Some(Ok(piece))),
            Some(Ok(piece)) => this.message.extend_from_slice(&piece),
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
                    this.message.extend_from_slice(&piece);
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
                Poll::Pending if this.message.len() >= at_least => return this.send(),
                Poll::Pending => {
                    let lingering = this
                        .lingering
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
                    return match lingering.as_mut().poll(cx) {
                        Poll::Ready(()) => this.send(),
                        Poll::Pending => Poll::Pending,
                    };
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
