//! The gateway as a front door under hostile load, black-box: rate limits per client
//! address and per user, a cap on the calls one client holds open, connection caps and
//! timeouts, deadlines, and no client starving the others of an upstream.
//!
//! Several clients are played by binding distinct loopback source addresses
//! (127.0.0.2, 127.0.0.3, …): the whole of 127/8 is this machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest, RefreshRequest, RegisterRequest};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    DownloadRequest, DownloadResponse, FileMetadata, ListFilesRequest, download_response,
};
use strongbox_tests::auth::PASSWORD;
use strongbox_tests::gateway::{System, start_gateway};
use strongbox_tests::reserve_port;
use strongbox_tests::storage::{Backend, User, metadata, pseudo_random};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Another client on this machine: 127.0.0.`n`.
fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// The refusal of a limit: RESOURCE_EXHAUSTED, saying when to retry (in whole seconds,
/// at most `max_seconds`).
fn assert_refused(status: &Status, max_seconds: u64) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .expect("a refusal says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=max_seconds).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert!(status.message().contains("try again in"), "{status:?}");
}

fn wrong_login() -> LoginRequest {
    LoginRequest {
        email: "nobody@example.com".into(),
        password: "not the password".into(),
    }
}

fn registration(name: &str) -> RegisterRequest {
    RegisterRequest {
        email: format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple()),
        password: PASSWORD.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_calls_over_their_rate_are_refused_per_address_before_any_service_is_touched() {
    let system = System::start_with(Backend::Local, |config| {
        config.rate_limit_login = "3/h,burst=3".parse().unwrap();
        config.rate_limit_register = "2/h,burst=2".parse().unwrap();
        config.rate_limit_refresh = "2/h,burst=2".parse().unwrap();
    })
    .await;
    let mut greedy = AuthServiceClient::new(system.channel_from(client(2)));
    let mut other = AuthServiceClient::new(system.channel_from(client(3)));

    for _ in 0..3 {
        let status = greedy.login(wrong_login()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_refused(&greedy.login(wrong_login()).await.unwrap_err(), 1200);
    // Another address has a bucket of its own.
    let status = other.login(wrong_login()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Register and Refresh have their own rates, untouched by the logins.
    greedy.register(registration("first")).await.unwrap();
    greedy.register(registration("second")).await.unwrap();
    let refused = registration("third");
    assert_refused(&greedy.register(refused.clone()).await.unwrap_err(), 1800);
    // The refused registration never reached auth-service: the email is still free.
    system
        .stack
        .auth
        .client()
        .register(refused)
        .await
        .expect("the refused email was never registered");
    let bad_refresh = || RefreshRequest {
        refresh_token: "A".repeat(43),
    };
    for _ in 0..2 {
        let status = greedy.refresh(bad_refresh()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_refused(&greedy.refresh(bad_refresh()).await.unwrap_err(), 1800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_when_a_trusted_proxy_sends_them() {
    let system = System::start_with(Backend::Local, |config| {
        config.trusted_proxies = vec![Some("127.0.0.5/32".parse().unwrap())];
        config.rate_limit_login = "1/h,burst=1".parse().unwrap();
    })
    .await;
    let forwarded_for = |address: &str| {
        let mut request = Request::new(wrong_login());
        request
            .metadata_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        request
    };
    let mut proxy = AuthServiceClient::new(system.channel_from(client(5)));
    let mut stranger = AuthServiceClient::new(system.channel_from(client(6)));

    // Through the trusted proxy, each forwarded client has its own bucket.
    for address in ["198.51.100.1", "198.51.100.2"] {
        let status = proxy.login(forwarded_for(address)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_refused(
        &proxy
            .login(forwarded_for("198.51.100.1"))
            .await
            .unwrap_err(),
        3600,
    );
    // From anyone else the header is the client's own claim, and changes nothing.
    let status = stranger
        .login(forwarded_for("198.51.100.3"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_refused(
        &stranger
            .login(forwarded_for("198.51.100.4"))
            .await
            .unwrap_err(),
        3600,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_calls_are_limited_per_user() {
    let system = System::start_with(Backend::Local, |config| {
        config.rate_limit_storage = "3/h,burst=3".parse().unwrap();
    })
    .await;
    let alice = system.user("alice").await;
    let bob = system.user("bob").await;
    let list = |user: &User| {
        let mut client = user.client();
        let request = user.req(ListFilesRequest {
            page_size: 10,
            page_token: String::new(),
        });
        async move { client.list_files(request).await }
    };
    for _ in 0..3 {
        list(&alice).await.expect("within the rate");
    }
    assert_refused(&list(&alice).await.unwrap_err(), 1200);
    // Bob shares alice's address, not her budget.
    list(&bob)
        .await
        .expect("another user has a rate of their own");
}

/// Uploads a file larger than every flow-control window on the way back, so a
/// Download of it that nobody reads stays open, holding its stream.
async fn a_large_file(user: &User) -> String {
    let content = Bytes::from(pseudo_random(4 * 1024 * 1024, 31));
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        ..metadata("large.bin", "application/octet-stream")
    };
    user.upload(declared, vec![content]).await.unwrap().key
}

/// Opens `count` Download streams of `key` as `user`, spread over `channels`, and reads
/// none of them.
async fn unread_downloads(
    user: &User,
    key: &str,
    channels: &[Channel],
    count: usize,
) -> Vec<Result<tonic::Response<tonic::Streaming<DownloadResponse>>, Status>> {
    let mut held = Vec::with_capacity(count);
    for index in 0..count {
        let mut client = StorageServiceClient::new(channels[index % channels.len()].clone());
        let request = user.req(DownloadRequest {
            key: key.to_owned(),
            ..Default::default()
        });
        held.push(client.download(request).await);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_200_unread_downloads_slows_no_one_else() {
    let system = System::start_with(Backend::Local, |config| {
        // Let the hoarder really hold 200 streams: this is about the upstreams, not the cap.
        config.max_calls_per_client = 256;
    })
    .await;
    let hoarder = system.user("hoarder").await;
    let key = a_large_file(&hoarder).await;
    // A native client opens at most 128 streams per connection: four connections.
    let channels: Vec<Channel> = (0..4).map(|_| system.channel_from(client(2))).collect();
    let held = unread_downloads(&hoarder, &key, &channels, 200).await;
    let opened = held.iter().filter(|download| download.is_ok()).count();
    assert_eq!(
        opened,
        200,
        "every download opens: {:?}",
        held.iter().find(|d| d.is_err())
    );

    let neighbour = system.user("neighbour").await;
    let channel = system.channel_from(client(3));
    let patience = Duration::from_secs(10);
    let listed = tokio::time::timeout(
        patience,
        StorageServiceClient::new(channel.clone()).list_files(neighbour.req(ListFilesRequest {
            page_size: 10,
            page_token: String::new(),
        })),
    )
    .await;
    assert!(matches!(listed, Ok(Ok(_))), "ListFiles: {listed:?}");
    let me = tokio::time::timeout(
        patience,
        AuthServiceClient::new(channel.clone()).me(neighbour.req(MeRequest {})),
    )
    .await;
    assert!(matches!(me, Ok(Ok(_))), "Me: {me:?}");
    let health = tokio::time::timeout(
        patience,
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    assert_eq!(
        health
            .expect("health answers")
            .expect("health")
            .into_inner()
            .status(),
        ServingStatus::Serving
    );
    // Even a whole download of the same large file goes through meanwhile.
    let mut reader = download_over(channel, &hoarder, &key).await;
    let mut received = 0;
    while let Some(message) = tokio::time::timeout(patience, reader.message())
        .await
        .expect("the download keeps moving")
        .expect("a message")
    {
        if let Some(download_response::Payload::Chunk(chunk)) = message.payload {
            received += chunk.len();
        }
    }
    assert_eq!(received, 4 * 1024 * 1024);
    drop(held);
}

/// A download of `owner`'s `key` over `channel`, another client's connection.
async fn download_over(
    channel: Channel,
    owner: &User,
    key: &str,
) -> tonic::Streaming<DownloadResponse> {
    StorageServiceClient::new(channel)
        .download(owner.req(DownloadRequest {
            key: key.to_owned(),
            ..Default::default()
        }))
        .await
        .expect("the download opens")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_per_client_cap_are_refused_at_once_and_the_cap_frees_up() {
    let system = System::start_with(Backend::Local, |config| {
        config.max_calls_per_client = 4;
    })
    .await;
    let hoarder = system.user("capped").await;
    let key = a_large_file(&hoarder).await;
    let channels = [system.channel_from(client(2))];
    let held = unread_downloads(&hoarder, &key, &channels, 4).await;
    assert!(held.iter().all(Result::is_ok));
    let list_from = |channel: Channel| {
        let request = hoarder.req(ListFilesRequest {
            page_size: 10,
            page_token: String::new(),
        });
        async move { StorageServiceClient::new(channel).list_files(request).await }
    };
    let refused = tokio::time::timeout(Duration::from_secs(5), list_from(channels[0].clone()))
        .await
        .expect("a refusal is immediate");
    assert_refused(&refused.unwrap_err(), 1);
    // The same user from another address is another client.
    list_from(system.channel_from(client(3)))
        .await
        .expect("another address has its own cap");
    // Closing the held streams gives the calls back.
    drop(held);
    let mut freed = false;
    for _ in 0..50 {
        if list_from(channels[0].clone()).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "closed calls are given back to the client's cap");
}

/// A TCP connection to the gateway from `source`.
async fn connect_from(source: Ipv4Addr, gateway: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    socket.connect(gateway).await.unwrap()
}

/// Whether the server closes `socket` within `patience`, reading (and discarding)
/// whatever it sends first.
async fn closed_within(socket: &mut TcpStream, patience: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let reading = async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(patience, reading).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_while_new_clients_are_served() {
    let system = System::start_with(Backend::Local, |config| {
        config.header_read_timeout_seconds = 1;
        config.idle_timeout_seconds = 2;
        config.max_connections_per_address = 10_000;
    })
    .await;
    let gateway = system.gateway.addr;
    let mut silent = Vec::new();
    for index in 0..300u16 {
        let source = client(10 + u8::try_from(index % 100).unwrap());
        silent.push(connect_from(source, gateway).await);
    }
    // Half an HTTP/1.1 request, and an HTTP/2 preface with nothing after it.
    let mut slow = connect_from(client(2), gateway).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    let mut preface_only = connect_from(client(2), gateway).await;
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A keep-alive connection that made one call and went quiet.
    let mut quiet = connect_from(client(3), gateway).await;
    quiet
        .write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    quiet.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Meanwhile, a new client is served.
    let user = system.user("newcomer").await;
    AuthServiceClient::new(system.channel_from(client(4)))
        .me(user.req(MeRequest {}))
        .await
        .expect("a new client is served while idle sockets wait");

    // Header-read timeout (1 s) and idle timeout (2 s), plus the close grace and slack.
    let patience = Duration::from_secs(6);
    for (index, socket) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(socket, patience).await,
            "silent connection {index} is still open"
        );
    }
    assert!(
        closed_within(&mut slow, patience).await,
        "half a request keeps a connection"
    );
    assert!(
        closed_within(&mut preface_only, patience).await,
        "an HTTP/2 preface alone keeps a connection"
    );
    assert!(
        closed_within(&mut quiet, patience).await,
        "an idle connection stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_closed_at_once() {
    let system = System::start_with(Backend::Local, |config| {
        config.max_connections_per_address = 3;
        config.max_connections = 8;
    })
    .await;
    let gateway = system.gateway.addr;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(connect_from(client(2), gateway).await);
    }
    let mut over = connect_from(client(2), gateway).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a fourth connection from one address is closed at once"
    );
    for socket in &mut kept {
        assert!(!closed_within(socket, Duration::from_millis(200)).await);
    }
    // Another address is still served.
    let user = system.user("elsewhere").await;
    AuthServiceClient::new(system.channel_from(client(3)))
        .me(user.req(MeRequest {}))
        .await
        .expect("another address is served");

    // The total: whatever is open now (the kept three, the client above, the test's
    // own), more connections from fresh addresses fill up to 8, and no further.
    let mut fresh = Vec::new();
    for n in 20..30 {
        let mut socket = connect_from(client(n), gateway).await;
        let refused = closed_within(&mut socket, Duration::from_millis(300)).await;
        fresh.push((socket, refused));
    }
    let accepted = fresh.iter().filter(|(_, refused)| !refused).count();
    assert!(accepted < fresh.len(), "the total cap refuses some");
    assert!(accepted >= 1, "the total cap is not reached before 8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_upstream_that_never_answers_ends_at_the_deadline() {
    // Connections to it complete (the kernel's backlog), but nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let mut config = gateway::Config::for_upstreams(silent_url.clone(), silent_url);
    config.call_deadline_seconds = 1;
    let mut gateway = start_gateway(reserve_port(0), config);
    let url = gateway.url();
    let mut auth = AuthServiceClient::connect(url).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), auth.login(wrong_login()))
        .await
        .expect("the gateway answers by its deadline")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("auth-service"), "{status:?}");
    gateway.stop().await.unwrap();
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_star_allows_any_origin_without_credentials() {
    let system = System::start_with(Backend::Local, |config| {
        config.cors_allowed_origins = vec!["*".into()];
    })
    .await;
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/auth.v1.AuthService/Login", system.url()),
        )
        .header("origin", "https://anywhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("access-control-allow-credentials"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_address_so_the_owner_still_gets_in() {
    let system = System::start_adjusted(
        Backend::Local,
        |auth| auth.login_max_failures = 3,
        |_| {},
        |_| {},
    )
    .await;
    let owner = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
    system.stack.auth.register_and_login(&owner).await;
    let guess = || LoginRequest {
        email: owner.clone(),
        password: "a wrong guess".into(),
    };
    let mut stranger = AuthServiceClient::new(system.channel_from(client(2)));
    for _ in 0..3 {
        let status = stranger.login(guess()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // auth-service throttles the stranger's address (the gateway let the call through:
    // its own login rate is far higher)...
    assert_refused(&stranger.login(guess()).await.unwrap_err(), 900);
    // ...and only that address: the gateway told auth-service who is calling.
    AuthServiceClient::new(system.channel_from(client(3)))
        .login(LoginRequest {
            email: owner.clone(),
            password: PASSWORD.into(),
        })
        .await
        .expect("the owner, from elsewhere, is not locked out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_through_the_gateway_holds_up_no_one_else() {
    // Real password cost: the flood must be expensive for auth-service.
    let system = System::start_adjusted(
        Backend::Local,
        |auth| auth.bcrypt_rounds = 12,
        |_| {},
        |_| {},
    )
    .await;
    let email = format!("calm-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut tokens = system.stack.auth.register_and_login(&email).await;

    // 400 anonymous logins from 40 addresses, all at once.
    let channels: Vec<Channel> = (0..40)
        .map(|n| system.channel_from(client(100 + n)))
        .collect();
    let mut flood = tokio::task::JoinSet::new();
    for index in 0..400 {
        let mut auth = AuthServiceClient::new(channels[index % channels.len()].clone());
        flood.spawn(async move {
            let request = LoginRequest {
                email: format!("flood-{index}@example.com"),
                password: "not a real password".into(),
            };
            auth.login(request)
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        });
    }

    // Meanwhile a well-behaved client refreshes and asks who it is, promptly.
    let mut calm = AuthServiceClient::new(system.channel_from(client(250)));
    let patience = Duration::from_secs(5);
    for _ in 0..5 {
        let refreshed = tokio::time::timeout(
            patience,
            calm.refresh(RefreshRequest {
                refresh_token: tokens.refresh_token.clone(),
            }),
        )
        .await
        .expect("Refresh does not wait behind the flood")
        .expect("Refresh succeeds");
        tokens = refreshed.into_inner().tokens.unwrap();
        let mut me = Request::new(MeRequest {});
        me.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", tokens.access_token).parse().unwrap(),
        );
        tokio::time::timeout(patience, calm.me(me))
            .await
            .expect("Me does not wait behind the flood")
            .expect("Me succeeds");
    }

    // Every flood call was answered: checked, or turned away at once.
    let mut shed = 0;
    while let Some(outcome) = flood.join_next().await {
        match outcome.unwrap() {
            Err(Code::Unauthenticated) => {}
            Err(Code::Unavailable | Code::ResourceExhausted) => shed += 1,
            other => panic!("a flood login ended {other:?}"),
        }
    }
    assert!(shed > 0, "400 logins at once were all queued, none shed");
}
