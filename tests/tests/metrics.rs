//! Prometheus metrics, scraped from the real binaries: auth-service and storage-service
//! on their `METRICS_LISTEN`, the gateway on its own port, storage on a real S3 server.
//! After one upload, one download and one failed login through the gateway, every
//! counter moved by exactly what those calls did — at the gateway and at the service
//! behind it — and nothing counted a failure that did not happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest};
use strongbox_proto::storage::v1::FileMetadata;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::{new_account, with_bearer};
use strongbox_tests::metrics::{Change, Scrape};
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use strongbox_tests::storage::{BUCKET, User, metadata, pseudo_random};
use strongbox_tests::tools::workspace_binary;
use tonic::Code;

fn free_addr() -> SocketAddr {
    strongbox_tests::reserve_port(0)
        .local_addr()
        .expect("a free port")
}

fn environment(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_an_upload_a_download_and_a_failed_login_did() {
    let scratch = Scratch::new();
    let s3 = TestS3::start(&scratch);
    let (auth, auth_metrics, storage, storage_metrics, gateway) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    let _auth = ServiceProcess::start(
        &workspace_binary("auth-service"),
        &environment(&[
            ("AUTH_LISTEN", auth.to_string()),
            ("METRICS_LISTEN", auth_metrics.to_string()),
            ("DATA_DIR", scratch.join("auth").display().to_string()),
            ("BCRYPT_ROUNDS", "4".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]),
        scratch.path(),
    )
    .await;
    let _storage = ServiceProcess::start(
        &workspace_binary("storage-service"),
        &environment(&[
            ("STORAGE_LISTEN", storage.to_string()),
            ("METRICS_LISTEN", storage_metrics.to_string()),
            ("DATA_DIR", scratch.join("storage").display().to_string()),
            ("STORAGE_ENDPOINT", s3.endpoint()),
            ("STORAGE_ACCESS_KEY", ACCESS_KEY.to_owned()),
            ("STORAGE_SECRET_KEY", SECRET_KEY.to_owned()),
            ("STORAGE_BUCKET", BUCKET.to_owned()),
            ("AUTH_SERVICE_URL", format!("http://{auth}")),
            ("RUST_LOG", "warn".to_owned()),
        ]),
        scratch.path(),
    )
    .await;
    let _gateway = ServiceProcess::start(
        &workspace_binary("gateway"),
        &environment(&[
            ("GATEWAY_LISTEN", gateway.to_string()),
            ("AUTH_SERVICE_URL", format!("http://{auth}")),
            ("STORAGE_SERVICE_URL", format!("http://{storage}")),
            ("RUST_LOG", "warn".to_owned()),
        ]),
        scratch.path(),
    )
    .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .expect("a URL")
        .connect_lazy();
    let mut accounts = AuthServiceClient::new(channel.clone());
    let (email, password) = ("metrics@example.com", "a metrics password");
    let tokens = new_account(channel.clone(), email, password).await;
    let me = accounts
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .expect("Me")
        .into_inner();
    let user = User {
        storage: StorageServiceClient::new(channel),
        token: tokens.access_token,
        id: me.user.expect("a user").id.parse().expect("a UUID"),
    };

    let before = (
        Scrape::of(gateway).await,
        Scrape::of(auth_metrics).await,
        Scrape::of(storage_metrics).await,
    );
    const SIZE: usize = 3 * 1024 * 1024;
    let content = pseudo_random(SIZE, 7);
    let uploaded = user
        .upload(
            FileMetadata {
                size: Some(SIZE as u64),
                ..metadata("counted.bin", "")
            },
            vec![Bytes::from(content.clone())],
        )
        .await
        .expect("Upload");
    let (_, downloaded) = user.download(&uploaded.key).await.expect("Download");
    assert!(downloaded == content);
    let refused = accounts
        .login(LoginRequest {
            email: email.into(),
            password: "not the password".into(),
        })
        .await
        .expect_err("a wrong password");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let after = (
        Scrape::of(gateway).await,
        Scrape::of(auth_metrics).await,
        Scrape::of(storage_metrics).await,
    );

    let (gateway_moved, auth_moved, storage_moved) = (
        Change(&before.0, &after.0),
        Change(&before.1, &after.1),
        Change(&before.2, &after.2),
    );
    let call = |component: &'static str, method: &'static str, code: &'static str| {
        [("component", component), ("method", method), ("code", code)]
    };
    const CALLS: &str = "strongbox_grpc_calls_total";
    const UPLOAD: &str = "/storage.v1.StorageService/Upload";
    const DOWNLOAD: &str = "/storage.v1.StorageService/Download";
    const LOGIN: &str = "/auth.v1.AuthService/Login";

    // Each call counted once, with its status, at the gateway and behind it.
    for (component, moved) in [
        ("gateway", &gateway_moved),
        ("storage-service", &storage_moved),
    ] {
        for method in [UPLOAD, DOWNLOAD] {
            let calls = moved.of(CALLS, &call(component, method, "Ok"));
            assert_eq!(calls, 1.0, "{component} {method}");
        }
        let timed = moved.of(
            "strongbox_grpc_call_duration_seconds_count",
            &[("component", component), ("method", UPLOAD)],
        );
        assert_eq!(timed, 1.0, "{component}");
    }
    for (component, moved) in [("gateway", &gateway_moved), ("auth-service", &auth_moved)] {
        for (code, expected) in [("Unauthenticated", 1.0), ("Ok", 0.0)] {
            let calls = moved.of(CALLS, &call(component, LOGIN, code));
            assert_eq!(calls, expected, "{component} Login {code}");
        }
    }
    // The failed login checked one password; nothing was refused for load.
    assert_eq!(
        auth_moved.of("strongbox_password_hash_seconds_count", &[]),
        1.0
    );
    assert_eq!(auth_moved.of("strongbox_rate_limited_total", &[]), 0.0);
    assert_eq!(gateway_moved.of("strongbox_rate_limited_total", &[]), 0.0);

    // The file's bytes, in and out, and the S3 requests that carried them.
    assert_eq!(
        storage_moved.of("strongbox_upload_bytes_total", &[]),
        SIZE as f64
    );
    assert_eq!(
        storage_moved.of("strongbox_download_bytes_total", &[]),
        SIZE as f64
    );
    let writes: f64 = ["put", "create_multipart", "put_part", "complete_multipart"]
        .into_iter()
        .map(|operation| {
            storage_moved.of("strongbox_s3_requests_total", &[("operation", operation)])
        })
        .sum();
    assert!(writes >= 1.0, "the upload reached S3: {writes}");
    assert_eq!(
        storage_moved.of("strongbox_s3_requests_total", &[("operation", "get")]),
        1.0,
        "one GET for the download"
    );
    assert_eq!(
        storage_moved.of("strongbox_s3_request_errors_total", &[]),
        0.0
    );
    assert_eq!(after.2.value("strongbox_uploads_in_progress", &[]), 0.0);
    assert_eq!(
        after
            .0
            .value("strongbox_upstream_up", &[("upstream", "storage-service")]),
        1.0
    );
}
