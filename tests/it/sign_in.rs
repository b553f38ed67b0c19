//! Signing in to the console and its same-origin check, over plain HTTP: where the browser is
//! sent after sign-in, whatever `next` says, and which `Origin` a state-changing form may come
//! from, directly and behind a proxy that rewrites `Host`. (The browser half of the redirect
//! is in `console.rs`.)

use reqwest::Url;

use crate::support::app::{TOKEN, TestApp};
use crate::support::console::{ConsoleSession, client};

/// Where a `Location` leads from the console at `base`: the origin it lands on and its path.
fn landing(base: &str, location: &str) -> (String, String) {
    let resolved = Url::parse(base)
        .and_then(|b| b.join(location))
        .unwrap_or_else(|e| panic!("Location {location:?} does not resolve: {e}"));
    (
        resolved.origin().ascii_serialization(),
        resolved.path().to_owned(),
    )
}

/// Whatever `next` says, sign-in answers a redirect to a path of the console's own — never a
/// header browsers read as another site, never a 500 after the session was made.
#[tokio::test]
async fn sign_in_redirects_only_inside_the_console_whatever_next_says() {
    let app = TestApp::spawn().await;
    let base_origin = Url::parse(&app.base)
        .expect("base")
        .origin()
        .ascii_serialization();
    let hostile = [
        "/\t/evil.example/",
        "/%09/evil.example/",
        "/%2509/evil.example/",
        "/\r\nSet-Cookie: injected=1",
        "/%0d%0aSet-Cookie:%20injected=1",
        "/\n/evil.example",
        "\t//evil.example",
        " //evil.example",
        "/ /evil.example",
        "/\u{a0}/evil.example",
        "/\u{2028}/evil.example",
        "/\0/evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/%5Cevil.example",
        "/%5c%5cevil.example",
        "/%2F%2Fevil.example",
        "/%2f/evil.example",
        "%2F%2Fevil.example",
        "https://evil.example/",
        "HTTPS://evil.example/console",
        "http:evil.example",
        "//evil.example/console/devices",
        "javascript:alert(1)",
        " JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "evil.example",
        "/console/../../evil.example",
        "/console/%2e%2e/%2e%2e//evil.example",
        "/devices",
        "/docs",
        "",
    ];
    let client = client();
    for next in hostile {
        let response = client
            .post(app.url("/console/sign-in"))
            .form(&[("token", TOKEN), ("next", next)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "next={next:?}");
        assert!(
            response.headers().contains_key("set-cookie"),
            "next={next:?}: signed in"
        );
        let location = response.headers()["location"]
            .to_str()
            .unwrap_or_else(|_| panic!("next={next:?}: Location is not visible ASCII"))
            .to_owned();
        assert!(
            location.chars().all(|c| c.is_ascii_graphic() && c != '\\'),
            "next={next:?}: Location {location:?} holds whitespace, a control or a backslash"
        );
        assert!(
            location.starts_with('/') && !location.starts_with("//"),
            "next={next:?}: Location {location:?} is not a path of this site"
        );
        let (origin, path) = landing(&app.base, &location);
        assert_eq!(origin, base_origin, "next={next:?}: Location {location:?}");
        assert_eq!(
            path, "/",
            "next={next:?}: a refused next falls back to the console's home, not {location:?}"
        );
    }

    // A genuine path of the console, with its query, is kept as it was.
    for next in [
        "/",
        "/console/devices",
        "/console/devices?tag=lab&cursor=AZNrMj5Pelg",
        "/console/runs/01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d?stdout=65536",
    ] {
        let response = client
            .post(app.url("/console/sign-in"))
            .form(&[("token", TOKEN), ("next", next)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "next={next:?}");
        assert_eq!(response.headers()["location"], next);
    }

    // The sign-in page carries only a safe `next` into its form.
    let page = client
        .get(format!(
            "{}/console/sign-in?next=%2F%09%2Fevil.example%2F",
            app.base
        ))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains(r#"name="next" value="/""#),
        "the page's next is the home page: {html}"
    );
}

/// Behind a proxy that rewrites `Host`, a form from the public origin is accepted: the check
/// compares `Origin` with what `X-Forwarded-Host`/`X-Forwarded-Proto` or `Forwarded` say the
/// browser asked for. A foreign origin is refused whatever those headers say.
#[tokio::test]
async fn forms_behind_a_proxy_that_rewrites_host_are_accepted_and_foreign_origins_refused() {
    let app = TestApp::spawn().await;
    let session = ConsoleSession::open(&app).await;
    let proxied = [("host", "internal:8080")];
    let x_forwarded = [
        ("host", "internal:8080"),
        ("x-forwarded-host", "public.example"),
        ("x-forwarded-proto", "https"),
    ];
    let forwarded = [
        ("host", "internal:8080"),
        (
            "forwarded",
            "for=192.0.2.60;proto=https;host=public.example",
        ),
    ];
    let mut n = 0;
    let mut post = async |headers: &[(&str, &str)], origin: &str| {
        n += 1;
        let mut all = headers.to_vec();
        all.push(("origin", origin));
        session
            .create_credential(&app, &format!("c{n}"), &all)
            .await
    };
    assert_eq!(
        post(&x_forwarded, "https://public.example").await,
        303,
        "X-Forwarded-Host and -Proto name the public origin"
    );
    assert_eq!(
        post(&forwarded, "https://public.example").await,
        303,
        "Forwarded names the public origin"
    );
    assert_eq!(
        post(&proxied, "http://internal:8080").await,
        303,
        "without forwarded headers, Host is the origin"
    );
    for (headers, origin, why) in [
        (
            &proxied[..],
            "https://public.example",
            "a rewritten Host and no forwarded headers",
        ),
        (
            &x_forwarded[..],
            "https://evil.example",
            "another site behind the proxy",
        ),
        (
            &x_forwarded[..],
            "http://public.example",
            "the public host over another scheme",
        ),
        (&forwarded[..], "https://evil.example", "another site"),
        (&proxied[..], "null", "an opaque origin"),
        (
            &[
                ("host", "internal:8080"),
                ("x-forwarded-host", "evil.example"),
            ][..],
            "https://public.example",
            "forwarded headers naming another host",
        ),
    ] {
        assert_eq!(post(headers, origin).await, 403, "{why}");
    }
}

/// With `NETCRON_PUBLIC_URL` set, its origin is the only one a form may come from: not the
/// `Host` the request arrived with, nor what forwarded headers claim.
#[tokio::test]
async fn with_a_public_url_only_its_origin_may_post_forms() {
    let app = TestApp::spawn_with(|s| {
        s.public_url = Some("https://netcron.example:8443/".parse().expect("url"));
    })
    .await;
    let session = ConsoleSession::open(&app).await;
    let host = Url::parse(&app.base).expect("base");
    let own = host.origin().ascii_serialization();
    let mut n = 0;
    let mut post = async |origin: &str, extra: &[(&str, &str)]| {
        n += 1;
        let mut headers = extra.to_vec();
        headers.push(("origin", origin));
        session
            .create_credential(&app, &format!("p{n}"), &headers)
            .await
    };
    assert_eq!(post("https://netcron.example:8443", &[]).await, 303);
    for (origin, extra, why) in [
        (own.as_str(), &[][..], "the Host the request came to"),
        ("https://netcron.example", &[][..], "another port"),
        ("http://netcron.example:8443", &[][..], "another scheme"),
        ("https://evil.example", &[][..], "another site"),
        (
            "https://evil.example",
            &[
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
            ][..],
            "forwarded headers do not override the public URL",
        ),
    ] {
        assert_eq!(post(origin, extra).await, 403, "{why}");
    }
}
