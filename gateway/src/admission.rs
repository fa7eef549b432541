//! What a call must pass at the front door before any service sees it: the rate of its
//! kind of call for its client (or, for storage, its user), and a cap on the calls one
//! client has open at once. Refusals are RESOURCE_EXHAUSTED with `retry-after`.
//!
//! The rates follow Supabase Auth's (token buckets per IP, with a burst): the calls
//! that cost auth-service a bcrypt hash or a database write — Register, Login,
//! Refresh — each have their own, keyed by client address; storage calls are keyed by
//! user, since their token says who is calling. Every call also carries a deadline
//! unless it is a long stream ([`Deadline`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::Request;
use uuid::Uuid;

use crate::client_address::{ClientAddress, TrustedProxies};
use crate::config::Config;
use crate::connections::PeerAddress;
use crate::limits::{Held, Holdings, Refusal, TokenBuckets};
use crate::upstream::Deadline;

pub struct Admission {
    trusted_proxies: TrustedProxies,
    register: TokenBuckets<IpAddr>,
    login: TokenBuckets<IpAddr>,
    refresh: TokenBuckets<IpAddr>,
    storage: TokenBuckets<Uuid>,
    open_calls: Holdings<IpAddr>,
    call_deadline: Duration,
    upload_call_deadline: Duration,
}

impl Admission {
    pub fn new(config: &Config) -> Self {
        Self {
            trusted_proxies: config.trusted_proxies(),
            register: TokenBuckets::new(
                config.rate_limit_register,
                "registrations from this address",
            ),
            login: TokenBuckets::new(config.rate_limit_login, "logins from this address"),
            refresh: TokenBuckets::new(
                config.rate_limit_refresh,
                "token refreshes from this address",
            ),
            storage: TokenBuckets::new(config.rate_limit_storage, "storage calls for this account"),
            open_calls: Holdings::new(
                usize::try_from(config.max_calls_per_client).unwrap_or(usize::MAX),
            ),
            call_deadline: config.call_deadline(),
            upload_call_deadline: config.upload_call_deadline(),
        }
    }

    /// The client a request comes from. Requests always carry their peer (the accept
    /// loop attaches it); one without would be a bug, and is keyed as "unspecified"
    /// rather than let through unlimited.
    pub fn client<B>(&self, request: &Request<B>) -> ClientAddress {
        let peer = request
            .extensions()
            .get::<PeerAddress>()
            .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |peer| peer.0);
        self.trusted_proxies.client_of(peer, request.headers())
    }

    /// One more open call for `client`, released when the returned guard drops.
    pub fn open_call(&self, client: ClientAddress) -> Result<Held<IpAddr>, Refusal> {
        self.open_calls.try_hold(&client.limit_key()).ok_or_else(|| {
            crate::limits::refused("open calls from one address");
            Refusal {
            message: "this address already has as many calls open as the gateway allows one client; finish or cancel some".to_owned(),
            retry_after: Duration::from_secs(1),
            }
        })
    }

    /// The per-address rate of an `auth.v1.AuthService` method, if it has one.
    pub fn auth_rate(&self, method: &str, client: ClientAddress) -> Result<(), Refusal> {
        let buckets = match method {
            "Register" => &self.register,
            "Login" => &self.login,
            "Refresh" => &self.refresh,
            _ => return Ok(()),
        };
        buckets.take(&client.limit_key())
    }

    /// The per-user rate of storage calls.
    pub fn storage_rate(&self, user: Uuid) -> Result<(), Refusal> {
        self.storage.take(&user)
    }

    /// The deadline of a forwarded call: none for the streaming methods (the services
    /// cut streams that stall), a long one for the unary calls that move file data —
    /// carrying up to a chunk, or completing a session (S3 assembles its parts then:
    /// a 1 GiB session took over 30 s on the benchmark's S3 server with 16 at once) —
    /// the default for everything else.
    pub fn deadline(&self, method: &str) -> Deadline {
        match method {
            "Upload" | "Download" => None,
            "PutFile" | "UploadChunk" | "CompleteUpload" => Some(self.upload_call_deadline),
            _ => Some(self.call_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_have_no_deadline_and_calls_moving_file_data_a_long_one() {
        let mut config = Config::for_upstreams(String::new(), String::new());
        config.call_deadline_seconds = 30;
        config.upload_call_deadline_seconds = 600;
        let admission = Admission::new(&config);
        assert_eq!(admission.deadline("Upload"), None);
        assert_eq!(admission.deadline("Download"), None);
        for moving_data in ["PutFile", "UploadChunk", "CompleteUpload"] {
            assert_eq!(
                admission.deadline(moving_data),
                Some(Duration::from_secs(600)),
                "{moving_data}"
            );
        }
        for control in ["ListFiles", "Me", "Login", "CreateUpload", "DeleteFile"] {
            assert_eq!(
                admission.deadline(control),
                Some(Duration::from_secs(30)),
                "{control}"
            );
        }
    }
}
