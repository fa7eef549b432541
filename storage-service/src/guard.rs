//! What every upload call passes before tonic reads its messages: a request body that
//! goes idle or trickles fails, and a one-message upload (a session chunk, a PutFile)
//! waits for its memory.
//!
//! Both must happen ahead of tonic. A unary call's message is decoded in full before
//! the handler runs, so a handler could only account for memory already taken; here a
//! one-message call waits with its bytes still in HTTP/2 buffers (bounded by flow control,
//! see `memory.rs`) until there is room, and holds the room until its response is
//! ready — the chunk is stored by then. And an upload holds memory others wait for, so
//! a client that stops sending mid-body must not keep it: after `idle` with no data the
//! body fails with DEADLINE_EXCEEDED, the call ends, and what it held is released
//! (a stream's parts are aborted, a chunk is not stored).
//!
//! An idle timer alone is restarted by every frame, so a client sending a byte now and
//! then would hold its memory for as long as it liked. The body therefore also keeps the
//! client's average pace: over each window of `UPLOAD_RATE_WINDOW_SECONDS` spent waiting
//! for the client, it must have sent `MIN_UPLOAD_BYTES_PER_SECOND` on average, or the
//! body fails with DEADLINE_EXCEEDED just like an idle one. Only time spent waiting for
//! data counts, as for the idle timer: while the upload waits for memory or storage, the
//! client's bytes pile up in flow-control windows and arrive at once afterwards.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::error::StorageError;
use crate::memory::UploadMemory;
use strongbox_common::jwt::Verifier;

/// The upload calls of the service it wraps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UploadCall {
    /// Upload: a stream whose parts reserve their own memory (`parts.rs`).
    Stream,
    /// UploadChunk: one message of at most a chunk.
    Chunk,
    /// PutFile: one message of at most a chunk.
    Whole,
}

/// The slowest pace an upload body may arrive at: `bytes_per_second` on average over
/// each `window` of waiting for the client; 0 bytes per second turns the check off.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_second: u64,
    pub window: Duration,
}

#[derive(Clone)]
pub struct UploadGuard<S> {
    inner: S,
    memory: UploadMemory,
    verifier: Verifier,
    chunk_bytes: usize,
    idle: Duration,
    min_rate: MinRate,
}

impl<S> UploadGuard<S> {
    pub fn new(
        inner: S,
        memory: UploadMemory,
        verifier: Verifier,
        chunk_bytes: usize,
        idle: Duration,
        min_rate: MinRate,
    ) -> Self {
        Self {
            inner,
            memory,
            verifier,
            chunk_bytes,
            idle,
            min_rate,
        }
    }
}

impl<S: NamedService> NamedService for UploadGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> UploadGuard<S> {
    fn upload_call(path: &str) -> Option<UploadCall> {
        match path.strip_prefix('/')?.strip_prefix(S::NAME)? {
            "/Upload" => Some(UploadCall::Stream),
            "/UploadChunk" => Some(UploadCall::Chunk),
            "/PutFile" => Some(UploadCall::Whole),
            _ => None,
        }
    }
}

impl<S> Service<http::Request<Body>> for UploadGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is the one that was not polled ready: keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(call) = Self::upload_call(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let (idle, min_rate) = (self.idle, self.min_rate);
        let request = request.map(|body| {
            Body::new(GuardedBody {
                inner: body,
                idle,
                call,
                deadline: None,
                waiting_since: None,
                pace: Pace::new(min_rate),
            })
        });
        if call == UploadCall::Stream {
            return Box::pin(inner.call(request));
        }
        let (memory, verifier, bytes) =
            (self.memory.clone(), self.verifier.clone(), self.chunk_bytes);
        Box::pin(async move {
            // The memory counts against the caller's share, so they are known first (and
            // a call without a valid token takes no memory at all).
            let caller = match verifier.authenticate_headers(request.headers()).await {
                Ok(caller) => caller,
                Err(status) => return Ok(status.into_http()),
            };
            let _room = match memory.for_user(caller.user_id).reserve(bytes).await {
                Ok(room) => room,
                Err(err) => return Ok(Status::from(err).into_http()),
            };
            let response = inner.call(request).await?;
            Ok(over_limit(response, bytes))
        })
    }
}

/// tonic refuses a message over its decoding limit with OUT_OF_RANGE before any handler
/// runs; to the client that is a limit it passed, said the way the handlers say it.
fn over_limit(response: http::Response<Body>, chunk_bytes: usize) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == tonic::Code::OutOfRange => {
            tracing::info!(message = status.message(), "a message over the size limit");
            Status::from(StorageError::MessageTooLarge {
                limit: chunk_bytes as u64,
            })
            .into_http()
        }
        _ => response,
    }
}

/// A request body that fails once its client has sent nothing for `idle` while it is
/// being read, or has sent too slowly (see [`Pace`]). The clocks run only while the
/// reader waits for data: an upload waiting for memory or for S3 reads nothing, and
/// that is not its client's fault.
struct GuardedBody {
    inner: Body,
    idle: Duration,
    call: UploadCall,
    deadline: Option<Pin<Box<Sleep>>>,
    /// When the reader began waiting for the frame it is waiting for.
    waiting_since: Option<Instant>,
    pace: Pace,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            let waited = this
                .waiting_since
                .take()
                .map_or(Duration::ZERO, |since| since.elapsed());
            let data = match &frame {
                Some(Ok(frame)) => frame.data_ref().map(Bytes::len),
                _ => None,
            };
            if let Some(bytes) = data
                && let Err(slow) = this.pace.arrived(waited, bytes as u64)
            {
                return Poll::Ready(Some(Err(too_slow(this.call, slow))));
            }
            return Poll::Ready(frame);
        }
        this.waiting_since.get_or_insert_with(Instant::now);
        let idle = this.idle;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(deadline.as_mut().poll(cx));
        let seconds = idle.as_secs();
        Poll::Ready(Some(Err(Status::deadline_exceeded(match this.call {
            UploadCall::Stream => format!(
                "no data arrived for {seconds} s, so the upload was cancelled and nothing was \
                 stored; send the file again (resumable sessions survive pauses)"
            ),
            UploadCall::Chunk => format!(
                "no data arrived for {seconds} s, so this chunk was not stored; send it again \
                 from the session's offset (GetUploadStatus)"
            ),
            UploadCall::Whole => format!(
                "no data arrived for {seconds} s, so the file was not stored; send it again"
            ),
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a body cut for its pace tells its client.
fn too_slow(call: UploadCall, slow: TooSlow) -> Status {
    let TooSlow {
        bytes_per_second,
        seconds,
        floor,
    } = slow;
    let pace = format!(
        "the upload arrived at {bytes_per_second} bytes/s over {seconds} s, slower than the \
         {floor} bytes/s this server requires (MIN_UPLOAD_BYTES_PER_SECOND)"
    );
    Status::deadline_exceeded(match call {
        UploadCall::Stream => format!(
            "{pace}, so it was cancelled and nothing was stored; send the file again on a \
             faster connection, or in a resumable session (CreateUpload)"
        ),
        UploadCall::Chunk => format!(
            "{pace}, so this chunk was not stored; send it again from the session's offset \
             (GetUploadStatus)"
        ),
        UploadCall::Whole => {
            format!("{pace}, so the file was not stored; send it again on a faster connection")
        }
    })
}

/// A client's pace over windows of time spent waiting for it. Each window must bring
/// the floor's bytes per second on average; a window is judged when a frame arrives
/// after it is full (a client sending nothing at all is the idle timer's), then a new
/// one starts, so an early burst does not buy a long trickle afterwards.
#[derive(Debug)]
struct Pace {
    floor: MinRate,
    waited: Duration,
    bytes: u64,
}

/// A window in which the client sent too little.
#[derive(Debug, PartialEq, Eq)]
struct TooSlow {
    bytes_per_second: u64,
    seconds: u64,
    floor: u64,
}

impl Pace {
    fn new(floor: MinRate) -> Self {
        Self {
            floor,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Counts a frame of `bytes` that arrived after `waited` of waiting for it.
    fn arrived(&mut self, waited: Duration, bytes: u64) -> Result<(), TooSlow> {
        if self.floor.bytes_per_second == 0 {
            return Ok(());
        }
        self.waited += waited;
        self.bytes += bytes;
        if self.waited < self.floor.window {
            return Ok(());
        }
        let millis = self.waited.as_millis().max(1);
        let sent = u128::from(self.bytes) * 1000;
        let needed = u128::from(self.floor.bytes_per_second) * millis;
        let window = std::mem::replace(self, Self::new(self.floor));
        if sent >= needed {
            return Ok(());
        }
        Err(TooSlow {
            bytes_per_second: u64::try_from(sent / millis).unwrap_or(u64::MAX),
            seconds: window.waited.as_secs(),
            floor: self.floor.bytes_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn floor(bytes_per_second: u64) -> MinRate {
        MinRate {
            bytes_per_second,
            window: 10 * SECOND,
        }
    }

    #[test]
    fn a_trickle_is_cut_once_a_window_of_waiting_is_full() {
        let mut pace = Pace::new(floor(1024));
        // A byte every 200 ms restarts any idle timer; 49 of them fill 9.8 s.
        for _ in 0..49 {
            assert_eq!(pace.arrived(SECOND / 5, 1), Ok(()));
        }
        let cut = pace.arrived(SECOND / 5, 1).unwrap_err();
        assert_eq!(
            cut,
            TooSlow {
                bytes_per_second: 5,
                seconds: 10,
                floor: 1024
            }
        );
    }

    #[test]
    fn a_client_at_the_floor_passes_window_after_window() {
        let mut pace = Pace::new(floor(1024));
        for _ in 0..100 {
            assert_eq!(pace.arrived(SECOND, 1024), Ok(()));
        }
    }

    #[test]
    fn an_early_burst_does_not_pay_for_a_later_trickle() {
        let mut pace = Pace::new(floor(1024));
        assert_eq!(pace.arrived(10 * SECOND, 1 << 20), Ok(()));
        for _ in 0..9 {
            assert_eq!(pace.arrived(SECOND, 1), Ok(()));
        }
        assert!(pace.arrived(SECOND, 1).is_err());
    }

    #[test]
    fn bytes_that_arrive_without_waiting_count_and_time_not_spent_waiting_does_not() {
        // The server was busy (memory, S3): the client's bytes were buffered and arrive
        // at once, with no waiting, and only the time it waited is judged.
        let mut pace = Pace::new(floor(1024));
        for _ in 0..20 {
            assert_eq!(pace.arrived(Duration::ZERO, 1024), Ok(()));
        }
        assert_eq!(pace.arrived(10 * SECOND, 0), Ok(()), "20 KiB in 10 s");
    }

    #[test]
    fn a_zero_floor_turns_the_check_off() {
        let mut pace = Pace::new(floor(0));
        for _ in 0..100 {
            assert_eq!(pace.arrived(SECOND, 0), Ok(()));
        }
    }
}
