//! The shape of an Upload stream, as a state machine apart from any I/O: metadata first,
//! then chunks, then `end` (or, when the size was declared, just the end of the stream).
//!
//! The explicit end exists because hyper reports a client's RST_STREAM(CANCEL) as a
//! clean end of the request body (hyperium/hyper#3681): "the stream ended" can mean "the
//! client gave up", and storing what arrived would keep a truncated file. With an `end`
//! message, or a declared size the sink checks, a cut-off stream is never complete.

use bytes::Bytes;
use strongbox_proto::storage::v1::{FileMetadata, UploadRequest, upload_request::Payload};

use crate::error::StorageError;

/// What to do with the next message of a stream that has started.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Append these bytes.
    Chunk(Bytes),
    /// Nothing to store (the `end` marker); keep reading.
    Continue,
    /// The file is complete.
    Done,
}

#[derive(Debug)]
pub struct UploadProtocol {
    size_declared: bool,
    ended: bool,
}

impl UploadProtocol {
    /// Reads the first message, which must carry the metadata. `None` is the end of the
    /// stream.
    pub fn start(first: Option<UploadRequest>) -> Result<(FileMetadata, Self), StorageError> {
        match first.and_then(|message| message.payload) {
            Some(Payload::Metadata(metadata)) => {
                let protocol = Self {
                    size_declared: metadata.size.is_some(),
                    ended: false,
                };
                Ok((metadata, protocol))
            }
            Some(_) => Err(StorageError::InvalidArgument(
                "the first message of an upload must carry metadata (filename, content_type), then chunks".into(),
            )),
            None => Err(StorageError::InvalidArgument(
                "the upload stream was empty; send metadata, then chunks".into(),
            )),
        }
    }

    /// Reads every later message; `None` is the end of the stream.
    pub fn next(&mut self, message: Option<UploadRequest>) -> Result<Step, StorageError> {
        let Some(message) = message else {
            return self.close();
        };
        if self.ended {
            return Err(StorageError::InvalidArgument(
                "nothing may follow the `end` message".into(),
            ));
        }
        match message.payload {
            Some(Payload::Chunk(chunk)) => Ok(Step::Chunk(chunk)),
            Some(Payload::End(_)) => {
                self.ended = true;
                Ok(Step::Continue)
            }
            Some(Payload::Metadata(_)) => Err(StorageError::InvalidArgument(
                "metadata was sent twice; send it only in the first message".into(),
            )),
            None => Err(StorageError::InvalidArgument(
                "an upload message must carry metadata, a chunk or end".into(),
            )),
        }
    }

    fn close(&self) -> Result<Step, StorageError> {
        if self.ended || self.size_declared {
            Ok(Step::Done)
        } else {
            Err(StorageError::InvalidArgument(
                "the upload stream stopped without an `end` message or a declared size, so it cannot be told \
                 apart from a cancelled upload; nothing was stored. Send `end` last, or declare `size`"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strongbox_proto::storage::v1::UploadEnd;

    /// A message as a test generates it.
    #[derive(Debug, Clone)]
    enum Sent {
        Metadata { size_declared: bool },
        Chunk(Vec<u8>),
        End,
        Empty,
    }

    impl Sent {
        fn message(&self) -> UploadRequest {
            let payload = match self {
                Self::Metadata { size_declared } => Some(Payload::Metadata(FileMetadata {
                    filename: "a.bin".into(),
                    size: size_declared.then_some(1),
                    ..Default::default()
                })),
                Self::Chunk(bytes) => Some(Payload::Chunk(Bytes::from(bytes.clone()))),
                Self::End => Some(Payload::End(UploadEnd {})),
                Self::Empty => None,
            };
            UploadRequest { payload }
        }
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            any::<bool>().prop_map(|size_declared| Sent::Metadata { size_declared }),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Sent::Chunk),
            Just(Sent::End),
            Just(Sent::Empty),
        ]
    }

    /// Streams that mostly follow the rules, with a mistake here and there: random
    /// sequences alone would almost never be valid.
    fn stream() -> impl Strategy<Value = Vec<Sent>> {
        (
            any::<bool>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..6),
            any::<bool>(),
            proptest::collection::vec((0..8usize, sent()), 0..3),
        )
            .prop_map(|(size_declared, chunks, end, mistakes)| {
                let mut stream = vec![Sent::Metadata { size_declared }];
                stream.extend(chunks.into_iter().map(Sent::Chunk));
                if end {
                    stream.push(Sent::End);
                }
                for (at, mistake) in mistakes {
                    stream.insert(at.min(stream.len()), mistake);
                }
                stream
            })
    }

    /// The rules, stated over the whole stream rather than as a state machine: the
    /// first message is metadata and no other is; every message has a payload; `end`
    /// comes at most once and last; and there is an `end` or a declared size.
    fn is_valid(stream: &[Sent]) -> bool {
        let Some(Sent::Metadata { size_declared }) = stream.first() else {
            return false;
        };
        let rest = &stream[1..];
        let ends = rest.iter().filter(|sent| matches!(sent, Sent::End)).count();
        rest.iter()
            .all(|sent| matches!(sent, Sent::Chunk(_) | Sent::End))
            && ends <= 1
            && (ends == 0 || matches!(rest.last(), Some(Sent::End)))
            && (ends == 1 || *size_declared)
    }

    /// Runs a stream through the protocol: the chunks it handed out and whether it
    /// reached `Done` (rather than an error).
    fn run(stream: &[Sent]) -> (Vec<Vec<u8>>, bool) {
        let mut messages = stream.iter().map(Sent::message);
        let Ok((_, mut protocol)) = UploadProtocol::start(messages.next()) else {
            return (Vec::new(), false);
        };
        let mut chunks = Vec::new();
        loop {
            match protocol.next(messages.next()) {
                Ok(Step::Chunk(chunk)) => chunks.push(chunk.to_vec()),
                Ok(Step::Continue) => {}
                Ok(Step::Done) => return (chunks, true),
                Err(_) => return (chunks, false),
            }
        }
    }

    proptest! {
        #[test]
        fn a_stream_completes_exactly_when_it_follows_the_rules(stream in stream()) {
            let (chunks, completed) = run(&stream);
            prop_assert_eq!(completed, is_valid(&stream), "stream: {:?}", stream);
            if completed {
                let sent: Vec<Vec<u8>> = stream
                    .iter()
                    .filter_map(|sent| match sent {
                        Sent::Chunk(bytes) => Some(bytes.clone()),
                        _ => None,
                    })
                    .collect();
                prop_assert_eq!(chunks, sent);
            }
        }

        #[test]
        fn arbitrary_streams_never_complete_against_the_rules(
            stream in proptest::collection::vec(sent(), 0..10)
        ) {
            let (_, completed) = run(&stream);
            prop_assert_eq!(completed, is_valid(&stream), "stream: {:?}", stream);
        }
    }

    #[test]
    fn a_cut_off_stream_without_end_or_size_is_refused() {
        let stream = [
            Sent::Metadata {
                size_declared: false,
            },
            Sent::Chunk(vec![1]),
        ];
        assert_eq!(run(&stream), (vec![vec![1]], false));
        let ended = [
            Sent::Metadata {
                size_declared: false,
            },
            Sent::Chunk(vec![1]),
            Sent::End,
        ];
        assert_eq!(run(&ended), (vec![vec![1]], true));
    }
}
