//! `memory://`: a process-local store for tests and the mock backend. Bodies are collected
//! (this store holds everything in memory by definition) and inserted only if the key is free,
//! under one lock, so create-only holds between concurrent writers.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{
    Body, BodyDigest, ByteStream, Expected, ObjectKey, ObjectMeta, ObjectStore, PutReceipt,
    StorageError, StorageUri, limit_stream, sha256_version,
};

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    version: String,
}

/// An in-memory object store; each instance is independent and starts empty.
#[derive(Debug)]
pub struct MemoryStore {
    base: StorageUri,
    objects: Mutex<BTreeMap<ObjectKey, Stored>>,
}

impl MemoryStore {
    /// An empty store rooted at `base` (a `memory://` URI).
    pub fn new(base: StorageUri) -> Self {
        Self {
            base,
            objects: Mutex::new(BTreeMap::new()),
        }
    }

    fn lookup(&self, key: &ObjectKey) -> Option<Stored> {
        // A panic while holding this lock cannot leave the map half-updated (every critical
        // section is a single insert or read), so a poisoned lock is still consistent.
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        objects.get(key).cloned()
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
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
        let mut digest = BodyDigest::default();
        let mut buf = BytesMut::new();
        let mut stream = body.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| StorageError::Body {
                uri: uri.clone(),
                source,
            })?;
            digest.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        let (size_bytes, sha256) = digest.finish(&uri, &expected)?;
        let version = sha256_version(&sha256);
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        if objects.contains_key(key) {
            return Err(StorageError::AlreadyExists { uri });
        }
        objects.insert(
            key.clone(),
            Stored {
                data: buf.freeze(),
                version: version.clone(),
            },
        );
        Ok(PutReceipt {
            uri,
            size_bytes,
            sha256,
            storage_version: version,
        })
    }

    async fn get(&self, uri_or_key: &str, max_bytes: u64) -> Result<ByteStream, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let stored = self
            .lookup(&key)
            .ok_or_else(|| StorageError::NotFound { uri: uri.clone() })?;
        if stored.data.len() as u64 > max_bytes {
            return Err(StorageError::TooLarge {
                uri,
                limit: max_bytes,
            });
        }
        Ok(limit_stream(
            futures::stream::iter([Ok(stored.data)]),
            uri,
            max_bytes,
        ))
    }

    async fn head(&self, uri_or_key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        Ok(self.lookup(&key).map(|stored| ObjectMeta {
            size_bytes: stored.data.len() as u64,
            storage_version: stored.version,
        }))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(objects
            .keys()
            .filter(|key| key.as_str().starts_with(prefix))
            .cloned()
            .collect())
    }
}
