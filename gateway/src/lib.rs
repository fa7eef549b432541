//! gateway: the one front door. Native gRPC and grpc-web for both services, the upload
//! page and download links, all on one port.
//!
//! - [`connections`]: the accept loop — connection caps, header-read and idle timeouts;
//! - [`tls`]: HTTPS on the same port, certificates reloaded on SIGHUP or change;
//! - [`admission`]: rates and open calls per client ([`limits`], [`client_address`]);
//! - [`upstream`]: the services behind it, a small pool of h2c connections each;
//! - [`proxy`]: the gRPC routes — tokens verified, request ids attached, calls forwarded;
//! - [`downloads`]: `/files/…` links streamed from storage-service;
//! - [`page`]: the embedded upload page;
//! - [`health`]: the gateway's health follows its upstreams';
//! - [`server`]: the router and `run`.

pub mod admission;
pub mod client_address;
pub mod config;
pub mod connections;
pub mod downloads;
pub mod health;
pub mod limits;
pub mod page;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::{GatewayError, run};
