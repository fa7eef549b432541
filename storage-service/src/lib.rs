//! storage-service: users' files in object storage, uploaded as streams.
//!
//! - [`names`]: safe names, per-user object keys, upload ids, SHA-256 digests — parsed at
//!   the edge;
//! - [`policy`]: content types and size limits;
//! - [`protocol`]: the shape of an Upload stream (metadata, chunks, end), as a state machine;
//! - [`sink`]: the streaming core — multipart upload, hashing, limits, abort on failure;
//! - [`parts`]: a stream cut into multipart parts, to S3 or a local directory;
//! - [`memory`]: the memory all uploads share, with a hard bound;
//! - [`guard`]: idle or trickling upload bodies fail, one-message uploads wait for memory
//!   (ahead of tonic);
//! - [`files`]: uploads become files; list, describe, download, delete;
//! - [`pieces`]: an object's bytes as a download sends them;
//! - [`multipart`]: S3 multipart uploads with their ids on record, so none can leak;
//! - [`sessions`]: resumable uploads for clients that cannot stream, served by any replica;
//! - [`backend`]: S3 or a local directory behind `object_store`, and download URLs;
//! - [`s3_metrics`]: every S3 request counted, timed and its failures named;
//! - [`links`]: the local backend's HMAC-signed download links;
//! - [`index`]: the index of files and sessions, in SQLite or PostgreSQL;
//! - [`usage`]: each user's quotas and limits on uploads in progress;
//! - [`service`]: the gRPC API; [`error`]: its one error type; [`server`]: `run`.

pub mod backend;
pub mod config;
pub mod error;
pub mod files;
pub mod guard;
pub mod index;
pub mod links;
pub mod memory;
pub mod multipart;
pub mod names;
pub mod parts;
pub mod pieces;
pub mod policy;
pub mod protocol;
pub mod s3_metrics;
pub mod server;
pub mod service;
pub mod sessions;
pub mod sink;
pub mod usage;

pub use config::Config;
pub use error::StorageError;
pub use server::run;
