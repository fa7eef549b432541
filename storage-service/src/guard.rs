//! What every upload call passes before tonic reads its messages: a request body that
//! goes idle fails, and a one-message upload (a session chunk, a PutFile) waits for its
//! memory.
//!
//! Both must happen ahead of tonic. A unary call's message is decoded in full before
//! the handler runs, so a handler could only account for memory already taken; here a
//! one-message call waits with its bytes still in HTTP/2 buffers (bounded by flow control,
//! see `memory.rs`) until there is room, and holds the room until its response is
//! ready — the chunk is stored by then. And an upload holds memory others wait for, so
//! a client that stops sending mid-body must not keep it: after `idle` with no data the
//! body fails with DEADLINE_EXCEEDED, the call ends, and what it held is released
//! (a stream's parts are aborted, a chunk is not stored).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::error::StorageError;
use crate::memory::UploadMemory;

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

#[derive(Clone)]
pub struct UploadGuard<S> {
    inner: S,
    memory: UploadMemory,
    chunk_bytes: usize,
    idle: Duration,
}

impl<S> UploadGuard<S> {
    pub fn new(inner: S, memory: UploadMemory, chunk_bytes: usize, idle: Duration) -> Self {
        Self {
            inner,
            memory,
            chunk_bytes,
            idle,
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
        let idle = self.idle;
        let request = request.map(|body| {
            Body::new(IdleBody {
                inner: body,
                idle,
                call,
                deadline: None,
            })
        });
        if call == UploadCall::Stream {
            return Box::pin(inner.call(request));
        }
        let (memory, bytes) = (self.memory.clone(), self.chunk_bytes);
        Box::pin(async move {
            let _room = match memory.reserve(bytes).await {
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
/// being read. The clock runs only while the reader waits for data: an upload waiting
/// for memory or for S3 reads nothing, and that is not its client's fault.
struct IdleBody {
    inner: Body,
    idle: Duration,
    call: UploadCall,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame);
        }
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
