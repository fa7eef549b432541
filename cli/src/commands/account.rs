//! Accounts and sessions: `register`, `login`, `logout`, `whoami`.

use serde::Serialize;
use strongbox_proto::auth::v1::{LoginRequest, LogoutRequest, MeRequest, RegisterRequest, User};
use tonic::Code;

use crate::args::ServerUrl;
use crate::client;
use crate::commands::Context;
use crate::credentials::{Credentials, unix_now};
use crate::errors::CliError;
use crate::output::rfc3339;
use crate::password::{Confirm, read_password};
use crate::session::Session;

/// An account as `register` and `whoami` print it.
#[derive(Debug, Serialize)]
struct Account {
    id: String,
    email: String,
    created_at: String,
    server: String,
}

impl Account {
    fn new(user: User, server: &ServerUrl) -> Self {
        Self {
            created_at: rfc3339(user.created_at.as_ref()),
            id: user.id,
            email: user.email,
            server: server.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
struct LoggedIn {
    email: String,
    server: String,
    access_token_expires_at: String,
}

pub async fn register(context: &Context, email: &str) -> Result<(), CliError> {
    let server = server_for_new_session(context).await;
    let channel = client::connect(&server).await?;
    let password = read_password(Confirm::Twice).await?;
    let request = RegisterRequest {
        email: email.to_owned(),
        password,
    };
    let user = client::public_auth(&channel)
        .register(request)
        .await?
        .into_inner()
        .user
        .ok_or_else(|| missing("Register", "user"))?;
    let account = Account::new(user, &server);
    context.out.result(&account, || {
        format!(
            "registered {} on {}; log in with `strongbox-cli login {}`",
            account.email, account.server, account.email
        )
    });
    Ok(())
}

pub async fn login(context: &Context, email: &str) -> Result<(), CliError> {
    let server = server_for_new_session(context).await;
    let channel = client::connect(&server).await?;
    let password = read_password(Confirm::Once).await?;
    let request = LoginRequest {
        email: email.to_owned(),
        password,
    };
    let tokens = client::public_auth(&channel)
        .login(request)
        .await?
        .into_inner()
        .tokens
        .ok_or_else(|| missing("Login", "tokens"))?;
    // The server trims and lower-cases emails; the stored one reads the same.
    let email = email.trim().to_lowercase();
    let credentials = Credentials::issued(server.clone(), email, tokens, unix_now());
    let previous = {
        let _lock = context.dir.lock().await?;
        let previous = Credentials::load(&context.dir).await.ok().flatten();
        credentials.save(&context.dir).await?;
        previous
    };
    // Logging in again replaces a session: end the old one rather than leave its
    // refresh token valid for a month. Best effort; the new session is what matters.
    if let Some(previous) = previous.filter(|old| old.server == server) {
        let request = LogoutRequest {
            refresh_token: previous.refresh_token,
        };
        let _ = client::public_auth(&channel).logout(request).await;
    }
    let logged_in = LoggedIn {
        email: credentials.email.clone(),
        server: server.to_string(),
        access_token_expires_at: rfc3339(Some(&prost_types::Timestamp {
            seconds: i64::try_from(credentials.access_token_expires_at).unwrap_or(i64::MAX),
            nanos: 0,
        })),
    };
    context.out.result(&logged_in, || {
        format!("logged in as {} on {}", logged_in.email, logged_in.server)
    });
    Ok(())
}

/// Ends the session on the server, then forgets it here. If the server cannot be told,
/// the credentials stay, so that `logout` can be run again: deleting them would leave a
/// live refresh token that nobody can revoke any more.
pub async fn logout(context: &Context) -> Result<(), CliError> {
    let session = Session::resume(context).await?;
    let request = LogoutRequest {
        refresh_token: session.credentials().refresh_token.clone(),
    };
    match client::public_auth(session.channel()).logout(request).await {
        Ok(_) => {}
        // The session already ended on the server (expired or revoked).
        Err(status) if status.code() == Code::Unauthenticated => {}
        Err(status) => return Err(status.into()),
    }
    {
        let _lock = context.dir.lock().await?;
        Credentials::delete(&context.dir).await?;
    }
    let server = session.server().to_string();
    context.out.result(
        &serde_json::json!({ "logged_out": true, "server": server }),
        || format!("logged out of {server}"),
    );
    Ok(())
}

pub async fn whoami(context: &Context) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let user = session
        .call(
            |mut clients| async move { Ok(clients.auth.me(MeRequest {}).await?.into_inner().user) },
        )
        .await?
        .ok_or_else(|| missing("Me", "user"))?;
    let account = Account::new(user, session.server());
    context.out.result(&account, || {
        format!(
            "{} (id {}) on {}",
            account.email, account.id, account.server
        )
    });
    Ok(())
}

/// `--server` if given, else the server of the stored session, else the default: logging
/// in again should not silently switch servers.
async fn server_for_new_session(context: &Context) -> ServerUrl {
    if let Some(server) = &context.server {
        return server.clone();
    }
    match Credentials::load(&context.dir).await {
        Ok(Some(stored)) => stored.server,
        _ => ServerUrl::default_server(),
    }
}

fn missing(call: &str, field: &str) -> CliError {
    CliError::Internal(format!("the server answered {call} without {field}"))
}
