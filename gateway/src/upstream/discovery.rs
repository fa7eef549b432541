//! Which replicas a service has, and which of them answer.
//!
//! A service URL setting is a comma-separated list of URLs; each URL's host is an IP
//! address (one replica) or a name that may resolve to several (`docker compose up
//! --scale storage-service=3` gives one name with an address per replica). Names are
//! resolved again every few seconds: replicas that appear are used, replicas whose
//! address is gone are dropped once their calls end. A name that does not resolve keeps
//! the replicas it had (a DNS hiccup must not take a service away).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use http::Uri;
use http::uri::{Authority, Scheme};

use super::BadUpstreamUrl;
use super::replica::{Replica, ReplicaSettings};

/// One URL of a service setting.
#[derive(Debug)]
pub(crate) struct Target {
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    host: String,
    port: u16,
    /// The host, when it is an address rather than a name.
    literal: Option<IpAddr>,
}

impl Target {
    /// Every URL of a comma-separated setting; at least one.
    pub fn parse_list(name: &'static str, urls: &str) -> Result<Vec<Self>, BadUpstreamUrl> {
        let targets = strongbox_common::config::url_list(urls)
            .map(|url| Self::parse(name, url))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(BadUpstreamUrl::new(name, urls, "no URL given"));
        }
        Ok(targets)
    }

    fn parse(name: &'static str, url: &str) -> Result<Self, BadUpstreamUrl> {
        let invalid = |reason: &str| BadUpstreamUrl::new(name, url, reason);
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
            _ => return Err(invalid("use http:// (h2c) or https://")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
        Ok(Self {
            url: url.to_owned(),
            literal: host.parse().ok(),
            scheme,
            authority,
            host,
            port,
        })
    }

    /// The one replica of a URL whose host is an address.
    pub fn address(&self) -> Option<SocketAddr> {
        self.literal.map(|ip| SocketAddr::new(ip, self.port))
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// Looks a host name up: the system's resolver, or a test's.
pub(crate) type Resolve =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>;

pub(crate) fn system_resolver() -> Resolve {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// The replicas now known, rebuilt by [`discover`] and read by every call.
pub(crate) type ReplicaSet = Arc<[Arc<Replica>]>;

/// The replicas `targets` name now: an address target's one, and every address a
/// name resolves to; replicas already in `current` are kept as they are (their
/// connections and health), so a re-resolution that finds the same addresses changes
/// nothing.
pub(crate) async fn discover(
    service: &'static str,
    targets: &[Arc<Target>],
    current: &ReplicaSet,
    settings: &ReplicaSettings,
    resolve: &Resolve,
) -> ReplicaSet {
    let mut found: Vec<Arc<Replica>> = Vec::new();
    for target in targets {
        let addresses = match target.address() {
            Some(addr) => vec![addr],
            None => match resolve(target.host.clone(), target.port).await {
                Ok(addresses) if !addresses.is_empty() => addresses,
                outcome => {
                    let error = outcome.err().map(|err| err.to_string());
                    tracing::warn!(
                        upstream = service,
                        url = %target.url,
                        error = error.as_deref().unwrap_or("no addresses"),
                        "cannot resolve the service's name; keeping the replicas it had"
                    );
                    found.extend(
                        current
                            .iter()
                            .filter(|replica| Arc::ptr_eq(&replica.target, target))
                            .cloned(),
                    );
                    continue;
                }
            },
        };
        for addr in addresses {
            if found
                .iter()
                .any(|replica| Arc::ptr_eq(&replica.target, target) && replica.addr == addr)
            {
                continue;
            }
            let known = current
                .iter()
                .find(|replica| Arc::ptr_eq(&replica.target, target) && replica.addr == addr);
            match known {
                Some(replica) => found.push(Arc::clone(replica)),
                None => match Replica::new(Arc::clone(target), addr, settings) {
                    Ok(replica) => {
                        tracing::info!(upstream = service, %addr, url = %target.url, "replica found");
                        found.push(Arc::new(replica));
                    }
                    Err(err) => {
                        tracing::warn!(upstream = service, %addr, %err, "cannot set up a replica");
                    }
                },
            }
        }
    }
    for gone in current
        .iter()
        .filter(|replica| !found.iter().any(|kept| Arc::ptr_eq(kept, replica)))
    {
        tracing::info!(upstream = service, addr = %gone.addr, "replica no longer resolves; dropped");
    }
    found.into()
}

/// Power of two choices: of the replicas that answer and have not been tried for this
/// call, two at random, and the one carrying fewer calls. Per call, not per connection,
/// so one long-lived client connection still spreads its calls.
pub(crate) fn pick<'a>(replicas: &'a ReplicaSet, tried: &[SocketAddr]) -> Option<&'a Arc<Replica>> {
    let candidates: Vec<&Arc<Replica>> = replicas
        .iter()
        .filter(|replica| replica.is_up() && !tried.contains(&replica.addr))
        .collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        count => {
            let first = fastrand::usize(..count);
            let second = (first + 1 + fastrand::usize(..count - 1)) % count;
            let (a, b) = (candidates[first], candidates[second]);
            Some(if b.in_flight() < a.in_flight() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    fn settings() -> ReplicaSettings {
        ReplicaSettings {
            connect_timeout: Duration::from_secs(1),
            connections: 1,
            tls: None,
            ca: None,
        }
    }

    /// A resolver whose answers the test changes.
    fn fake_resolver(answers: Arc<Mutex<io::Result<Vec<SocketAddr>>>>) -> Resolve {
        Arc::new(move |host, port| {
            assert_eq!((host.as_str(), port), ("storage-service", 50052));
            let answer = match &*answers.lock().unwrap() {
                Ok(addresses) => Ok(addresses.clone()),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
            Box::pin(async move { answer })
        })
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 50052))
    }

    fn addresses(set: &ReplicaSet) -> Vec<SocketAddr> {
        set.iter().map(|replica| replica.addr).collect()
    }

    #[test]
    fn a_setting_is_a_list_of_http_or_https_urls() {
        let targets =
            Target::parse_list("storage-service", " http://10.0.0.1:1 , https://name:2,").unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].literal, Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!((targets[1].host.as_str(), targets[1].port), ("name", 2));
        assert!(targets[1].is_https());
        let ipv6 = Target::parse_list("storage-service", "http://[::1]:7").unwrap();
        assert_eq!(
            ipv6[0].literal,
            Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        );
        for bad in ["", " , ", "ftp://x:1", "not a url", "http://a:1,/path"] {
            let err = Target::parse_list("storage-service", bad).unwrap_err();
            assert!(err.to_string().contains("storage-service"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_name_is_resolved_again_and_replicas_come_and_go_with_its_addresses() {
        let answers = Arc::new(Mutex::new(Ok(vec![addr(1), addr(2)])));
        let resolve = fake_resolver(answers.clone());
        let targets: Vec<Arc<Target>> = Target::parse_list(
            "storage-service",
            "http://storage-service:50052,http://10.0.0.9:50052",
        )
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
        let settings = settings();
        let empty: ReplicaSet = Arc::new([]);
        let first = discover("storage-service", &targets, &empty, &settings, &resolve).await;
        assert_eq!(addresses(&first), [addr(1), addr(2), addr(9)]);

        // Scaled to three, then one of them gone: the replica still resolving is the
        // same one (its connections and health kept), the new one is added.
        first[0].set_up(false);
        *answers.lock().unwrap() = Ok(vec![addr(2), addr(3), addr(1)]);
        let second = discover("storage-service", &targets, &first, &settings, &resolve).await;
        assert_eq!(addresses(&second), [addr(2), addr(3), addr(1), addr(9)]);
        assert!(Arc::ptr_eq(&second[2], &first[0]));
        assert!(!second[2].is_up(), "health is kept across a re-resolution");
        *answers.lock().unwrap() = Ok(vec![addr(3)]);
        let third = discover("storage-service", &targets, &second, &settings, &resolve).await;
        assert_eq!(addresses(&third), [addr(3), addr(9)]);

        // A failed lookup, or an empty answer, keeps what the name had.
        *answers.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        let kept = discover("storage-service", &targets, &third, &settings, &resolve).await;
        assert_eq!(addresses(&kept), [addr(3), addr(9)]);
        *answers.lock().unwrap() = Ok(vec![]);
        let kept = discover("storage-service", &targets, &kept, &settings, &resolve).await;
        assert_eq!(addresses(&kept), [addr(3), addr(9)]);
    }

    #[tokio::test]
    async fn a_call_goes_to_the_less_busy_of_two_answering_replicas_never_one_tried_or_down() {
        let settings = settings();
        let target = Arc::new(Target::parse("storage-service", "http://10.0.0.1:50052").unwrap());
        let replicas: ReplicaSet = (1..=3)
            .map(|last| Arc::new(Replica::new(target.clone(), addr(last), &settings).unwrap()))
            .collect();
        let busy = |replica: &Replica, calls: usize| {
            replica
                .least_busy()
                .unwrap()
                .in_flight
                .store(calls, Ordering::Relaxed);
        };
        busy(&replicas[0], 5);
        busy(&replicas[1], 1);
        busy(&replicas[2], 3);
        // Of two drawn at random the less busy wins, so the busiest never does, and the
        // least busy always does when drawn: over many draws it is picked most.
        let mut picked = HashMap::new();
        for _ in 0..300 {
            *picked
                .entry(pick(&replicas, &[]).unwrap().addr)
                .or_insert(0) += 1;
        }
        assert_eq!(picked.get(&addr(1)), None, "{picked:?}");
        assert!(picked[&addr(2)] > picked[&addr(3)], "{picked:?}");

        replicas[1].set_up(false);
        for _ in 0..50 {
            assert_eq!(pick(&replicas, &[]).unwrap().addr, addr(3));
            assert_eq!(pick(&replicas, &[addr(3)]).unwrap().addr, addr(1));
        }
        assert!(pick(&replicas, &[addr(1), addr(3)]).is_none());
        replicas[0].set_up(false);
        replicas[2].set_up(false);
        assert!(pick(&replicas, &[]).is_none());
    }
}
