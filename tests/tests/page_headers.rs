//! The upload page's security headers, as a browser receives them from the real gateway:
//! a Content-Security-Policy that allows only the page's own script, styles and origin
//! and forbids framing, plus nosniff, no referrer and `X-Frame-Options`. And the page
//! itself needs nothing that policy forbids: no inline script or style.

use std::time::Duration;

use gateway::page::CONTENT_SECURITY_POLICY;
use http::header;

/// A gateway alone: the page needs no upstream (they are dead addresses here).
async fn start_gateway() -> (String, tokio::sync::oneshot::Sender<()>) {
    let config =
        gateway::Config::for_upstreams("http://127.0.0.1:1".into(), "http://127.0.0.1:1".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

fn directives(policy: &str) -> Vec<(String, Vec<String>)> {
    policy
        .split(';')
        .filter_map(|directive| {
            let mut words = directive.split_whitespace().map(str::to_owned);
            Some((words.next()?, words.collect()))
        })
        .collect()
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let (url, _stop) = start_gateway().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for path in ["/", "/app.js", "/app.css"] {
        let response = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        let value = |name: header::HeaderName| {
            headers
                .get(&name)
                .unwrap_or_else(|| panic!("{path} has no {name}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            value(header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(value(header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(value(header::REFERRER_POLICY), "no-referrer");
    }

    let policy = directives(CONTENT_SECURITY_POLICY);
    let sources = |name: &str| {
        policy
            .iter()
            .find(|(directive, _)| directive == name)
            .map(|(_, sources)| sources.clone())
            .unwrap_or_else(|| panic!("the policy has no {name}"))
    };
    assert_eq!(sources("default-src"), ["'none'"]);
    assert_eq!(sources("script-src"), ["'self'"], "scripts from self only");
    assert_eq!(sources("frame-ancestors"), ["'none'"]);
    assert_eq!(
        sources("connect-src"),
        ["'self'"],
        "grpc-web to the page's origin"
    );
    assert!(
        !CONTENT_SECURITY_POLICY.contains("unsafe-"),
        "no inline script, style or eval"
    );
}

#[tokio::test]
async fn the_page_has_no_inline_script_or_style_for_the_policy_to_block() {
    let (url, _stop) = start_gateway().await;
    let html = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lower = html.to_lowercase();
    for script in lower.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        let body = &script[script.find('>').unwrap() + 1..script.find("</script").unwrap()];
        assert!(
            tag.contains("src=") && body.trim().is_empty(),
            "an inline script: <script{tag}>"
        );
    }
    assert!(!lower.contains("<style"), "an inline <style> element");
    assert!(!lower.contains(" style="), "an inline style attribute");
    for tag in lower.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        let handler = tag
            .split_whitespace()
            .skip(1)
            .find(|attribute| attribute.starts_with("on") && attribute.contains('='));
        assert!(handler.is_none(), "an inline event handler: <{tag}>");
    }
}
