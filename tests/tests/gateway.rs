//! The gateway, black-box: every client talks only to the gateway's one port — native
//! gRPC (generated Rust client, grpcurl), grpc-web (tonic-web's client over HTTP/1.1),
//! the page and download links over plain HTTP.

use std::time::Duration;

use bytes::Bytes;
use http::header;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest, RegisterRequest};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    CompleteUploadRequest, CreateUploadRequest, DeleteFileRequest, FileMetadata,
    GetDownloadUrlRequest, ListFilesRequest, PutFileRequest, UploadChunkRequest,
};
use strongbox_tests::auth::{PASSWORD, with_bearer};
use strongbox_tests::gateway::System;
use strongbox_tests::storage::{Backend, metadata, pseudo_random, sha256_hex, upload_then_vanish};
use strongbox_tests::tools::{grpcurl, grpcurl_ok};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_over_native_grpc_and_a_download_link() {
    let system = System::start(Backend::Local).await;
    let user = system.user("native").await;
    let me = system
        .auth_client()
        .me(user.req(MeRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.id, user.id.to_string());

    let content = pseudo_random(9 * 1024 * 1024 + 7, 11);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("Résumé \"final\".pdf", "application/pdf")
    };
    let chunks = content
        .chunks(1024 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let uploaded = user.upload(declared, chunks).await.unwrap();
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    assert_eq!(user.list_all().await.len(), 1);
    let (_, streamed) = user.download(&uploaded.key).await.unwrap();
    assert!(streamed == content);

    // The local backend's link is served by the gateway, with the headers a browser needs.
    assert!(
        uploaded
            .url
            .starts_with(&format!("{}/files/", system.url())),
        "{}",
        uploaded.url
    );
    let response = reqwest::get(&uploaded.url).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        content.len().to_string().as_str()
    );
    assert_eq!(
        headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"R_sum_ _final_.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22.pdf"
    );
    assert!(response.bytes().await.unwrap() == content);

    let mut tampered = url::Url::parse(&uploaded.url).unwrap();
    let query: Vec<(String, String)> = tampered.query_pairs().into_owned().collect();
    tampered.query_pairs_mut().clear();
    for (name, value) in &query {
        let value = if name == "expires" {
            (value.parse::<u64>().unwrap() + 1).to_string()
        } else {
            value.clone()
        };
        tampered.query_pairs_mut().append_pair(name, &value);
    }
    assert_eq!(reqwest::get(tampered.as_str()).await.unwrap().status(), 403);
    let unsigned = uploaded.url.split('?').next().unwrap().to_owned();
    assert_eq!(reqwest::get(&unsigned).await.unwrap().status(), 403);

    let expiring = user
        .client()
        .get_download_url(user.req(GetDownloadUrlRequest {
            key: uploaded.key.clone(),
            expires_in: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reqwest::get(&expiring.url).await.unwrap().status(),
        403,
        "an expired link is refused"
    );

    user.client()
        .delete_file(user.req(DeleteFileRequest {
            key: uploaded.key.clone(),
        }))
        .await
        .unwrap();
    assert!(user.list_all().await.is_empty());
    assert_eq!(reqwest::get(&uploaded.url).await.unwrap().status(), 404);
}

/// Everything the gateway forwards shares one HTTP/2 connection to storage-service, and
/// a client's uploads share one to the gateway. With upload memory for a single part,
/// uploads that wait for it must not starve the one holding it of its bytes on either
/// connection: six at once all finish, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_waiting_for_memory_do_not_stall_the_others_through_the_gateway() {
    let system = System::start_configured(
        Backend::S3,
        |storage| {
            storage.max_chunk_bytes = storage.upload_part_size;
            storage.upload_memory_bytes = storage.upload_part_size;
        },
        |_| {},
    )
    .await;
    let user = system.user("turns").await;
    user.upload_at_once_intact(6, 11 * 1024 * 1024 + 5, 90)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_at_the_gateway_before_any_upstream_is_touched() {
    let mut system = System::start(Backend::Local).await;
    let user = system.user("early").await;
    // With storage-service down, a bad token still gets UNAUTHENTICATED (not
    // UNAVAILABLE): the gateway refused it itself.
    system.stack.storage.stop().await.unwrap();
    let mut client = StorageServiceClient::new(system.gateway.channel());
    let missing = client
        .list_files(ListFilesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let forged = client
        .list_files(with_bearer(ListFilesRequest::default(), "e30.e30.sig"))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    let me = system.auth_client().me(MeRequest {}).await.unwrap_err();
    assert_eq!(me.code(), Code::Unauthenticated);
    // A valid token gets through to the (missing) upstream.
    let down = client
        .list_files(user.req(ListFilesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(
        down.message().contains("storage-service"),
        "{}",
        down.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_at_the_gateway_stores_nothing() {
    let system = System::start(Backend::Local).await;
    let user = system.user("cutoff").await;
    upload_then_vanish(system.url(), user.token.clone(), "cut.bin", 8);
    assert!(
        user.list_all().await.is_empty(),
        "a truncated upload became a file"
    );
    let left = system.stack.settle_stored_files(0).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_uses_reflection_and_json_through_the_gateway() {
    let system = System::start(Backend::Local).await;
    let addr = system.gateway.addr.to_string();
    let services = grpcurl_ok(&[&addr, "list"]).await;
    for service in [
        "auth.v1.AuthService",
        "storage.v1.StorageService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} missing from {services}"
        );
    }
    let credentials = r#"{"email": "curl@example.com", "password": "grpcurl password"}"#;
    grpcurl_ok(&["-d", credentials, &addr, "auth.v1.AuthService/Register"]).await;
    let login: serde_json::Value = serde_json::from_str(
        &grpcurl_ok(&["-d", credentials, &addr, "auth.v1.AuthService/Login"]).await,
    )
    .unwrap();
    let bearer = format!(
        "authorization: Bearer {}",
        login["tokens"]["accessToken"].as_str().unwrap()
    );

    // A client-streaming upload from JSON: metadata, then base64 chunks.
    let body = r#"{"metadata": {"filename": "hello.txt", "contentType": "text/plain"}}
                  {"chunk": "aGVsbG8sIA=="}
                  {"chunk": "d29ybGQK"}
                  {"end": {}}"#;
    let uploaded: serde_json::Value = serde_json::from_str(
        &grpcurl_ok(&[
            "-H",
            &bearer,
            "-d",
            body,
            &addr,
            "storage.v1.StorageService/Upload",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(uploaded["filename"], "hello.txt");
    assert_eq!(uploaded["size"], "13");
    assert_eq!(uploaded["sha256"], sha256_hex(b"hello, world\n"));
    let listed = grpcurl_ok(&["-H", &bearer, &addr, "storage.v1.StorageService/ListFiles"]).await;
    assert!(listed.contains("hello.txt"), "{listed}");
    let fetched = reqwest::get(uploaded["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&fetched[..], b"hello, world\n");

    let unknown = grpcurl(&[&addr, "auth.v1.AuthService/Nope"]).await;
    assert!(!unknown.status.success());
}

/// grpc-web over HTTP/1.1 with tonic-web's client layer: the same framing browsers use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_clients_can_do_everything_through_sessions_and_put_file() {
    let system = System::start(Backend::Local).await;
    let http1 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let grpc_web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http1);
    let origin: http::Uri = system.url().parse().unwrap();
    let mut auth = AuthServiceClient::with_origin(grpc_web.clone(), origin.clone());
    let mut storage = StorageServiceClient::with_origin(grpc_web, origin);

    let email = "web@example.com";
    auth.register(RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    let tokens = auth
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let token = tokens.access_token;
    let wrong = auth
        .login(LoginRequest {
            email: email.into(),
            password: "wrong password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        wrong.code(),
        Code::Unauthenticated,
        "errors arrive as gRPC statuses over grpc-web too"
    );

    // Two chunks of the session's size, the last one short.
    let content = pseudo_random(13 * 1024 * 1024 + 3, 12);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        ..metadata("web.bin", "")
    };
    let session = storage
        .create_upload(with_bearer(
            CreateUploadRequest {
                metadata: Some(declared),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut offset = 0usize;
    for chunk in content.chunks(session.max_chunk_size as usize) {
        let request = UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset: offset as u64,
            data: Bytes::copy_from_slice(chunk),
        };
        offset = storage
            .upload_chunk(with_bearer(request, &token))
            .await
            .unwrap()
            .into_inner()
            .offset as usize;
    }
    let file = storage
        .complete_upload(with_bearer(
            CompleteUploadRequest {
                upload_id: session.upload_id,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(file.sha256, sha256_hex(&content));

    // A small file in one call.
    let small = pseudo_random(300 * 1024, 13);
    let put = storage
        .put_file(with_bearer(
            PutFileRequest {
                metadata: Some(metadata("small.bin", "")),
                data: Bytes::copy_from_slice(&small),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(put.sha256, sha256_hex(&small));

    let listed = storage
        .list_files(with_bearer(ListFilesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.files.len(), 2);
    for (file, content) in [(file, content), (put, small)] {
        let downloaded = reqwest::get(&file.url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(downloaded == content, "{} differs", file.filename);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_going_down_is_unavailable_and_recovery_needs_no_gateway_restart() {
    let mut system = System::start(Backend::Local).await;
    let user = system.user("faults").await;
    let mut health = HealthClient::new(system.gateway.channel());
    let auth_port = system.stack.auth.service.addr.port();
    // Both verifiers (gateway and storage-service) learn the signing key on first use.
    assert!(user.list_all().await.is_empty());

    system.stack.auth.service.stop().await.unwrap();
    let down = system
        .auth_client()
        .login(LoginRequest {
            email: "x@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(
        down.message().contains("auth-service"),
        "{}",
        down.message()
    );
    // Storage calls keep working: the verifiers already hold the signing key.
    assert!(user.list_all().await.is_empty());
    wait_for_health(
        &mut health,
        "auth.v1.AuthService",
        ServingStatus::NotServing,
    )
    .await;
    wait_for_health(&mut health, "", ServingStatus::NotServing).await;

    // auth-service comes back on its port with its own data directory.
    let config = system.stack.auth.config.clone();
    system.stack.auth.service =
        strongbox_tests::RunningService::start_on(auth_port, 2, move |listener, stopped| {
            auth_service::run(config, listener, strongbox_tests::until_stopped(stopped))
        });
    wait_for_health(&mut health, "", ServingStatus::Serving).await;
    system
        .auth_client()
        .me(user.req(MeRequest {}))
        .await
        .unwrap();

    let storage_port = system.stack.storage.addr.port();
    system.stack.storage.stop().await.unwrap();
    let down = user
        .client()
        .list_files(user.req(ListFilesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(
        down.message().contains("storage-service"),
        "{}",
        down.message()
    );
    wait_for_health(
        &mut health,
        "storage.v1.StorageService",
        ServingStatus::NotServing,
    )
    .await;
    let config = system.stack.config.clone();
    system.stack.storage =
        strongbox_tests::RunningService::start_on(storage_port, 2, move |listener, stopped| {
            storage_service::run(config, listener, strongbox_tests::until_stopped(stopped))
        });
    wait_for_health(&mut health, "", ServingStatus::Serving).await;
    assert!(user.list_all().await.is_empty());
}

async fn wait_for_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    wanted: ServingStatus,
) {
    for _ in 0..100 {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        if response.is_ok_and(|response| response.into_inner().status() == wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway's health for {service:?} never became {wanted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_plain_http_routes() {
    let system = System::start_with(Backend::Local, |config| {
        config.cors_allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let page = http.get(system.url()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("app.js") && html.contains("app.css"),
        "{html}"
    );
    for (path, content_type) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let asset = http
            .get(format!("{}{path}", system.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{path}");
        assert!(
            asset.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
    }
    assert_eq!(
        http.get(format!("{}/nope", system.url()))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // CORS: an allowed origin gets a preflight answer, others get none.
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/auth.v1.AuthService/Login", system.url()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// grpc-web's text mode (base64 frames, as older browser clients send), spoken by hand
/// over plain HTTP/1.1 so the framing itself is what is tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_text_mode_works_over_plain_http() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use prost::Message;
    use strongbox_proto::auth::v1::GetPublicKeysResponse;

    let system = System::start(Backend::Local).await;
    let call = |method: &'static str, message: Vec<u8>| {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        reqwest::Client::new()
            .post(format!("{}/auth.v1.AuthService/{method}", system.url()))
            .header("content-type", "application/grpc-web-text")
            .header("accept", "application/grpc-web-text")
            .header("x-grpc-web", "1")
            .body(STANDARD.encode(frame))
            .send()
    };
    // The body may be several base64 segments, each padded on its own.
    let parse_frames = |body: String| -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut segment = String::new();
        for group in body.as_bytes().chunks(4) {
            segment.push_str(std::str::from_utf8(group).unwrap());
            if group.contains(&b'=') {
                bytes.extend(STANDARD.decode(&segment).unwrap());
                segment.clear();
            }
        }
        bytes.extend(STANDARD.decode(&segment).unwrap());
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 5 <= bytes.len() {
            let length = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            frames.push((bytes[at], bytes[at + 5..at + 5 + length].to_vec()));
            at += 5 + length;
        }
        frames
    };

    let response = call("GetPublicKeys", Vec::new()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web-text")
    );
    let frames = parse_frames(response.text().await.unwrap());
    let (flag, message) = &frames[0];
    assert_eq!(*flag, 0, "a data frame first");
    let keys = GetPublicKeysResponse::decode(message.as_slice()).unwrap();
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(keys.keys[0].alg, "EdDSA");
    let (flag, trailers) = frames.last().unwrap();
    assert_eq!(*flag, 0x80, "trailers last");
    assert!(String::from_utf8_lossy(trailers).contains("grpc-status:0"));

    let login = LoginRequest {
        email: "nobody@example.com".into(),
        password: PASSWORD.into(),
    };
    // An error comes back "trailers-only": the status is in the response headers.
    let refused = call("Login", login.encode_to_vec()).await.unwrap();
    assert_eq!(refused.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    assert!(
        refused.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("incorrect")
    );
}

/// The README's grpcurl examples, run as they stand (with the gateway's real address),
/// so the README cannot drift from what the system does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_work() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("## grpcurl").expect("a grpcurl section")..];
    let start = section.find("```sh\n").expect("a shell block") + "```sh\n".len();
    let script = &section[start..start + section[start..].find("\n```").unwrap()];
    let system = System::start(Backend::Local).await;
    let script = script.replace("localhost:8000", &system.gateway.addr.to_string());
    let grpcurl_dir = strongbox_tests::tools::find("grpcurl")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        grpcurl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "auth.v1.AuthService",
        "you@example.com",
        "\"filename\": \"hello.txt\"",
        "\"size\": \"13\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
}

/// Call after call on the gateway's one connection to each upstream: every one succeeds,
/// however many came before. (h2 servers close a connection that has carried more than
/// 100 empty DATA frames; the gateway once forwarded one per call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_a_row_through_the_gateway_all_succeed() {
    let system = System::start(Backend::Local).await;
    let user = system.user("in-a-row").await;
    let mut auth = system.auth_client();
    let content = Bytes::from(pseudo_random(16 * 1024, 14));
    let rounds = 120;
    for round in 0..rounds {
        let declared = FileMetadata {
            size: Some(content.len() as u64),
            ..metadata(&format!("row-{round}.bin"), "")
        };
        if let Err(status) = user.upload(declared, vec![content.clone()]).await {
            panic!("upload {round} failed: {status:?}");
        }
        if let Err(status) = auth.me(user.req(MeRequest {})).await {
            panic!("Me {round} failed: {status:?}");
        }
    }
    assert_eq!(user.list_all().await.len(), rounds);
}
