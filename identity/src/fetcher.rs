//! Fetching an ID token from a metadata server, as a job container does on Cloud Run.

use std::time::Duration;

use anyhow::{Context, bail};
use url::Url;

/// The environment variable that points clients at another metadata server (`host[:port]`),
/// honoured by Google's client libraries; local backends set it in the container's environment.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

/// The metadata server's host on Google Cloud.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 512;

/// Fetches Google-style ID tokens from a metadata server at `host[:port]`.
#[derive(Debug, Clone)]
pub struct IdTokenFetcher {
    identity_url: Url,
    client: reqwest::Client,
}

impl IdTokenFetcher {
    /// A fetcher for the metadata server at `host` (`host[:port]`, the `GCE_METADATA_HOST`
    /// convention; an `http://` prefix is accepted too), with a 10 s timeout.
    pub fn new(host: &str) -> anyhow::Result<Self> {
        Self::with_timeout(host, DEFAULT_TIMEOUT)
    }

    /// A fetcher for Google's own metadata server.
    pub fn google() -> Self {
        Self::new(DEFAULT_METADATA_HOST).expect("the default metadata host is valid")
    }

    /// As [`IdTokenFetcher::new`], with a timeout for each whole request.
    pub fn with_timeout(host: &str, timeout: Duration) -> anyhow::Result<Self> {
        let host = host.trim();
        let host = host.strip_prefix("http://").unwrap_or(host);
        let host = host.trim_end_matches('/');
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            bail!("metadata host {host:?} is not of the form host[:port]");
        }
        let identity_url = Url::parse(&format!("http://{host}{IDENTITY_PATH}"))
            .with_context(|| format!("metadata host {host:?} is not of the form host[:port]"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The metadata server is link-local (or on loopback): never go through a proxy.
            .no_proxy()
            .build()
            .context("cannot build the metadata server's HTTP client")?;
        Ok(Self {
            identity_url,
            client,
        })
    }

    /// An ID token (a JWT, as text) for `audience`, e.g. the callback URL's origin.
    pub async fn fetch(&self, audience: &str) -> anyhow::Result<String> {
        if audience.is_empty() {
            bail!("cannot fetch an ID token for an empty audience");
        }
        let mut url = self.identity_url.clone();
        url.query_pairs_mut()
            .append_pair("audience", audience)
            .append_pair("format", "full");
        let response = self
            .client
            .get(url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .with_context(|| format!("cannot reach the metadata server at {}", self.host()))?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| {
            format!(
                "cannot read the metadata server's answer ({status}) from {}",
                self.host()
            )
        })?;
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            bail!(
                "the metadata server at {} answered {status} to an ID token request for {audience:?}: {}",
                self.host(),
                quote(&body)
            );
        }
        let token = body.trim();
        if token.split('.').count() != 3 {
            bail!(
                "the metadata server at {} answered with something that is not a JWT: {}",
                self.host(),
                quote(token)
            );
        }
        Ok(token.to_owned())
    }

    fn host(&self) -> String {
        let host = self.identity_url.host_str().unwrap_or_default();
        match self.identity_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }
}

fn quote(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(MAX_QUOTED_BODY) {
        Some((end, _)) => format!("{:?}…", &body[..end]),
        None => format!("{body:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_forms() {
        for host in [
            "127.0.0.1:8082",
            "http://127.0.0.1:8082",
            "http://127.0.0.1:8082/",
        ] {
            let fetcher = IdTokenFetcher::new(host).unwrap();
            assert_eq!(fetcher.host(), "127.0.0.1:8082");
        }
        assert_eq!(IdTokenFetcher::google().host(), DEFAULT_METADATA_HOST);
    }

    #[test]
    fn refuses_urls_with_paths_or_credentials() {
        for host in ["", "127.0.0.1:1/x", "user@host", "host?x"] {
            assert!(IdTokenFetcher::new(host).is_err(), "{host:?} was accepted");
        }
    }

    #[test]
    fn quotes_long_bodies_shortened() {
        assert_eq!(quote(" short "), "\"short\"");
        assert!(quote(&"x".repeat(2000)).len() < 600);
    }
}
