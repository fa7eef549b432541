//! auth-service, black-box: a real server on a loopback port with a real SQLite file
//! (and, for the scenarios whose rules live in the database, a real PostgreSQL server
//! too), driven through the generated gRPC client.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sqlx::Connection;
use strongbox_common::jwt::{self, Claims};
use strongbox_proto::auth::v1::{
    GetPublicKeysRequest, LoginRequest, LogoutAllRequest, LogoutRequest, MeRequest, RefreshRequest,
    RegisterRequest, TokenPair,
};
use strongbox_tests::auth::{PASSWORD, TestAuth, from_address, with_bearer};
use strongbox_tests::database::Database;
use strongbox_tests::{Scratch, on_both_databases};
use tonic::Code;

// The scenarios whose rules live in the database, run on SQLite and on PostgreSQL.
on_both_databases!(
    register_login_me_refresh_logout,
    emails_are_normalised_and_unique,
    wrong_password_and_unknown_email_look_the_same,
    failed_logins_are_throttled_per_email_and_reset_by_success,
    concurrent_refreshes_of_one_token_rotate_it_once,
    without_a_reuse_interval_concurrent_refreshes_let_exactly_one_through,
    replaying_a_rotated_refresh_token_revokes_the_whole_family,
    logout_all_ends_every_session,
    expired_refresh_tokens_are_refused,
    refresh_tokens_are_stored_only_as_sha256,
    sessions_and_keys_survive_a_restart,
    concurrent_wrong_passwords_check_at_most_the_limit,
    a_stranger_elsewhere_cannot_lock_the_owner_out,
    the_per_email_ceiling_throttles_even_a_fresh_address,
    a_retried_refresh_gets_the_same_successor,
    a_refresh_presented_again_after_the_interval_revokes_the_family,
    a_refresh_presented_again_after_its_successor_was_used_revokes_the_family,
);

fn register(email: &str, password: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        password: password.into(),
    }
}

fn login(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.into(),
        password: password.into(),
    }
}

fn refresh(token: &str) -> RefreshRequest {
    RefreshRequest {
        refresh_token: token.into(),
    }
}

async fn register_login_me_refresh_logout(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();

    let user = client
        .register(register("alice@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "alice@example.com");
    assert!(uuid::Uuid::parse_str(&user.id).is_ok());
    assert!(user.created_at.unwrap().seconds > 1_700_000_000);

    let tokens = auth.login("alice@example.com").await.unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert_eq!(tokens.refresh_expires_in, 2_592_000);

    let me = client
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me, user);

    let rotated = client
        .refresh(refresh(&tokens.refresh_token))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(rotated.refresh_token, tokens.refresh_token);
    assert_ne!(rotated.access_token, tokens.access_token);
    client
        .me(with_bearer(MeRequest {}, &rotated.access_token))
        .await
        .unwrap();

    client
        .logout(LogoutRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await
        .unwrap();
    // Idempotent.
    client
        .logout(LogoutRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await
        .unwrap();
    let after = client
        .refresh(refresh(&rotated.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
    assert!(
        after.message().contains("logged out"),
        "{}",
        after.message()
    );
}

async fn emails_are_normalised_and_unique(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();

    let user = client
        .register(register("  Bob.Smith@Example.COM \t", PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "bob.smith@example.com");
    auth.login("BOB.smith@example.com").await.unwrap();

    let duplicate = client
        .register(register("bob.smith@EXAMPLE.com", "another password"))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert!(duplicate.message().contains("already exists"));
}

#[tokio::test]
async fn bad_input_is_invalid_argument_with_a_clear_message() {
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |_| {});
    let mut client = auth.client();

    let cases = [
        (register("", PASSWORD), "email is required"),
        (register("not-an-email", PASSWORD), "name@example.com"),
        (register("a@b", PASSWORD), "name@example.com"),
        (register("carol@example.com", "short"), "at least 8 bytes"),
        (
            register("carol@example.com", &"x".repeat(73)),
            "at most 72 bytes",
        ),
        // 25 three-byte characters: 75 bytes, though only 25 characters.
        (
            register("carol@example.com", &"€".repeat(25)),
            "at most 72 bytes",
        ),
    ];
    for (request, expected) in cases {
        let status = client.register(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(expected),
            "{:?} lacks {expected:?}",
            status.message()
        );
    }
    // Exactly 72 bytes is accepted and is the whole password: a 72-byte prefix of
    // another password does not log in.
    let long = "y".repeat(72);
    client
        .register(register("dave@example.com", &long))
        .await
        .unwrap();
    client
        .login(login("dave@example.com", &long))
        .await
        .unwrap();
    let prefix = client
        .login(login("dave@example.com", &long[..71]))
        .await
        .unwrap_err();
    assert_eq!(prefix.code(), Code::Unauthenticated);

    for bad in ["", "garbage", &"!".repeat(43)] {
        let status = client.refresh(refresh(bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
}

async fn wrong_password_and_unknown_email_look_the_same(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();
    client
        .register(register("erin@example.com", PASSWORD))
        .await
        .unwrap();

    let wrong = client
        .login(login("erin@example.com", "wrong password"))
        .await
        .unwrap_err();
    let unknown = client
        .login(login("nobody@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
}

async fn failed_logins_are_throttled_per_email_and_reset_by_success(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| config.login_max_failures = 5);
    let mut client = auth.client();
    client
        .register(register("frank@example.com", PASSWORD))
        .await
        .unwrap();
    client
        .register(register("grace@example.com", PASSWORD))
        .await
        .unwrap();

    // Four failures, then a success, resets the count: four more are still allowed.
    for _ in 0..4 {
        client
            .login(login("frank@example.com", "wrong password"))
            .await
            .unwrap_err();
    }
    auth.login("frank@example.com").await.unwrap();
    for _ in 0..4 {
        let status = client
            .login(login("frank@example.com", "wrong password"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // The fifth failure in the window locks the email, even for the right password.
    client
        .login(login("frank@example.com", "wrong password"))
        .await
        .unwrap_err();
    let throttled = auth.login("frank@example.com").await.unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert!(
        throttled.message().contains("try again in"),
        "{}",
        throttled.message()
    );
    let retry_after: u64 = throttled
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after));

    // Other emails are unaffected, and unknown emails are throttled alike.
    auth.login("grace@example.com").await.unwrap();
    for _ in 0..5 {
        client
            .login(login("ghost@example.com", PASSWORD))
            .await
            .unwrap_err();
    }
    let ghost = client
        .login(login("ghost@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(ghost.code(), Code::ResourceExhausted);
}

async fn concurrent_refreshes_of_one_token_rotate_it_once(db: Database) {
    // Within the reuse interval the losers of the race are retries: they get the
    // winner's successor, so the client ends up with one session, not a revoked one.
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let tokens = auth.register_and_login("heidi@example.com").await;

    let attempts = (0..8).map(|_| {
        let mut client = auth.client();
        let request = refresh(&tokens.refresh_token);
        async move { client.refresh(request).await }
    });
    let successors: Vec<String> = join_all(attempts)
        .await
        .into_iter()
        .map(|result| result.unwrap().into_inner().tokens.unwrap().refresh_token)
        .collect();
    assert!(
        successors.iter().all(|token| *token == successors[0]),
        "{successors:?}"
    );
    auth.client()
        .refresh(refresh(&successors[0]))
        .await
        .unwrap();
}

async fn without_a_reuse_interval_concurrent_refreshes_let_exactly_one_through(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| {
        config.refresh_reuse_interval_seconds = 0
    });
    let tokens = auth.register_and_login("heidi@example.com").await;

    let attempts = (0..8).map(|_| {
        let mut client = auth.client();
        let request = refresh(&tokens.refresh_token);
        async move { client.refresh(request).await }
    });
    let results = join_all(attempts).await;
    let successes = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(successes, 1, "{results:?}");
    for failure in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(failure.code(), Code::Unauthenticated);
    }
}

async fn replaying_a_rotated_refresh_token_revokes_the_whole_family(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();
    let first = auth.register_and_login("ivan@example.com").await;
    let other_session = auth.login("ivan@example.com").await.unwrap();

    let second = client
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let third = client
        .refresh(refresh(&second.refresh_token))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The thief replays the first token.
    let replay = client
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(
        replay.message().contains("already used"),
        "{}",
        replay.message()
    );
    // Every descendant of that login is dead...
    let descendant = client
        .refresh(refresh(&third.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(descendant.code(), Code::Unauthenticated);
    // ...but another login's session is not.
    client
        .refresh(refresh(&other_session.refresh_token))
        .await
        .unwrap();
}

async fn logout_all_ends_every_session(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();
    let laptop = auth.register_and_login("judy@example.com").await;
    let phone = auth.login("judy@example.com").await.unwrap();

    let anonymous = client.logout_all(LogoutAllRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    client
        .logout_all(with_bearer(LogoutAllRequest {}, &laptop.access_token))
        .await
        .unwrap();
    for session in [&laptop, &phone] {
        let status = client
            .refresh(refresh(&session.refresh_token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // A new login works again.
    auth.login("judy@example.com").await.unwrap();
}

async fn expired_refresh_tokens_are_refused(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| config.refresh_token_expire_seconds = 1);
    let tokens = auth.register_and_login("ken@example.com").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = auth
        .client()
        .refresh(refresh(&tokens.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

async fn refresh_tokens_are_stored_only_as_sha256(db: Database) {
    use sha2::{Digest, Sha256};
    let data = Scratch::new();
    let mut auth = TestAuth::start_on(&db, &data, |_| {});
    let tokens = auth.register_and_login("leo@example.com").await;
    let url = auth.config.database_url();
    auth.service.stop().await.unwrap(); // checkpoints and closes the database

    let hash = Sha256::digest(tokens.refresh_token.as_bytes());
    let (bytes, stored_hash) = match db {
        // Every byte of the file and its write-ahead log.
        Database::Sqlite => {
            let file = url.trim_start_matches("sqlite://");
            let mut bytes = std::fs::read(file).unwrap();
            bytes.extend(std::fs::read(format!("{file}-wal")).unwrap_or_default());
            (bytes, hash.to_vec())
        }
        // Every row of every table, as text (BYTEA in its hex form).
        Database::Postgres { .. } => {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT u::text FROM users u UNION ALL SELECT t::text FROM refresh_tokens t
                 UNION ALL SELECT f::text FROM login_failures f",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let text: String = rows.into_iter().map(|(row,)| row).collect();
            (text.into_bytes(), hex::encode(hash).into_bytes())
        }
    };
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    assert!(
        !contains(tokens.refresh_token.as_bytes()),
        "the plain refresh token is in the database"
    );
    assert!(contains(&stored_hash), "its SHA-256 is not stored");
    assert!(
        !contains(PASSWORD.as_bytes()),
        "the plain password is in the database"
    );
}

async fn sessions_and_keys_survive_a_restart(db: Database) {
    let data = Scratch::new();
    let mut auth = TestAuth::start_on(&db, &data, |_| {});
    let tokens = auth.register_and_login("mallory@example.com").await;
    let keys_before = auth
        .client()
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    auth.service.stop().await.unwrap();

    let auth = TestAuth::start_on(&db, &data, |_| {});
    let mut client = auth.client();
    let keys_after = client
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys_before, keys_after);
    client
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap();
    client
        .refresh(refresh(&tokens.refresh_token))
        .await
        .unwrap();
}

#[tokio::test]
async fn logins_hash_off_the_async_workers() {
    // One worker thread and real-cost bcrypt: if hashing ran on the worker, `Me` would
    // queue behind the logins. It must finish while they are still hashing.
    let data = Scratch::new();
    // A queue long enough for every login: this test is about where hashing runs, not
    // about how many may wait.
    let auth = TestAuth::start_with_workers(&data, 1, |config| {
        config.bcrypt_rounds = 12;
        config.password_hash_queue = Some(8);
    });
    let tokens = auth.register_and_login("niaj@example.com").await;

    let logins: Vec<_> = (0..4)
        .map(|_| {
            let mut client = auth.client();
            tokio::spawn(async move { client.login(login("niaj@example.com", PASSWORD)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    auth.client()
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap();
    let still_hashing = logins.iter().filter(|login| !login.is_finished()).count();
    assert!(
        still_hashing > 0,
        "Me waited for every login to finish hashing"
    );
    for login in logins {
        login.await.unwrap().unwrap();
    }
}

// ---- load shedding and failed-login throttling -------------------------------------

fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no retry-after on {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_login_flood_is_refused_at_once_while_other_calls_go_through() {
    // Real-cost bcrypt and the default queue: two cores hash two logins at a time and
    // let about as many wait; the rest of 40 must be refused, not queued.
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |config| config.bcrypt_rounds = 12);
    let tokens = auth.register_and_login("olga@example.com").await;

    let flood: Vec<_> = (0..40)
        .map(|index| {
            let mut client = auth.client();
            let request = login(&format!("flood-{index}@example.com"), "wrong password");
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = client.login(request).await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Cheap calls of a well-behaved user do not wait behind the hashing.
    let mut client = auth.client();
    let during = tokio::time::timeout(Duration::from_secs(5), async {
        client
            .me(with_bearer(MeRequest {}, &tokens.access_token))
            .await
            .unwrap();
        client
            .refresh(refresh(&tokens.refresh_token))
            .await
            .unwrap();
    })
    .await;
    assert!(during.is_ok(), "Me and Refresh waited behind the flood");

    let mut refused = 0;
    for call in flood {
        let (outcome, took) = call.await.unwrap();
        assert!(took < Duration::from_secs(5), "a login waited {took:?}");
        let status = outcome.unwrap_err();
        match status.code() {
            Code::Unauthenticated => {}
            Code::Unavailable => {
                refused += 1;
                assert!(
                    status.message().contains("busy checking passwords")
                        && status.message().contains("try again in"),
                    "{}",
                    status.message()
                );
                assert!((1..=60).contains(&retry_after(&status)));
            }
            other => panic!("unexpected {other:?}: {status:?}"),
        }
    }
    assert!(refused > 0, "no login of the flood was refused");
    // Once the flood is answered, logins are admitted again.
    auth.login("olga@example.com").await.unwrap();
}

async fn concurrent_wrong_passwords_check_at_most_the_limit(db: Database) {
    // A queue long enough for all: what stops the guesses here is the throttle alone.
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| {
        config.login_max_failures = 5;
        config.password_hash_queue = Some(64);
    });
    auth.register_and_login("pia@example.com").await;

    let guesses = (0..40).map(|_| {
        let mut client = auth.client();
        async move {
            client
                .login(login("pia@example.com", "wrong password"))
                .await
        }
    });
    let results = join_all(guesses).await;
    let checked = results
        .iter()
        .filter(|result| {
            result
                .as_ref()
                .is_err_and(|s| s.code() == Code::Unauthenticated)
        })
        .count();
    assert_eq!(checked, 5, "{results:?}");
    for result in &results {
        let status = result.as_ref().unwrap_err();
        if status.code() != Code::Unauthenticated {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!((1..=900).contains(&retry_after(status)));
        }
    }
}

async fn a_stranger_elsewhere_cannot_lock_the_owner_out(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| config.login_max_failures = 3);
    let mut client = auth.client();
    auth.register_and_login("quentin@example.com").await;

    let stranger = "198.51.100.7";
    for _ in 0..3 {
        let status = client
            .login(from_address(
                login("quentin@example.com", "guess 123"),
                stranger,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // The stranger's address is throttled, even with the right password...
    let throttled = client
        .login(from_address(
            login("quentin@example.com", PASSWORD),
            stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    retry_after(&throttled);
    // ...the owner, from another address, is not...
    client
        .login(from_address(
            login("quentin@example.com", PASSWORD),
            "203.0.113.9",
        ))
        .await
        .unwrap();
    // ...and the owner's success does not lift the stranger's throttle.
    let still = client
        .login(from_address(
            login("quentin@example.com", PASSWORD),
            stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(still.code(), Code::ResourceExhausted);
}

async fn the_per_email_ceiling_throttles_even_a_fresh_address(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| {
        config.login_max_failures = 2;
        config.login_max_failures_per_email = 5;
    });
    let mut client = auth.client();
    auth.register_and_login("rosa@example.com").await;

    // Five failures spread over three addresses, none of them throttled on its own.
    for address in [
        "192.0.2.1",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.2",
        "192.0.2.3",
    ] {
        let status = client
            .login(from_address(
                login("rosa@example.com", "guess 123"),
                address,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "from {address}");
    }
    let fresh = client
        .login(from_address(
            login("rosa@example.com", PASSWORD),
            "192.0.2.4",
        ))
        .await
        .unwrap_err();
    assert_eq!(fresh.code(), Code::ResourceExhausted);
    assert!((1..=900).contains(&retry_after(&fresh)));
}

// ---- retried refreshes ----------------------------------------------------------------

async fn rotate(auth: &TestAuth, token: &str) -> Result<TokenPair, tonic::Status> {
    let response = auth.client().refresh(refresh(token)).await?;
    Ok(response.into_inner().tokens.expect("a token pair"))
}

async fn a_retried_refresh_gets_the_same_successor(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let first = auth.register_and_login("sven@example.com").await;

    let answer = rotate(&auth, &first.refresh_token).await.unwrap();
    // The answer was lost; the client retries with the token it still holds.
    let retried = rotate(&auth, &first.refresh_token).await.unwrap();
    assert_eq!(retried.refresh_token, answer.refresh_token);
    for access in [&answer.access_token, &retried.access_token] {
        auth.client()
            .me(with_bearer(MeRequest {}, access))
            .await
            .unwrap();
    }
    // One session: the successor rotates as usual, once.
    let next = rotate(&auth, &retried.refresh_token).await.unwrap();
    assert_ne!(next.refresh_token, retried.refresh_token);
    rotate(&auth, &next.refresh_token).await.unwrap();
}

async fn a_refresh_presented_again_after_the_interval_revokes_the_family(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |config| {
        config.refresh_reuse_interval_seconds = 1
    });
    let first = auth.register_and_login("tara@example.com").await;
    let successor = rotate(&auth, &first.refresh_token).await.unwrap();

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = rotate(&auth, &first.refresh_token).await.unwrap_err();
    assert_eq!(late.code(), Code::Unauthenticated);
    assert!(
        late.message().contains("already used"),
        "{}",
        late.message()
    );
    let refused = rotate(&auth, &successor.refresh_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

async fn a_refresh_presented_again_after_its_successor_was_used_revokes_the_family(db: Database) {
    let data = Scratch::new();
    let auth = TestAuth::start_on(&db, &data, |_| {});
    let first = auth.register_and_login("ulla@example.com").await;
    let second = rotate(&auth, &first.refresh_token).await.unwrap();
    let third = rotate(&auth, &second.refresh_token).await.unwrap();

    // Well within the interval, but the successor is spent: this is a replay.
    let replay = rotate(&auth, &first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(
        replay.message().contains("already used"),
        "{}",
        replay.message()
    );
    let refused = rotate(&auth, &third.refresh_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_short_refresh_token_key_file_stops_the_service_with_its_name() {
    // Too short for any secret file; then long enough for one, but only 20 bytes of key.
    for short in ["00112233", &"ab".repeat(20)] {
        let data = Scratch::new();
        std::fs::write(data.join("refresh-token-key"), short).unwrap();
        let mut auth = TestAuth::start_in(&data, |_| {});
        let err = auth.service.stop().await.unwrap_err();
        assert!(err.contains("refresh-token-key"), "{err}");
        assert!(
            err.contains("too short") || err.contains("fewer than"),
            "{err}"
        );
    }
}

// ---- access tokens ----------------------------------------------------------------

struct Forge {
    key: EncodingKey,
    kid: String,
    public_raw: Vec<u8>,
    sub: String,
}

impl Forge {
    async fn new(auth: &TestAuth, sub: &str) -> Self {
        let pem = std::fs::read(auth.config.jwt_private_key_path()).unwrap();
        let keys = auth
            .client()
            .get_public_keys(GetPublicKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, "EdDSA");
        Self {
            key: EncodingKey::from_ed_pem(&pem).unwrap(),
            kid: keys[0].kid.clone(),
            public_raw: keys[0].public_key.to_vec(),
            sub: sub.to_owned(),
        }
    }

    fn claims(&self) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            sub: self.sub.clone(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: jwt::ISSUER.into(),
            aud: jwt::AUDIENCE.into(),
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn b64(json: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

#[tokio::test]
async fn forged_and_stale_access_tokens_are_rejected() {
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |_| {});
    let mut client = auth.client();
    let tokens = auth.register_and_login("oscar@example.com").await;
    let me = client
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let forge = Forge::new(&auth, &me.id).await;

    // The forge itself is sound: a token it signs with the real key is accepted.
    client
        .me(with_bearer(MeRequest {}, &forge.sign(&forge.claims())))
        .await
        .unwrap();

    let mut forged: Vec<(&str, String)> = Vec::new();
    let claims_json = serde_json::to_value(forge.claims()).unwrap();

    let none_header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": forge.kid});
    forged.push((
        "alg none",
        format!("{}.{}.", b64(none_header), b64(claims_json.clone())),
    ));

    for (what, secret) in [
        ("HS256 with the raw public key", forge.public_raw.clone()),
        ("HS256 with the kid", forge.kid.clone().into_bytes()),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(forge.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &forge.claims(), &EncodingKey::from_secret(&secret))
                .unwrap();
        forged.push((what, token));
    }

    let mut parts: Vec<String> = tokens.access_token.split('.').map(str::to_owned).collect();
    let mut tampered_claims = claims_json.clone();
    tampered_claims["sub"] = serde_json::json!(uuid::Uuid::new_v4().to_string());
    parts[1] = b64(tampered_claims);
    forged.push(("tampered payload", parts.join(".")));

    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("0000000000000000".into());
    forged.push((
        "unknown kid",
        jsonwebtoken::encode(&header, &forge.claims(), &forge.key).unwrap(),
    ));
    let no_kid = Header::new(Algorithm::EdDSA);
    forged.push((
        "no kid",
        jsonwebtoken::encode(&no_kid, &forge.claims(), &forge.key).unwrap(),
    ));

    let mut expired = forge.claims();
    expired.exp -= 3600;
    expired.iat -= 4200;
    expired.nbf -= 4200;
    forged.push(("expired", forge.sign(&expired)));
    let mut future = forge.claims();
    future.nbf += 3600;
    forged.push(("not yet valid", forge.sign(&future)));
    let mut issuer = forge.claims();
    issuer.iss = "someone-else".into();
    forged.push(("wrong issuer", forge.sign(&issuer)));
    let mut audience = forge.claims();
    audience.aud = "another-app".into();
    forged.push(("wrong audience", forge.sign(&audience)));
    let mut ghost = forge.claims();
    ghost.sub = uuid::Uuid::new_v4().to_string();
    forged.push(("a user that does not exist", forge.sign(&ghost)));
    forged.push(("garbage", "not.a.jwt".into()));

    for (what, token) in forged {
        let status = client
            .me(with_bearer(MeRequest {}, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }

    let missing = client.me(MeRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("Bearer"));
    let mut basic = tonic::Request::new(MeRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        client.me(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn shared_secret_mode_signs_hs256_and_publishes_no_keys() {
    let data = Scratch::new();
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let auth = TestAuth::start_in(&data, |config| {
        config.jwt_secret = Some(secret.parse().unwrap())
    });
    let mut client = auth.client();
    let tokens = auth.register_and_login("peggy@example.com").await;

    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert!(
        client
            .get_public_keys(GetPublicKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );
    client
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap();
    assert!(
        !auth.config.jwt_private_key_path().exists(),
        "no Ed25519 key is generated in HS256 mode"
    );

    // The shared verifier accepts it with the secret, and nothing else.
    let verifier = jwt::Verifier::shared_secret(secret.as_bytes());
    verifier.verify(&tokens.access_token).await.unwrap();
    let wrong = jwt::Verifier::shared_secret(b"a-different-secret-of-32-bytes-or-more");
    assert!(wrong.verify(&tokens.access_token).await.is_err());
}

#[tokio::test]
async fn a_remote_verifier_fetches_the_published_keys() {
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |_| {});
    let tokens = auth.register_and_login("quinn@example.com").await;
    let verifier = jwt::Verifier::from_auth_service(auth.service.channel());
    let caller = verifier.verify(&tokens.access_token).await.unwrap();
    let me = auth
        .client()
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caller.user_id.to_string(), me.user.unwrap().id);
}

// ---- grpcurl, reflection and health ---------------------------------------------

#[tokio::test]
async fn grpcurl_discovers_the_service_and_registers_and_logs_in_with_json() {
    use strongbox_tests::tools::grpcurl_ok;
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |_| {});
    let addr = auth.service.addr.to_string();

    let services = grpcurl_ok(&[&addr, "list"]).await;
    for service in ["auth.v1.AuthService", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} missing from {services}"
        );
    }
    let methods = grpcurl_ok(&[&addr, "list", "auth.v1.AuthService"]).await;
    for method in [
        "Register",
        "Login",
        "Refresh",
        "Logout",
        "LogoutAll",
        "Me",
        "GetPublicKeys",
    ] {
        assert!(
            methods.contains(&format!("auth.v1.AuthService.{method}")),
            "{method} missing"
        );
    }

    let body = r#"{"email": "Rupert@Example.com", "password": "grpcurl password"}"#;
    let registered: serde_json::Value = serde_json::from_str(
        &grpcurl_ok(&["-d", body, &addr, "auth.v1.AuthService/Register"]).await,
    )
    .unwrap();
    assert_eq!(registered["user"]["email"], "rupert@example.com");
    let logged_in: serde_json::Value =
        serde_json::from_str(&grpcurl_ok(&["-d", body, &addr, "auth.v1.AuthService/Login"]).await)
            .unwrap();
    assert_eq!(logged_in["tokens"]["tokenType"], "Bearer");
    let access = logged_in["tokens"]["accessToken"].as_str().unwrap();

    let bearer = format!("authorization: Bearer {access}");
    let me: serde_json::Value =
        serde_json::from_str(&grpcurl_ok(&["-H", &bearer, &addr, "auth.v1.AuthService/Me"]).await)
            .unwrap();
    assert_eq!(me["user"]["id"], registered["user"]["id"]);

    let health = grpcurl_ok(&[
        "-d",
        r#"{"service": "auth.v1.AuthService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(health.contains("SERVING"), "{health}");

    // An error reaches grpcurl as its gRPC code and message.
    let failed = strongbox_tests::tools::grpcurl(&[
        "-d",
        r#"{"email": "x", "password": "12345678"}"#,
        &addr,
        "auth.v1.AuthService/Register",
    ])
    .await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stdout) + String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("name@example.com"),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_reports_serving_over_grpc() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let data = Scratch::new();
    let auth = TestAuth::start_in(&data, |_| {});
    let mut health = HealthClient::new(auth.service.channel());
    for service in ["", "auth.v1.AuthService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}
