//! What every Strongbox service shares, so that no service writes it twice:
//!
//! - [`jwt`]: access-token claims and the one verifier every service uses;
//! - [`config`]: `.env` loading and the arguments all services take;
//! - [`http`]: HTTP details shared by the services (Content-Disposition);
//! - [`telemetry`]: tracing setup (filter, text or JSON lines);
//! - [`metrics`]: the Prometheus recorder, per-call metrics and the scrape listener;
//! - [`server`]: the gRPC bootstrap (reflection, health, per-call spans, graceful shutdown);
//! - [`shutdown`]: the SIGINT/SIGTERM future handed to `run`;
//! - [`database`]: opening a service's database, SQLite or PostgreSQL, by its URL;
//! - [`secrets`]: key material generated once into the data directory.

pub mod config;
pub mod database;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
