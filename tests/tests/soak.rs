//! 200 concurrent logins, refresh chains and uploads against the SQLite databases:
//! no "database is locked" (or any other failure) may reach a client, and no write may
//! be lost. Bounded: every call has a deadline and the whole run ends by itself.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use strongbox_proto::auth::v1::{LoginRequest, RefreshRequest};
use strongbox_proto::storage::v1::FileMetadata;
use strongbox_tests::auth::PASSWORD;
use strongbox_tests::storage::{Backend, Stack, User, metadata};

const TASKS: usize = 200;
const USERS: usize = 20;
const REFRESHES_PER_CHAIN: usize = 5;
const DEADLINE: Duration = Duration::from_secs(60);

enum Work {
    Login,
    RefreshChain,
    Upload,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_writers_lose_nothing_and_see_no_lock_errors() {
    // Every login waits its turn for a hash instead of being shed (as a flood is:
    // tests/tests/auth.rs), and a user's concurrent logins are not held to the few a
    // guesser gets (a login is counted as a possible failure while it is checked), so
    // all 200 writers really reach the database at once.
    let stack = Stack::start_with_auth(
        Backend::Local,
        |auth| {
            auth.password_hash_queue = Some(TASKS);
            auth.login_max_failures = TASKS as u32;
            auth.login_max_failures_per_email = TASKS as u32;
        },
        |_| {},
    )
    .await;
    let mut users: Vec<(String, User)> = Vec::new();
    for index in 0..USERS {
        let user = stack.user(&format!("soak{index}")).await;
        let email = stack
            .auth
            .client()
            .me(user.req(strongbox_proto::auth::v1::MeRequest {}))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .email;
        users.push((email, user));
    }

    let tasks = (0..TASKS).map(|index| {
        let (email, user) = &users[index % USERS];
        let work = match index % 3 {
            0 => Work::Login,
            1 => Work::RefreshChain,
            _ => Work::Upload,
        };
        let mut auth = stack.auth.client();
        async move {
            let outcome = tokio::time::timeout(DEADLINE, async {
                match work {
                    Work::Login => {
                        auth.login(LoginRequest {
                            email: email.clone(),
                            password: PASSWORD.into(),
                        })
                        .await?;
                    }
                    Work::RefreshChain => {
                        let mut tokens = auth
                            .login(LoginRequest {
                                email: email.clone(),
                                password: PASSWORD.into(),
                            })
                            .await?
                            .into_inner()
                            .tokens
                            .unwrap();
                        for _ in 0..REFRESHES_PER_CHAIN {
                            tokens = auth
                                .refresh(RefreshRequest {
                                    refresh_token: tokens.refresh_token,
                                })
                                .await?
                                .into_inner()
                                .tokens
                                .unwrap();
                        }
                    }
                    Work::Upload => {
                        let content = format!("file {index}").into_bytes();
                        let declared = FileMetadata {
                            size: Some(content.len() as u64),
                            ..metadata(&format!("soak-{index}.txt"), "text/plain")
                        };
                        user.upload(declared, vec![Bytes::from(content)]).await?;
                    }
                }
                Ok::<_, tonic::Status>(())
            })
            .await;
            (index, outcome)
        }
    });
    let results = join_all(tasks).await;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(index, outcome)| match outcome {
            Ok(Ok(())) => None,
            Ok(Err(status)) => Some(format!("task {index}: {status:?}")),
            Err(_) => Some(format!("task {index}: no answer within {DEADLINE:?}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {TASKS} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // No lost writes: every upload is listed by its owner.
    let uploads = (0..TASKS).filter(|index| index % 3 == 2).count();
    let mut listed = 0;
    for (_, user) in &users {
        listed += user.list_all().await.len();
    }
    assert_eq!(listed, uploads);
}
