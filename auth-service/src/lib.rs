//! auth-service: user accounts, password login, refresh-token sessions, access tokens.
//!
//! - [`credentials`]: `Email` and `Password`, parsed at the edge;
//! - [`passwords`]: bcrypt on the blocking pool, with a timing decoy for unknown emails;
//! - [`signing`]: the Ed25519 (or HS256) key and the access tokens it signs;
//! - [`signing_keys`]: the Ed25519 keys on disk and the rules of rotating them with overlap;
//! - [`refresh_tokens`]: opaque refresh tokens and their SHA-256;
//! - [`store`]: SQLite — users, token families with one-time rotation, failed logins;
//! - [`service`]: the gRPC API; [`error`]: its one error type;
//! - [`server`]: `run`, used by `main.rs`, the tests and the all-in-one launcher.

pub mod config;
pub mod credentials;
pub mod error;
pub mod passwords;
pub mod refresh_tokens;
pub mod server;
pub mod service;
pub mod signing;
pub mod signing_keys;
pub mod store;

pub use config::Config;
pub use error::AuthError;
pub use server::run;
