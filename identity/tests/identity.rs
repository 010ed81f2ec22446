//! ID tokens end to end over real HTTP on 127.0.0.1: the local issuer served as a metadata
//! server, tokens fetched from it (by our fetcher and by Python google-auth), and verified against
//! the served JWKS — and every way a token must be refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use runway_identity::{
    IdTokenFetcher, LocalIssuer, LocalIssuerConfig, TokenError, TokenVerifier, TrustedIssuer,
    VerifierConfig, metadata_router,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const AUDIENCE: &str = "http://127.0.0.1:8081";
const EMAIL: &str = "runner@runway.local";

/// A local issuer served on a free port, with its private key at hand for crafting tokens, and a
/// count of JWKS requests.
struct Fixture {
    addr: SocketAddr,
    issuer: Arc<LocalIssuer>,
    signing_key: EncodingKey,
    jwks_hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (issuer, signing_key) = issuer_with_key(&dir, &format!("http://{addr}"), "key.pem");
        let issuer = Arc::new(issuer);
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let app = metadata_router(issuer.clone()).layer(middleware::from_fn_with_state(
            jwks_hits.clone(),
            count_jwks,
        ));
        spawn(listener, app);
        Self {
            addr,
            issuer,
            signing_key,
            jwks_hits,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn trusted(&self) -> TrustedIssuer {
        TrustedIssuer {
            issuer: self.issuer.issuer().to_owned(),
            jwks_uri: self.issuer.jwks_uri(),
        }
    }

    fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(VerifierConfig {
            trusted_issuers: vec![self.trusted()],
            audience: AUDIENCE.to_owned(),
            allowed_emails: vec![EMAIL.to_owned()],
        })
        .unwrap()
    }

    /// Claims as the issuer would issue them, for tests to spoil one at a time.
    fn claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.issuer.issuer(),
            "aud": AUDIENCE,
            "sub": "112233445566778899001",
            "azp": "112233445566778899001",
            "email": EMAIL,
            "email_verified": true,
            "iat": now,
            "exp": now + 3600,
        })
    }

    fn sign(&self, claims: &Value) -> String {
        sign_rs256(&self.signing_key, self.issuer.kid(), claims)
    }

    fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

fn config(issuer_url: &str) -> LocalIssuerConfig {
    LocalIssuerConfig {
        issuer: issuer_url.to_owned(),
        email: EMAIL.to_owned(),
        ..LocalIssuerConfig::default()
    }
}

/// A local issuer whose key is created in `dir`, and that key read back for signing.
fn issuer_with_key(
    dir: &tempfile::TempDir,
    issuer_url: &str,
    file: &str,
) -> (LocalIssuer, EncodingKey) {
    let path = dir.path().join(file);
    let issuer = LocalIssuer::load_or_create(&path, config(issuer_url)).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let der = key.to_pkcs1_der().unwrap();
    (issuer, EncodingKey::from_rsa_der(der.as_bytes()))
}

fn sign_rs256(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn spawn(listener: TcpListener, app: Router) {
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

async fn count_jwks(
    State(hits): State<Arc<AtomicUsize>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/jwks.json" {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    next.run(request).await
}

#[tokio::test]
async fn a_token_fetched_from_the_metadata_server_verifies() {
    let fixture = Fixture::start().await;
    let fetcher = IdTokenFetcher::new(&fixture.addr.to_string()).unwrap();

    let token = fetcher.fetch(AUDIENCE).await.unwrap();
    let verified = fixture
        .verifier()
        .verify(&format!("Bearer {token}"))
        .await
        .unwrap();

    assert_eq!(verified.email, EMAIL);
    assert_eq!(verified.issuer, fixture.issuer.issuer());
    assert_eq!(verified.sub.len(), 21);
    let lifetime = verified.exp - now();
    assert!(
        (3590..=3600).contains(&lifetime),
        "exp is {lifetime} s away"
    );
    // Crafted tokens go through the same path: the baseline the rejections below spoil.
    let crafted = fixture.sign(&fixture.claims());
    assert_eq!(
        fixture
            .verifier()
            .verify_token(&crafted)
            .await
            .unwrap()
            .email,
        EMAIL
    );
}

#[tokio::test]
async fn the_fetcher_reports_the_metadata_servers_refusal() {
    let fixture = Fixture::start().await;
    let fetcher = IdTokenFetcher::new(&fixture.addr.to_string()).unwrap();
    assert!(fetcher.fetch("").await.is_err());

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = IdTokenFetcher::with_timeout(&closed.to_string(), Duration::from_secs(2))
        .unwrap()
        .fetch(AUDIENCE)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains(&closed.to_string()),
        "{error:#}"
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_for_its_own_reason() {
    let fixture = Fixture::start().await;
    let verifier = fixture.verifier();
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_key) = issuer_with_key(&other_dir, fixture.issuer.issuer(), "other.pem");
    let public_pem = {
        let pem = std::fs::read_to_string(fixture._dir.path().join("key.pem")).unwrap();
        rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
            .unwrap()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    };
    let kid = fixture.issuer.kid();
    let with = |patch: Value| {
        let mut claims = fixture.claims();
        for (name, value) in patch.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        fixture.sign(&claims)
    };
    let now = now();

    let cases: Vec<(&str, String, Expected)> = vec![
        (
            "signed by another key under the same kid",
            sign_rs256(&other_key, kid, &fixture.claims()),
            |e| *e == TokenError::BadSignature,
        ),
        (
            "expired",
            with(json!({"iat": now - 7200, "exp": now - 120})),
            |e| *e == TokenError::Expired,
        ),
        (
            "issued in the future",
            with(json!({"iat": now + 600, "exp": now + 4200})),
            |e| *e == TokenError::NotYetValid,
        ),
        (
            "for another audience",
            with(json!({"aud": "http://127.0.0.1:9999"})),
            |e| matches!(e, TokenError::WrongAudience { .. }),
        ),
        (
            "for a list of audiences",
            with(json!({"aud": [AUDIENCE, "http://other"]})),
            |e| matches!(e, TokenError::WrongAudience { .. }),
        ),
        (
            "from an unknown issuer",
            with(json!({"iss": "https://issuer.invalid"})),
            |e| *e == TokenError::UnknownIssuer("https://issuer.invalid".to_owned()),
        ),
        (
            "for an email not on the allow-list",
            with(json!({"email": "intruder@runway.local"})),
            |e| *e == TokenError::EmailNotAllowed("intruder@runway.local".to_owned()),
        ),
        (
            "with email_verified false",
            with(json!({"email_verified": false})),
            |e| *e == TokenError::EmailNotVerified(EMAIL.to_owned()),
        ),
        (
            "with email_verified \"true\" (a string)",
            with(json!({"email_verified": "true"})),
            |e| *e == TokenError::EmailNotVerified(EMAIL.to_owned()),
        ),
        (
            "without email_verified",
            with(json!({"email_verified": null})),
            |e| *e == TokenError::EmailNotVerified(EMAIL.to_owned()),
        ),
        ("without email", with(json!({"email": null})), |e| {
            *e == TokenError::MissingEmail
        }),
        ("without exp", with(json!({"exp": null})), |e| {
            matches!(e, TokenError::Malformed(_))
        }),
        ("without aud", with(json!({"aud": null})), |e| {
            matches!(e, TokenError::Malformed(_))
        }),
        (
            "HS256 with the public key as the secret",
            {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(kid.to_owned());
                let key = EncodingKey::from_secret(public_pem.as_bytes());
                jsonwebtoken::encode(&header, &fixture.claims(), &key).unwrap()
            },
            |e| *e == TokenError::UnsupportedAlgorithm("HS256".to_owned()),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": kid, "typ": "JWT"})),
                b64(&fixture.claims())
            ),
            |e| *e == TokenError::UnsupportedAlgorithm("none".to_owned()),
        ),
        (
            "a valid token with its signature cut off",
            {
                let token = fixture.sign(&fixture.claims());
                format!("{}.", &token[..token.rfind('.').unwrap()])
            },
            |e| matches!(e, TokenError::BadSignature | TokenError::Malformed(_)),
        ),
        ("garbage", "this is not a token".to_owned(), |e| {
            matches!(e, TokenError::Malformed(_))
        }),
    ];

    for (what, token, expected) in cases {
        let error = verifier
            .verify_token(&token)
            .await
            .expect_err(&format!("a token {what} was accepted"));
        assert!(
            expected(&error),
            "a token {what} was refused with {error:?}"
        );
        assert!(!error.is_unavailable(), "{what}: {error:?}");
    }

    let good = fixture.sign(&fixture.claims());
    for header in [
        "",
        "Bearer",
        "Bearer   ",
        "Basic dXNlcjpwYXNz",
        good.as_str(),
    ] {
        assert_eq!(
            verifier.verify(header).await,
            Err(TokenError::MissingBearer),
            "{header:?}"
        );
    }
    assert!(verifier.verify(&format!("bearer {good}")).await.is_ok());
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_verifier_hammer_the_jwks_endpoint() {
    let fixture = Fixture::start().await;
    let verifier = fixture.verifier();
    let forged: Vec<String> = (0..40)
        .map(|i| {
            sign_rs256(
                &fixture.signing_key,
                &format!("forged-{i}"),
                &fixture.claims(),
            )
        })
        .collect();

    let results = futures::future::join_all(forged.iter().map(|t| verifier.verify_token(t))).await;
    for result in &results {
        assert!(
            matches!(result, Err(TokenError::UnknownKid { .. })),
            "{result:?}"
        );
    }
    // The first miss fetched the keys; the other 39 fell within the cool-down.
    assert_eq!(fixture.jwks_hits(), 1);

    // The keys that one fetch brought serve genuine tokens with no further fetch.
    let good = fixture.sign(&fixture.claims());
    verifier.verify_token(&good).await.unwrap();
    for token in &forged[..5] {
        assert!(verifier.verify_token(token).await.is_err());
    }
    assert_eq!(fixture.jwks_hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_verifications_succeed_with_one_fetch() {
    let fixture = Fixture::start().await;
    let verifier = fixture.verifier();
    let token = fixture.issuer.issue(AUDIENCE);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let verifier = verifier.clone();
        let token = token.clone();
        tasks.spawn(async move { verifier.verify_token(&token).await });
    }
    let mut verified = 0;
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().email, EMAIL);
        verified += 1;
    }

    assert_eq!(verified, 64);
    assert_eq!(fixture.jwks_hits(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_after_the_cool_down() {
    // An issuer whose published key set the test controls, with keys from two local issuers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = issuer_with_key(&dir, &issuer_url, "old.pem");
    let (new, _) = issuer_with_key(&dir, &issuer_url, "new.pem");
    assert_ne!(old.kid(), new.kid());
    let published = Arc::new(Mutex::new(old.jwks()));
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/jwks.json",
            axum::routing::get({
                let published = published.clone();
                move || async move { axum::Json(published.lock().unwrap().clone()) }
            }),
        )
        .layer(middleware::from_fn_with_state(hits.clone(), count_jwks));
    spawn(listener, app);
    let cool_down = Duration::from_millis(200);
    let verifier = TokenVerifier::new(VerifierConfig {
        trusted_issuers: vec![TrustedIssuer {
            issuer: issuer_url.clone(),
            jwks_uri: format!("{issuer_url}/jwks.json"),
        }],
        audience: AUDIENCE.to_owned(),
        allowed_emails: vec![EMAIL.to_owned()],
    })
    .unwrap()
    .with_refresh_cooldown(cool_down);

    verifier.verify_token(&old.issue(AUDIENCE)).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Rotate: both keys published, as issuers do while tokens of the old key are still valid.
    let both = json!({"keys": [old.jwks()["keys"][0], new.jwks()["keys"][0]]});
    *published.lock().unwrap() = both;
    tokio::time::sleep(cool_down + Duration::from_millis(50)).await;

    let verified = verifier.verify_token(&new.issue(AUDIENCE)).await.unwrap();
    assert_eq!(verified.issuer, issuer_url);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    verifier.verify_token(&old.issue(AUDIENCE)).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_keys_are_a_temporary_error() {
    let fixture = Fixture::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for jwks_uri in [
        fixture.url("/no-such-jwks.json"),
        format!("http://{closed}/jwks.json"),
    ] {
        let verifier = TokenVerifier::new(VerifierConfig {
            trusted_issuers: vec![TrustedIssuer {
                issuer: fixture.issuer.issuer().to_owned(),
                jwks_uri: jwks_uri.clone(),
            }],
            audience: AUDIENCE.to_owned(),
            allowed_emails: vec![EMAIL.to_owned()],
        })
        .unwrap();

        let error = verifier
            .verify_token(&fixture.issuer.issue(AUDIENCE))
            .await
            .unwrap_err();

        assert!(
            matches!(error, TokenError::JwksUnavailable { .. }),
            "{jwks_uri}: {error:?}"
        );
        assert!(error.is_unavailable());
    }
}

#[tokio::test]
async fn metadata_routes_behave_like_googles() {
    let fixture = Fixture::start().await;
    let client = reqwest::Client::new();
    let get = |path: &str, flavor: bool| {
        let request = client.get(fixture.url(path));
        if flavor {
            request.header("Metadata-Flavor", "Google")
        } else {
            request
        }
    };
    let account = "/computeMetadata/v1/instance/service-accounts/default";

    // Without the header, every metadata route is refused, with a reason and the header echoed.
    for path in [
        "/".to_owned(),
        format!("{account}/?recursive=true"),
        format!("{account}/email"),
        format!("{account}/identity?audience={AUDIENCE}&format=full"),
    ] {
        let response = get(&path, false).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(response.headers()["metadata-flavor"], "Google", "{path}");
        assert!(response.text().await.unwrap().contains("Metadata-Flavor"));
    }
    let proxied = get("/", true)
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 403);

    let ping = get("/", true).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.headers()["metadata-flavor"], "Google");

    let info = get(&format!("{account}/?recursive=true"), true)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    assert_eq!(info.headers()["content-type"], "application/json");
    let info: Value = serde_json::from_str(&info.text().await.unwrap()).unwrap();
    assert_eq!(info["email"], EMAIL);
    assert_eq!(info["aliases"], json!(["default"]));
    assert!(info["scopes"].as_array().is_some_and(|s| !s.is_empty()));

    let email = get(&format!("{account}/email"), true).send().await.unwrap();
    assert_eq!(email.text().await.unwrap(), EMAIL);
    let by_email = get(
        &format!("/computeMetadata/v1/instance/service-accounts/{EMAIL}/email"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(by_email.status(), 200);
    let other = get(
        "/computeMetadata/v1/instance/service-accounts/someone@else/email",
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(other.status(), 404);

    for path in [
        format!("{account}/identity"),
        format!("{account}/identity?audience=&format=full"),
    ] {
        let response = get(&path, true).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["metadata-flavor"], "Google");
        assert!(response.text().await.unwrap().contains("audience"));
    }

    // The keys and the discovery document need no header.
    let jwks: Value = json_body(get("/jwks.json", false)).await;
    assert_eq!(jwks["keys"][0]["kid"], fixture.issuer.kid());
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    let discovery = json_body(get("/.well-known/openid-configuration", false)).await;
    assert_eq!(discovery["issuer"], fixture.issuer.issuer());
    assert_eq!(discovery["jwks_uri"], fixture.issuer.jwks_uri());
}

/// What a rejection case expects of the error.
type Expected = fn(&TokenError) -> bool;

async fn json_body(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

/// Validibot's images fetch their token with Python google-auth, pointed at the launcher by
/// `GCE_METADATA_HOST`/`GCE_METADATA_IP`: that must work unchanged, and its token must verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_google_auth_fetches_a_token_that_verifies() {
    let python = runway_tests::python();
    let fixture = Fixture::start().await;
    let host = fixture.addr.to_string();
    let script = "import sys, google.auth.transport.requests, google.oauth2.id_token\n\
                  request = google.auth.transport.requests.Request()\n\
                  print(google.oauth2.id_token.fetch_id_token(request, sys.argv[1]))\n";

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, AUDIENCE])
            .env("GCE_METADATA_HOST", &host)
            .env("GCE_METADATA_IP", &host)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("GCE_METADATA_ROOT")
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "google-auth failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();

    let verified = fixture.verifier().verify_token(token.trim()).await.unwrap();

    assert_eq!(verified.email, EMAIL);
}

/// A JWKS endpoint serving `jwks` with `cache_control`, counting its hits.
async fn jwks_with_cache_control(
    jwks: Value,
    cache_control: &'static str,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { ([("cache-control", cache_control)], axum::Json(jwks)) }
            }),
        )
        .layer(middleware::from_fn_with_state(hits.clone(), count_jwks));
    spawn(listener, app);
    (url, hits)
}

#[tokio::test]
async fn google_tokens_verify_under_either_issuer_spelling() {
    let fixture = Fixture::start().await;
    let verifier = TokenVerifier::new(VerifierConfig {
        trusted_issuers: vec![TrustedIssuer {
            issuer: runway_identity::GOOGLE_ISSUER.to_owned(),
            jwks_uri: fixture.issuer.jwks_uri(),
        }],
        audience: AUDIENCE.to_owned(),
        allowed_emails: vec![EMAIL.to_owned()],
    })
    .unwrap();
    for iss in ["https://accounts.google.com", "accounts.google.com"] {
        let mut claims = fixture.claims();
        claims["iss"] = json!(iss);
        let verified = verifier.verify_token(&fixture.sign(&claims)).await.unwrap();
        assert_eq!(verified.issuer, iss);
        assert_eq!(verified.email, EMAIL);
    }
    // Both spellings share one key cache: one fetch in all.
    assert_eq!(fixture.jwks_hits(), 1);
    let mut claims = fixture.claims();
    claims["iss"] = json!("http://accounts.google.com");
    assert!(matches!(
        verifier.verify_token(&fixture.sign(&claims)).await,
        Err(TokenError::UnknownIssuer(_))
    ));
}

#[tokio::test]
async fn the_jwks_cache_follows_cache_control_max_age() {
    let fixture = Fixture::start().await;
    let verifier_for = |jwks_uri: String| {
        TokenVerifier::new(VerifierConfig {
            trusted_issuers: vec![TrustedIssuer {
                issuer: fixture.issuer.issuer().to_owned(),
                jwks_uri,
            }],
            audience: AUDIENCE.to_owned(),
            allowed_emails: vec![EMAIL.to_owned()],
        })
        .unwrap()
        // No cool-down, so that only the cache lifetime decides when keys are fetched again.
        .with_refresh_cooldown(Duration::ZERO)
    };
    let token = fixture.sign(&fixture.claims());

    // Keys Google says to keep for hours are not fetched again for each token.
    let (uri, hits) = jwks_with_cache_control(
        fixture.issuer.jwks(),
        "public, max-age=19800, must-revalidate",
    )
    .await;
    let verifier = verifier_for(uri);
    for _ in 0..3 {
        verifier.verify_token(&token).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Keys that may not be cached are fetched again when next needed.
    let (uri, hits) = jwks_with_cache_control(fixture.issuer.jwks(), "max-age=0").await;
    let verifier = verifier_for(uri);
    for _ in 0..3 {
        verifier.verify_token(&token).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let (uri, hits) = jwks_with_cache_control(fixture.issuer.jwks(), "no-store").await;
    let verifier = verifier_for(uri);
    verifier.verify_token(&token).await.unwrap();
    verifier.verify_token(&token).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
