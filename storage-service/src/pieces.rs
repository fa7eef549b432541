//! An object's bytes as a download sends them.
//!
//! - `object_store` yields an object as it reads it: 8 KiB at a time from a local file, a
//!   network read's worth (often tens of KiB) from S3. Sent as they come, each piece would
//!   be a gRPC message and an HTTP/2 frame at every hop to the client. [`coalesce`] joins
//!   the pieces that are ready at once into messages of up to a limit — never waiting for
//!   more, so nothing is delayed, and never holding more than one message.
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

/// Joins pieces of `pieces` that are ready together into messages of at most `limit`
/// bytes (a piece larger than `limit` goes alone). An error is passed on after the
/// bytes that came before it.
pub fn coalesce<S, E>(pieces: S, limit: usize) -> Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    Coalesce {
        pieces: Some(pieces),
        limit,
        next: None,
    }
}

pub struct Coalesce<S, E> {
    /// `None` once the stream has ended.
    pieces: Option<S>,
    limit: usize,
    /// What did not fit into the last message, or an error held back behind it.
    next: Option<Result<Bytes, E>>,
}

impl<S, E> Stream for Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut message = match this.next.take() {
            Some(Ok(piece)) => BytesMut::from(piece),
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            None => BytesMut::new(),
        };
        loop {
            let Some(pieces) = this.pieces.as_mut() else {
                return Poll::Ready((!message.is_empty()).then(|| Ok(message.freeze())));
            };
            match Pin::new(pieces).poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    if message.is_empty() && piece.len() >= this.limit {
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    if message.len() + piece.len() > this.limit {
                        this.next = Some(Ok(piece));
                        return Poll::Ready(Some(Ok(message.freeze())));
                    }
                    message.extend_from_slice(&piece);
                }
                Poll::Ready(Some(Err(err))) if message.is_empty() => {
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.next = Some(Err(err));
                    return Poll::Ready(Some(Ok(message.freeze())));
                }
                Poll::Ready(None) => this.pieces = None,
                Poll::Pending if message.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Some(Ok(message.freeze()))),
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

    #[tokio::test]
    async fn ready_pieces_are_joined_up_to_the_limit_in_order() {
        let joined = coalesce(futures::stream::iter(pieces(&[3, 3, 3, 3, 10, 1])), 7);
        let all: Vec<u8> = joined.map(|piece| piece.unwrap().to_vec()).concat().await;
        let expected: Vec<u8> = pieces(&[3, 3, 3, 3, 10, 1])
            .into_iter()
            .flat_map(|piece| piece.unwrap().to_vec())
            .collect();
        assert_eq!(all, expected, "every byte, in order");
        let joined = coalesce(futures::stream::iter(pieces(&[3, 3, 3, 3, 10, 1])), 7);
        assert_eq!(lengths(joined).await, [6, 6, 10, 1]);
    }

    #[tokio::test]
    async fn nothing_waits_for_more_pieces() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, &str>>();
        let mut joined = coalesce(receiver, 1 << 20);
        sender
            .unbounded_send(Ok(Bytes::from_static(b"ab")))
            .unwrap();
        sender.unbounded_send(Ok(Bytes::from_static(b"c"))).unwrap();
        // Two pieces ready, the stream still open: they go now, together.
        assert_eq!(joined.next().await.unwrap().unwrap(), "abc");
        sender.unbounded_send(Ok(Bytes::from_static(b"d"))).unwrap();
        drop(sender);
        assert_eq!(joined.next().await.unwrap().unwrap(), "d");
        assert!(joined.next().await.is_none());
    }

    #[tokio::test]
    async fn an_error_comes_after_the_bytes_before_it() {
        let mut items = pieces(&[2, 2]);
        items.push(Err("broken"));
        items.extend(pieces(&[5]));
        let mut joined = coalesce(futures::stream::iter(items), 100);
        assert_eq!(joined.next().await.unwrap().unwrap().len(), 4);
        assert_eq!(joined.next().await.unwrap().unwrap_err(), "broken");
    }
}
