//! Signing-key rotation as an operator does it: the real `auth-service` serving, and the
//! real `auth-service rotate-key` run beside it on the same data directory. The new key
//! is published before it signs, tokens signed before the rotation keep working, and the
//! old key is withdrawn only once every token it signed has expired.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{GetPublicKeysRequest, LoginRequest, MeRequest, RegisterRequest};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

const BINARY: &str = env!("CARGO_BIN_EXE_auth-service");
/// Longer than the activation delay, so a token from before the rotation is still
/// valid when the new key starts signing.
const TOKEN_TTL_SECONDS: u64 = 8;
/// Long enough that the test sees the new key published before it signs, even on a
/// slow machine (the service reloads its keys every second).
const ACTIVATION_DELAY_SECONDS: u64 = 4;
const EMAIL: &str = "rotation@example.com";
const PASSWORD: &str = "a rotation password";

/// The binary with only the settings given here (no inherited secrets, no `.env`).
fn auth_service(data: &Path, listen: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .current_dir(data)
        .env("DATA_DIR", data)
        .env("AUTH_LISTEN", listen)
        .env("BCRYPT_ROUNDS", "4")
        .env("ACCESS_TOKEN_EXPIRE_SECONDS", TOKEN_TTL_SECONDS.to_string())
        .env(
            "JWT_KEY_ACTIVATION_DELAY_SECONDS",
            ACTIVATION_DELAY_SECONDS.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn free_loopback_address() -> String {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// Starts the service and waits until it answers.
async fn start(data: &Path) -> (Child, AuthServiceClient<Channel>) {
    let listen = free_loopback_address();
    let child = auth_service(data, &listen).spawn().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_lazy();
    let mut client = AuthServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "auth-service did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, client)
}

async fn login(client: &mut AuthServiceClient<Channel>) -> String {
    let response = client
        .login(LoginRequest {
            email: EMAIL.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    response.into_inner().tokens.unwrap().access_token
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn exp_of(token: &str) -> u64 {
    // Only to read `exp` back; the service verified the token.
    jsonwebtoken::dangerous::insecure_decode::<strongbox_common::jwt::Claims>(token)
        .unwrap()
        .claims
        .exp
}

async fn published_kids(client: &mut AuthServiceClient<Channel>) -> Vec<String> {
    let keys = client
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    keys.into_iter().map(|key| key.kid).collect()
}

async fn me_works(client: &mut AuthServiceClient<Channel>, token: &str) -> bool {
    let mut request = tonic::Request::new(MeRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.me(request).await.is_ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotated_key_is_published_before_it_signs_and_old_tokens_keep_working() {
    let data = tempfile::tempdir().unwrap();
    let (_service, client) = start(data.path()).await;
    let mut client = client;
    client
        .register(RegisterRequest {
            email: EMAIL.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let before = login(&mut client).await;
    let old_kid = kid_of(&before);
    assert_eq!(
        published_kids(&mut client).await,
        std::slice::from_ref(&old_kid)
    );

    let rotated = auth_service(data.path(), "127.0.0.1:0")
        .arg("rotate-key")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "rotate-key failed: {said}{:?}",
        rotated.stderr
    );

    // Published first: both keys listed while tokens still carry the old kid.
    let new_kid = eventually("the new key is published", Duration::from_secs(3), || {
        let mut client = client.clone();
        async move {
            let kids = published_kids(&mut client).await;
            (kids.len() == 2).then(|| kids[1].clone())
        }
    })
    .await;
    assert_eq!(published_kids(&mut client).await[0], old_kid);
    assert!(
        said.contains(&new_kid),
        "rotate-key should name the new key: {said}"
    );
    assert_eq!(
        kid_of(&login(&mut client).await),
        old_kid,
        "signed before its activation"
    );

    // Then it signs. The last token the old key signed bounds how long it must stay.
    let mut last_old_token = before.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let token = login(&mut client).await;
        if kid_of(&token) == new_kid {
            break token;
        }
        last_old_token = token;
        assert!(Instant::now() < deadline, "the new key never signed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        me_works(&mut client, &before).await,
        "a token from before the rotation"
    );
    assert!(me_works(&mut client, &last_old_token).await);
    assert!(me_works(&mut client, &after).await);

    // Withdrawn once the old key's tokens have all expired, and not before.
    let limit = Duration::from_secs(TOKEN_TTL_SECONDS + 15);
    eventually("the old key is withdrawn", limit, || {
        let mut client = client.clone();
        async move { (published_kids(&mut client).await.len() == 1).then_some(()) }
    })
    .await;
    assert!(
        unix_now() >= exp_of(&last_old_token),
        "the old key was withdrawn while a token it signed was still valid"
    );
    assert_eq!(
        published_kids(&mut client).await,
        std::slice::from_ref(&new_kid)
    );
    let fresh = login(&mut client).await;
    assert_eq!(kid_of(&fresh), new_kid);
    assert!(me_works(&mut client, &fresh).await);
}
