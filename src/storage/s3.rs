//! The S3-compatible backend. Streams go up as multipart uploads whose part size doubles every
//! 1,000 parts (so the 10,000-part limit is never reached while memory stays bounded by a few
//! parts), with a bounded number of parts in flight and the SDK's retries on each part. Every
//! part carries its CRC32, which the store checks on arrival and keeps (a composite checksum of
//! the object): the classic flexible-checksum header, not the SDK's default trailers that many
//! S3-compatible stores reject; `storage.part_checksum = "none"` leaves it out for a store that
//! refuses even that. Any failure aborts the upload, so a failed snapshot leaves no object behind.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::{ObjectReader, ObjectWriter, Storage, StorageError};
use crate::config::{S3Config, StorageConfig};

const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
/// Attempts per request (the SDK's standard retries), each limited by `storage.timeout`.
const ATTEMPTS: u32 = 4;
const PARTS_PER_DOUBLING: i32 = 1000;
/// Chunks handed to `write` are at most this large; part buffers reserve it as slack.
const CHUNK_SLACK: usize = 1024 * 1024;

pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: u64,
    concurrency: usize,
    /// `storage.sse` and `kms_key_id`, sent on every upload.
    sse: Option<aws_sdk_s3::types::ServerSideEncryption>,
    kms_key_id: Option<String>,
    /// Send each part's CRC32 (`storage.part_checksum`).
    part_crc32: bool,
}

/// The size of part `n` (1-based): `base`, doubled every 1,000 parts, at most 5 GiB.
pub fn part_size(base: u64, n: i32) -> u64 {
    let doublings = ((n.max(1) - 1) / PARTS_PER_DOUBLING).min(20) as u32;
    (base << doublings).min(MAX_PART)
}

/// A part's CRC32 as S3's `x-amz-checksum-crc32` spells it: base64 of the big-endian value.
pub fn crc32_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let v = u64::from(crc32fast::hash(data)) << 16; // 32 bits, then 16 zero bits: six 6-bit digits
    let mut out: String = (0..6).map(|i| ALPHABET[((v >> (42 - 6 * i)) & 63) as usize] as char).collect();
    out.push_str("==");
    out
}

impl S3Storage {
    pub async fn connect(s3: &S3Config, cfg: &StorageConfig) -> Result<Self, StorageError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(s3.region.clone()));
        if let Some(e) = &s3.endpoint {
            loader = loader.endpoint_url(e);
        }
        let shared = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s3.force_path_style)
            // S3-compatible stores reject the SDK's default extra checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10).min(cfg.timeout))
                    .operation_attempt_timeout(cfg.timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
            .build();
        Ok(S3Storage {
            client: Client::from_conf(conf),
            bucket: s3.bucket.clone(),
            prefix: cfg.prefix.clone(),
            part_size: cfg.part_size,
            concurrency: cfg.upload_concurrency,
            sse: s3.sse.as_deref().map(aws_sdk_s3::types::ServerSideEncryption::from),
            kms_key_id: s3.kms_key_id.clone(),
            part_crc32: s3.part_crc32,
        })
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn relative<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(full)
        }
    }

    fn err<E: std::error::Error>(&self, op: &'static str, key: &str, e: E) -> StorageError {
        backend_err(self.location(), op, key, e)
    }

    fn checksum_hint(&self, e: StorageError) -> StorageError {
        checksum_hint(e, self.part_crc32)
    }
}

/// An upload refused for a checksum, when pgmedic sent one: say which key turns them off.
fn checksum_hint(mut e: StorageError, sent: bool) -> StorageError {
    if let StorageError::Backend { message, .. } = &mut e {
        if sent && message.to_ascii_lowercase().contains("checksum") {
            message.push_str(
                " (this store may not take S3's part checksums: set storage.part_checksum = \"none\")",
            );
        }
    }
    e
}

fn backend_err<E: std::error::Error>(location: String, op: &'static str, key: &str, e: E) -> StorageError {
    let mut message = DisplayErrorContext(e).to_string();
    if message.contains("timeout") {
        // The SDK names only the last attempt; say that it was the last of several.
        message.push_str(&format!(
            " (the request was tried {ATTEMPTS} times, each attempt limited by storage.timeout)"
        ));
    }
    StorageError::Backend { location, op, key: key.into(), message }
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let full = self.full(key);
        // With the algorithm named here the store checks each part's CRC32 and composes them at
        // completion instead of reading the whole object again for a checksum of its own.
        let start = (self.client.create_multipart_upload().bucket(&self.bucket).key(&full))
            .set_checksum_algorithm(self.part_crc32.then_some(ChecksumAlgorithm::Crc32));
        let start =
            start.set_server_side_encryption(self.sse.clone()).set_ssekms_key_id(self.kms_key_id.clone());
        let out = start.send().await.map_err(|e| self.checksum_hint(self.err("start upload of", key, e)))?;
        let upload_id = out.upload_id().unwrap_or_default().to_string();
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            full_key: full,
            key: key.into(),
            location: self.location(),
            upload_id: Some(upload_id),
            buf: BytesMut::with_capacity(self.part_size as usize + CHUNK_SLACK),
            part_crc32: self.part_crc32,
            base_part: self.part_size,
            next_part: 1,
            concurrency: self.concurrency,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            size: 0,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let req =
            self.client.put_object().bucket(&self.bucket).key(self.full(key)).body(ByteStream::from(data));
        let req = req.set_server_side_encryption(self.sse.clone()).set_ssekms_key_id(self.kms_key_id.clone());
        req.send().await.map(|_| ()).map_err(|e| self.err("write", key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let out = self.get_object(key).await?;
        let body = out.body.collect().await.map_err(|e| self.err("read", key, e))?;
        Ok(body.into_bytes())
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        Ok(Box::pin(self.get_object(key).await?.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut pages = (self.client.list_objects_v2().bucket(&self.bucket).prefix(self.full(prefix)))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", prefix, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key()).map(|k| self.relative(k).to_string()));
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let req = self.client.delete_object().bucket(&self.bucket).key(self.full(key));
        req.send().await.map(|_| ()).map_err(|e| self.err("delete", key, e))
    }

    async fn abort_partial_writes(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut aborted = 0;
        loop {
            let out = (self.client.list_multipart_uploads().bucket(&self.bucket).prefix(self.full(prefix)))
                .send()
                .await
                .map_err(|e| self.err("list uploads under", prefix, e))?;
            let uploads = out.uploads();
            for u in uploads {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                tracing::warn!(key, "aborting a multipart upload left by an earlier process");
                (self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id))
                    .send()
                    .await
                    .map_err(|e| self.err("abort upload of", key, e))?;
                aborted += 1;
            }
            // Aborted uploads drop out of the listing, so listing again pages forward.
            if !out.is_truncated().unwrap_or(false) || uploads.is_empty() {
                return Ok(aborted);
            }
        }
    }

    async fn probe(&self) -> Result<(), StorageError> {
        let req = self.client.head_bucket().bucket(&self.bucket);
        req.send().await.map(|_| ()).map_err(|e| self.err("reach bucket", &self.bucket, e))
    }
}

impl S3Storage {
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        match self.client.get_object().bucket(&self.bucket).key(self.full(key)).send().await {
            Ok(out) => Ok(out),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(StorageError::NotFound { key: key.into(), location: self.location() })
            }
            Err(e) => Err(self.err("read", key, e)),
        }
    }
}

struct S3Writer {
    client: Client,
    bucket: String,
    full_key: String,
    key: String,
    location: String,
    /// `None` once completed or aborted.
    upload_id: Option<String>,
    buf: BytesMut,
    part_crc32: bool,
    base_part: u64,
    next_part: i32,
    concurrency: usize,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    size: u64,
}

impl S3Writer {
    async fn send_part(&mut self) -> Result<(), StorageError> {
        while self.in_flight.len() >= self.concurrency {
            self.reap_one().await?;
        }
        let n = self.next_part;
        self.next_part += 1;
        let next_size = part_size(self.base_part, self.next_part) as usize;
        let body =
            std::mem::replace(&mut self.buf, BytesMut::with_capacity(next_size + CHUNK_SLACK)).freeze();
        let crc = self.part_crc32.then(|| crc32_base64(&body));
        let req = (self.client.upload_part().bucket(&self.bucket).key(&self.full_key))
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .part_number(n)
            .set_checksum_crc32(crc.clone())
            .body(ByteStream::from(body));
        let (location, key) = (self.location.clone(), self.key.clone());
        self.in_flight.spawn(async move {
            let sent = crc.is_some();
            let out = (req.send().await)
                .map_err(|e| checksum_hint(backend_err(location, "upload part of", &key, e), sent))?;
            let part = CompletedPart::builder().part_number(n).set_checksum_crc32(crc);
            Ok(part.set_e_tag(out.e_tag().map(str::to_string)).build())
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), StorageError> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(StorageError::Backend {
                location: self.location.clone(),
                op: "upload part of",
                key: self.key.clone(),
                message: join.to_string(),
            }),
            None => Ok(()),
        }
    }

    async fn complete(&mut self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        if !self.buf.is_empty() || self.next_part == 1 {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let parts_done = started.elapsed();
        self.done.sort_by_key(|p| p.part_number());
        let parts =
            CompletedMultipartUpload::builder().set_parts(Some(std::mem::take(&mut self.done))).build();
        (self.client.complete_multipart_upload().bucket(&self.bucket).key(&self.full_key))
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|e| backend_err(self.location.clone(), "complete upload of", &self.key, e))
            .map_err(|e| checksum_hint(e, self.part_crc32))?;
        self.upload_id = None;
        // What the end of a stream waits for: its last parts, then the store's own completion.
        tracing::debug!(
            key = %self.key,
            parts = self.next_part - 1,
            last_parts_ms = parts_done.as_millis() as u64,
            completion_ms = (started.elapsed() - parts_done).as_millis() as u64,
            "multipart upload completed"
        );
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        // Parts of exactly their size (the last one excepted), so a part's checksum can be
        // checked by anyone who knows the part size.
        while !chunk.is_empty() {
            let part = part_size(self.base_part, self.next_part) as usize;
            let take = (part - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(take));
            if self.buf.len() == part {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        match self.complete().await {
            Ok(()) => Ok(self.size),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.in_flight.abort_all();
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.full_key).upload_id(id);
        if let Err(e) = req.send().await {
            // The next snapshot of this database aborts it (abort_partial_writes).
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(e), "could not abort the multipart upload");
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped mid-upload (cancelled future): abort in the background if a runtime is there.
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.full_key).upload_id(id);
        rt.spawn(async move {
            let _ = req.send().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{crc32_base64, part_size};

    #[test]
    fn a_refused_checksum_names_the_key_only_when_one_was_sent() {
        let refused = || super::StorageError::Backend {
            location: "s3://b/".into(),
            op: "upload part of",
            key: "k".into(),
            message: "InvalidArgument: x-amz-checksum-crc32 is not supported".into(),
        };
        let hinted = super::checksum_hint(refused(), true).to_string();
        assert!(hinted.contains("storage.part_checksum = \"none\""), "{hinted}");
        assert!(!super::checksum_hint(refused(), false).to_string().contains("part_checksum"));
    }

    #[test]
    fn crc32_header_is_base64_of_the_big_endian_value() {
        // Python: base64.b64encode(zlib.crc32(d).to_bytes(4, "big"))
        assert_eq!(crc32_base64(b""), "AAAAAA==");
        assert_eq!(crc32_base64(b"hello world"), "DUoRhQ==");
        assert_eq!(crc32_base64(&[b'x'; 1000]), "O0HJ5g==");
    }

    #[test]
    fn ten_thousand_parts_hold_terabytes() {
        let base = 8 * 1024 * 1024;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        let total: u64 = (1..=10_000).map(|n| part_size(base, n)).sum();
        assert!(total > 5 * 1024u64.pow(4), "10,000 parts hold {total} bytes");
    }
}
