//! `gs://`: Google Cloud Storage through the official client (`google-cloud-storage`).
//!
//! Writes are create-only with `ifGenerationMatch=0`. A body is buffered up to
//! [`SINGLE_SHOT_LIMIT`] and, if it ends by then, sent as one multipart request (one round trip,
//! and the only upload kind fake-gcs-server applies the precondition to); longer bodies
//! continue as a resumable upload whose memory is bounded by the client's upload buffer. The
//! sha256 is computed as the client pulls the bytes; a body error or a size/sha256 mismatch is
//! raised before the final chunk is sent, so the upload is never finalized and nothing appears
//! at the key.
//!
//! Metadata (head, list) goes through the JSON API with the same credentials, because the
//! client's metadata calls are gRPC-only and the emulator does not speak `google.storage.v2`.
//! Retries are bounded: the client's default retries for minutes.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;
use google_cloud_storage::streaming_source::{Seek, SizeHint, StreamingSource};

use super::{
    Body, BodyDigest, ByteStream, Expected, GcsOptions, ObjectKey, ObjectMeta, ObjectStore,
    PutReceipt, StorageError, StorageUri, limit_stream,
};

/// Bodies that end within this many bytes are uploaded in one request; longer ones resumably.
/// Also the client's resumable threshold, so that the client agrees with this choice.
pub const SINGLE_SHOT_LIMIT: usize = 16 * 1024 * 1024;

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const MAX_ATTEMPTS: u32 = 5;
const MAX_RETRY_TIME: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials that send one replaceable bearer token (an attempt-scoped token).
#[derive(Debug)]
struct BearerToken(crate::capability::AttemptToken);

impl google_cloud_auth::credentials::CredentialsProvider for BearerToken {
    async fn headers(
        &self,
        _extensions: http::Extensions,
    ) -> Result<CacheableResource<http::HeaderMap>, google_cloud_auth::errors::CredentialsError>
    {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", self.0.secret()))
            .map_err(|e| google_cloud_auth::errors::CredentialsError::from_source(false, e))?;
        value.set_sensitive(true);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(CacheableResource::New {
            entity_tag: google_cloud_auth::credentials::EntityTag::new(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}

/// An object store in a GCS bucket, optionally under a prefix.
#[derive(Debug)]
pub struct GcsStore {
    base: StorageUri,
    client: Storage,
    credentials: Credentials,
    http: reqwest::Client,
    endpoint: String,
}

impl GcsStore {
    /// Builds the clients for `base` (a `gs://` URI). Makes no request: a missing bucket or bad
    /// credentials show up on first use.
    pub async fn open(base: StorageUri, options: &GcsOptions) -> Result<Self, StorageError> {
        let uri = base.to_string();
        let backend = |e: Box<dyn std::error::Error + Send + Sync>| StorageError::Backend {
            uri: uri.clone(),
            source: e,
        };
        let credentials = if let Some(token) = &options.token {
            Credentials::from(BearerToken(token.clone()))
        } else if options.anonymous {
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| backend(e.into()))?
        };
        let endpoint = options
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let mut builder = Storage::builder()
            .with_credentials(credentials.clone())
            .with_retry_policy(
                RetryableErrors
                    .with_attempt_limit(MAX_ATTEMPTS)
                    .with_time_limit(MAX_RETRY_TIME),
            )
            .with_resumable_upload_threshold(SINGLE_SHOT_LIMIT);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let client = builder.build().await.map_err(|e| backend(e.into()))?;
        let http = reqwest::Client::builder()
            .timeout(METADATA_TIMEOUT)
            .build()
            .map_err(|e| backend(e.into()))?;
        Ok(Self {
            base,
            client,
            credentials,
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
        })
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.base.bucket())
    }

    /// A JSON API URL: `{endpoint}/storage/v1/b/{bucket}/o[/{object}]`, each part escaped.
    fn json_url(&self, object: Option<&str>) -> Result<url::Url, StorageError> {
        let mut url = url::Url::parse(&self.endpoint).map_err(|e| StorageError::InvalidUri {
            uri: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| StorageError::InvalidUri {
                    uri: self.endpoint.clone(),
                    reason: "the endpoint cannot be a base URL".to_owned(),
                })?;
            segments
                .pop_if_empty()
                .extend(["storage", "v1", "b", self.base.bucket(), "o"]);
            if let Some(object) = object {
                segments.push(object);
            }
        }
        Ok(url)
    }

    /// Sends a JSON API GET with the store's credentials; `None` on 404.
    async fn json_get(
        &self,
        url: url::Url,
        uri: &str,
    ) -> Result<Option<serde_json::Value>, StorageError> {
        self.json_request(reqwest::Method::GET, url, uri).await
    }

    /// One JSON API request with the store's credentials; `None` for a 404, `Null` for an
    /// empty answer.
    async fn json_request(
        &self,
        method: reqwest::Method,
        url: url::Url,
        uri: &str,
    ) -> Result<Option<serde_json::Value>, StorageError> {
        let backend = |e: Box<dyn std::error::Error + Send + Sync>| StorageError::Backend {
            uri: uri.to_owned(),
            source: e,
        };
        let headers = match self
            .credentials
            .headers(Default::default())
            .await
            .map_err(|e| backend(e.into()))?
        {
            CacheableResource::New { data, .. } => data,
            CacheableResource::NotModified => {
                return Err(backend("credentials returned no headers".into()));
            }
        };
        let response = self
            .http
            .request(method, url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| backend(e.into()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(|e| backend(e.into()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(backend(format!("HTTP {status}: {text}").into()));
        }
        if body.is_empty() {
            return Ok(Some(serde_json::Value::Null));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| backend(e.into()))
    }

    fn map_error(&self, uri: &str, e: google_cloud_storage::Error) -> StorageError {
        use google_cloud_gax::error::rpc::Code;
        let code = e.status().map(|s| s.code);
        match (e.http_status_code(), code) {
            (Some(404), _) | (_, Some(Code::NotFound)) => StorageError::NotFound {
                uri: uri.to_owned(),
            },
            (Some(412), _) | (_, Some(Code::FailedPrecondition)) => StorageError::AlreadyExists {
                uri: uri.to_owned(),
            },
            _ => StorageError::Backend {
                uri: uri.to_owned(),
                source: e.into(),
            },
        }
    }
}

/// A body that ended within [`SINGLE_SHOT_LIMIT`]: already in memory, so it can be replayed
/// from any offset when the client retries, and its exact size selects a single-shot upload.
struct BufferedSource {
    chunks: Vec<Bytes>,
    size: u64,
    /// The next chunk to send, and how many of its bytes were already sent.
    next: usize,
    skip: usize,
}

impl StreamingSource for BufferedSource {
    type Error = io::Error;

    async fn next(&mut self) -> Option<Result<Bytes, io::Error>> {
        let chunk = self.chunks.get(self.next)?.slice(self.skip..);
        self.next += 1;
        self.skip = 0;
        Some(Ok(chunk))
    }

    async fn size_hint(&self) -> Result<SizeHint, io::Error> {
        Ok(SizeHint::with_exact(self.size))
    }
}

impl Seek for BufferedSource {
    type Error = io::Error;

    async fn seek(&mut self, offset: u64) -> Result<(), io::Error> {
        let mut remaining = offset;
        for (index, chunk) in self.chunks.iter().enumerate() {
            let len = chunk.len() as u64;
            if remaining < len {
                self.next = index;
                self.skip = remaining as usize;
                return Ok(());
            }
            remaining -= len;
        }
        if remaining > 0 {
            return Err(io::Error::other(format!(
                "seek to {offset} past the end of a {}-byte body",
                self.size
            )));
        }
        self.next = self.chunks.len();
        self.skip = 0;
        Ok(())
    }
}

/// The outcome of a body as pulled by the client: the digest on success, else why it failed.
type Outcome = Arc<Mutex<Option<Result<(u64, String), StorageError>>>>;

/// Feeds the already-buffered head of a body, then the rest of its stream, to the client,
/// hashing as it goes. On the last chunk it checks `expected` and reports a mismatch as an
/// error instead of the end of the stream, so the upload is never finalized.
struct HashingSource {
    head: VecDeque<Bytes>,
    // `Mutex` only to make the stream `Sync` as the client requires; `next` has `&mut self`,
    // so it is reached through `get_mut` and never locked.
    rest: Mutex<BoxStream<'static, io::Result<Bytes>>>,
    digest: Option<BodyDigest>,
    uri: String,
    expected: Expected,
    outcome: Outcome,
}

impl HashingSource {
    fn record(&self, result: Result<(u64, String), StorageError>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
    }
}

impl StreamingSource for HashingSource {
    type Error = io::Error;

    async fn next(&mut self) -> Option<Result<Bytes, io::Error>> {
        let digest = self.digest.as_mut()?;
        if let Some(chunk) = self.head.pop_front() {
            return Some(Ok(chunk));
        }
        let rest = self.rest.get_mut().unwrap_or_else(PoisonError::into_inner);
        match rest.next().await {
            Some(Ok(chunk)) => {
                digest.update(&chunk);
                Some(Ok(chunk))
            }
            Some(Err(e)) => {
                self.digest = None;
                let message = e.to_string();
                self.record(Err(StorageError::Body {
                    uri: self.uri.clone(),
                    source: e,
                }));
                Some(Err(io::Error::other(message)))
            }
            None => {
                let digest = self.digest.take()?;
                match digest.finish(&self.uri, &self.expected) {
                    Ok(done) => {
                        self.record(Ok(done));
                        None
                    }
                    Err(e) => {
                        let message = e.to_string();
                        self.record(Err(e));
                        Some(Err(io::Error::other(message)))
                    }
                }
            }
        }
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    fn base(&self) -> &StorageUri {
        &self.base
    }

    async fn put_new_expecting(
        &self,
        key: &ObjectKey,
        body: Body,
        expected: Expected,
    ) -> Result<PutReceipt, StorageError> {
        let uri = self.uri_for(key);
        let name = self.base.object_name(key);
        let mut stream = body.into_stream();
        let mut digest = BodyDigest::default();
        let mut head = Vec::new();
        let mut ended = false;
        while (digest.size() as usize) < SINGLE_SHOT_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    digest.update(&chunk);
                    head.push(chunk);
                }
                Some(Err(source)) => return Err(StorageError::Body { uri, source }),
                None => {
                    ended = true;
                    break;
                }
            }
        }

        let (object, size_bytes, sha256) = if ended {
            let (size_bytes, sha256) = digest.finish(&uri, &expected)?;
            let source = BufferedSource {
                chunks: head,
                size: size_bytes,
                next: 0,
                skip: 0,
            };
            let object = self
                .client
                .write_object(self.bucket_path(), name, source)
                .set_if_generation_match(0)
                // The buffered single shot sends the crc32c up front; the unbuffered one sends
                // it as a trailing multipart part, which fake-gcs-server stores as data.
                .send_buffered()
                .await
                .map_err(|e| self.map_error(&uri, e))?;
            (object, size_bytes, sha256)
        } else {
            let outcome = Outcome::default();
            let source = HashingSource {
                head: head.into(),
                rest: Mutex::new(stream),
                digest: Some(digest),
                uri: uri.clone(),
                expected,
                outcome: outcome.clone(),
            };
            let result = self
                .client
                .write_object(self.bucket_path(), name, source)
                .set_if_generation_match(0)
                .send_buffered()
                .await;
            let pulled = outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match (result, pulled) {
                (Ok(object), Some(Ok((size_bytes, sha256)))) => (object, size_bytes, sha256),
                // The body's own failure explains the upload's failure better.
                (_, Some(Err(e))) => return Err(e),
                (Err(e), _) => return Err(self.map_error(&uri, e)),
                (Ok(_), None) => {
                    return Err(StorageError::Backend {
                        uri,
                        source: "the upload finished before the body was fully read".into(),
                    });
                }
            }
        };
        if u64::try_from(object.size).ok() != Some(size_bytes) {
            return Err(StorageError::Backend {
                uri,
                source: format!(
                    "the service stored {} bytes, {size_bytes} were sent",
                    object.size
                )
                .into(),
            });
        }
        Ok(PutReceipt {
            uri,
            size_bytes,
            sha256,
            storage_version: object.generation.to_string(),
        })
    }

    async fn get(&self, uri_or_key: &str, max_bytes: u64) -> Result<ByteStream, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let response = self
            .client
            .read_object(self.bucket_path(), self.base.object_name(&key))
            .send()
            .await
            .map_err(|e| self.map_error(&uri, e))?;
        // The stored size is known up front on GCS (0 when the header is absent, as on the
        // emulator; the streaming check below still applies).
        if u64::try_from(response.object().size).is_ok_and(|size| size > max_bytes) {
            return Err(StorageError::TooLarge {
                uri,
                limit: max_bytes,
            });
        }
        let read_uri = uri.clone();
        let store_uri = self.base.to_string();
        // `ReadObjectResponse::into_stream` is behind an unstable feature; `next` is not.
        let chunks = futures::stream::unfold(response, |mut response| async move {
            let chunk = response.next().await?;
            Some((chunk, response))
        })
        .map(move |chunk| {
            chunk.map_err(|e| StorageError::Backend {
                uri: read_uri.clone(),
                source: format!("reading from {store_uri}: {e}").into(),
            })
        });
        Ok(limit_stream(chunks, uri, max_bytes))
    }

    async fn head(&self, uri_or_key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let mut url = self.json_url(Some(&self.base.object_name(&key)))?;
        url.query_pairs_mut()
            .append_pair("fields", "size,generation");
        let Some(meta) = self.json_get(url, &uri).await? else {
            return Ok(None);
        };
        // The JSON API encodes 64-bit integers as strings.
        let field = |name: &str| meta.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let size_bytes = field("size").and_then(|s| s.parse::<u64>().ok());
        let generation = field("generation");
        match (size_bytes, generation) {
            (Some(size_bytes), Some(storage_version)) => Ok(Some(ObjectMeta {
                size_bytes,
                storage_version,
            })),
            _ => Err(StorageError::Backend {
                uri,
                source: format!("object metadata without size or generation: {meta}").into(),
            }),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let uri = self.uri_for(key);
        let url = self.json_url(Some(&self.base.object_name(key)))?;
        self.json_request(reqwest::Method::DELETE, url, &uri)
            .await
            .map(drop)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        let uri = self.base.to_string();
        let name_prefix = if self.base.prefix().is_empty() {
            String::new()
        } else {
            format!("{}/", self.base.prefix())
        };
        let mut keys = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut url = self.json_url(None)?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("prefix", &format!("{name_prefix}{prefix}"));
                query.append_pair("fields", "items(name),nextPageToken");
                if let Some(token) = &page_token {
                    query.append_pair("pageToken", token);
                }
            }
            let Some(page) = self.json_get(url, &uri).await? else {
                return Err(StorageError::NotFound { uri });
            };
            let items = page.get("items").and_then(|v| v.as_array());
            for name in items
                .into_iter()
                .flatten()
                .filter_map(|item| item.get("name").and_then(|v| v.as_str()))
            {
                // Names that are not valid keys cannot have been written by this module.
                if let Some(key) = name
                    .strip_prefix(&name_prefix)
                    .and_then(|rest| ObjectKey::parse(rest).ok())
                {
                    keys.push(key);
                }
            }
            page_token = page
                .get("nextPageToken")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            if page_token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn source(chunks: Vec<io::Result<Bytes>>, expected: Expected) -> (HashingSource, Outcome) {
        let outcome = Outcome::default();
        let mut digest = BodyDigest::default();
        digest.update(b"head");
        let source = HashingSource {
            head: VecDeque::from([Bytes::from_static(b"head")]),
            rest: Mutex::new(futures::stream::iter(chunks).boxed()),
            digest: Some(digest),
            uri: "gs://b/k".to_owned(),
            expected,
            outcome: outcome.clone(),
        };
        (source, outcome)
    }

    async fn pull(source: &mut HashingSource) -> Vec<Result<Bytes, io::Error>> {
        let mut items = Vec::new();
        while let Some(item) = source.next().await {
            let failed = item.is_err();
            items.push(item);
            if failed {
                break;
            }
        }
        items
    }

    #[tokio::test]
    async fn hashes_head_and_rest() {
        let (mut source, outcome) =
            source(vec![Ok(Bytes::from_static(b"tail"))], Expected::default());
        let items = pull(&mut source).await;
        assert_eq!(items.len(), 2);
        assert!(source.next().await.is_none(), "stays finished");
        let (size, sha) = outcome
            .lock()
            .expect("lock")
            .take()
            .expect("recorded")
            .expect("ok");
        assert_eq!(size, 8);
        assert_eq!(sha, hex::encode(Sha256::digest(b"headtail")));
    }

    #[tokio::test]
    async fn mismatch_is_an_error_instead_of_the_end() {
        let expected = Expected {
            sha256: None,
            size_bytes: Some(9),
        };
        let (mut source, outcome) = source(vec![Ok(Bytes::from_static(b"tail"))], expected);
        let items = pull(&mut source).await;
        assert!(
            items.last().expect("items").is_err(),
            "the upload must not be finalized"
        );
        let recorded = outcome.lock().expect("lock").take().expect("recorded");
        assert!(matches!(
            recorded,
            Err(StorageError::Mismatch {
                what: "size_bytes",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn body_errors_are_recorded() {
        let (mut source, outcome) =
            source(vec![Err(io::Error::other("gone"))], Expected::default());
        let items = pull(&mut source).await;
        assert!(items.last().expect("items").is_err());
        let recorded = outcome.lock().expect("lock").take().expect("recorded");
        assert!(matches!(recorded, Err(StorageError::Body { .. })));
    }
}
