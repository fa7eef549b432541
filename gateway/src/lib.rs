//! gateway: the one front door. Native gRPC and grpc-web for both services, the upload
//! page and download links, all on one port.
//!
//! - [`upstream`]: the services behind it, reached over h2c; calls forwarded as HTTP;
//! - [`proxy`]: the gRPC routes — tokens verified, request ids attached, calls forwarded;
//! - [`downloads`]: `/files/…` links streamed from storage-service;
//! - [`page`]: the embedded upload page;
//! - [`health`]: the gateway's health follows its upstreams';
//! - [`server`]: the router and `run`.

pub mod config;
pub mod downloads;
pub mod health;
pub mod page;
pub mod proxy;
pub mod server;
pub mod upstream;

pub use config::Config;
pub use server::{GatewayError, run};
