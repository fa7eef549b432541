//! The object store behind the service: S3 (MinIO or any S3-compatible server) when
//! `STORAGE_ENDPOINT` is set, a local directory otherwise. Both go through
//! `object_store`, so uploads, downloads and deletes are one code path; they differ
//! only in how a browser gets the bytes (presigned S3 URL or a gateway link) and in
//! whether objects carry attributes.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, PutMultipartOptions, RetryConfig,
};
use reqwest::Method;
use strongbox_common::http::content_disposition;
use url::Url;

use crate::config::Config;
use crate::error::StorageError;
use crate::links::LinkSigner;
use crate::names::ObjectKey;

/// S3 rejects multipart parts under 5 MiB (except the last).
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

pub struct Backend {
    pub store: Arc<dyn ObjectStore>,
    /// The same store, for reading objects out as streams. On S3 its requests have no
    /// deadline of their own: a download lasts as long as its client takes to read it
    /// (`STORAGE_TIMEOUT_SECONDS` over the whole request cut any download slower than
    /// that). The reader bounds the wait for the answer and for each piece instead
    /// (`pieces.rs`), with [`Backend::timeout`].
    pub reads: Arc<dyn ObjectStore>,
    /// `STORAGE_TIMEOUT_SECONDS`.
    pub timeout: Duration,
    /// The same store as S3, for its multipart API (`multipart.rs`); `None` locally.
    pub s3: Option<Arc<AmazonS3>>,
    downloads: Downloads,
    /// For messages: "S3 bucket uploads at http://minio:9000" or "directory ./data/objects".
    pub description: String,
}

enum Downloads {
    /// Presigned GETs, signed for the endpoint browsers reach.
    Presigned(AmazonS3),
    /// HMAC-signed links to the gateway.
    Linked(LinkSigner),
}

impl Backend {
    /// Builds the configured backend and proves it works: on S3 the bucket is created if
    /// missing and then listed, so bad credentials stop the service at start.
    pub async fn connect(config: &Config, link_secret: &[u8]) -> Result<Self, StorageError> {
        match &config.storage_endpoint {
            Some(endpoint) => Self::s3(config, endpoint).await,
            None => Self::local(config, link_secret),
        }
    }

    fn local(config: &Config, link_secret: &[u8]) -> Result<Self, StorageError> {
        let dir = config.storage_dir();
        std::fs::create_dir_all(&dir).map_err(|err| {
            StorageError::Internal(format!(
                "cannot create STORAGE_DIR {}: {err}",
                dir.display()
            ))
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir)?);
        Ok(Self {
            reads: store.clone(),
            timeout: config.storage_timeout(),
            store,
            s3: None,
            downloads: Downloads::Linked(LinkSigner::new(link_secret, &config.public_base_url)?),
            description: format!("directory {}", dir.display()),
        })
    }

    async fn s3(config: &Config, endpoint: &str) -> Result<Self, StorageError> {
        if config.upload_part_size < S3_MIN_PART_SIZE {
            return Err(StorageError::Internal(format!(
                "UPLOAD_PART_SIZE must be at least {S3_MIN_PART_SIZE} bytes for S3 (it is {})",
                config.upload_part_size
            )));
        }
        if config.max_chunk_bytes < S3_MIN_PART_SIZE {
            return Err(StorageError::Internal(format!(
                "MAX_CHUNK_BYTES must be at least {S3_MIN_PART_SIZE} bytes for S3, where each \
                 resumable-upload chunk is a multipart part (it is {})",
                config.max_chunk_bytes
            )));
        }
        let description = format!("S3 bucket {} at {endpoint}", config.storage_bucket);
        create_bucket_if_missing(config, endpoint)
            .await
            .map_err(|err| StorageError::Internal(format!("cannot create {description}: {err}")))?;
        let store = Arc::new(s3_client(config, endpoint, Deadline::Request)?);
        // Listing proves the endpoint, the credentials and the bucket all work.
        store
            .list_with_delimiter(Some(&Path::from("_probe")))
            .await
            .map_err(|err| StorageError::Internal(format!("cannot access {description}: {err}")))?;
        let public = config
            .storage_public_endpoint
            .as_deref()
            .unwrap_or(endpoint);
        Ok(Self {
            store: store.clone(),
            reads: Arc::new(s3_client(config, endpoint, Deadline::None)?),
            timeout: config.storage_timeout(),
            s3: Some(store),
            downloads: Downloads::Presigned(s3_client(config, public, Deadline::Request)?),
            description,
        })
    }

    /// Options for a new object: on S3 the object carries its content type and a
    /// Content-Disposition with the original name, so a presigned download saves under
    /// the right name. The local backend stores no attributes (its links are served by
    /// the gateway, which sets those headers itself).
    pub fn put_options(&self, filename: &str, content_type: &str) -> PutMultipartOptions {
        self.object_options().for_file(filename, content_type)
    }

    /// [`Backend::put_options`] as a value of its own, for what outlives a borrow of
    /// the backend (a resumable session's chunk store).
    pub fn object_options(&self) -> ObjectOptions {
        ObjectOptions {
            named: matches!(self.downloads, Downloads::Presigned(_)),
        }
    }

    /// A URL a browser can open to download `key` until `expires_at` (unix seconds).
    pub async fn download_url(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        expires_at: u64,
    ) -> Result<Url, StorageError> {
        match &self.downloads {
            Downloads::Presigned(signer) => {
                Ok(signer.signed_url(Method::GET, &key.path(), ttl).await?)
            }
            Downloads::Linked(links) => Ok(links.link(key, expires_at)),
        }
    }

    /// Checks a gateway link's signature; only the local backend issues such links.
    pub fn verify_link(
        &self,
        key: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), StorageError> {
        match &self.downloads {
            Downloads::Linked(links) => links.verify(key, expires, signature, now),
            Downloads::Presigned(_) => Err(StorageError::PermissionDenied(
                "signed links are only issued by the local backend; use the presigned URL",
            )),
        }
    }
}

/// What `STORAGE_TIMEOUT_SECONDS` bounds for an S3 client.
enum Deadline {
    /// Each request, start to end.
    Request,
    /// Nothing: the caller bounds what it waits for (objects read as streams).
    None,
}

fn s3_client(
    config: &Config,
    endpoint: &str,
    deadline: Deadline,
) -> Result<AmazonS3, StorageError> {
    let client_options = ClientOptions::new()
        .with_allow_http(endpoint.starts_with("http://"))
        .with_connect_timeout(Duration::from_secs(5));
    let client_options = match deadline {
        Deadline::Request => client_options.with_timeout(config.storage_timeout()),
        Deadline::None => client_options.with_timeout_disabled(),
    };
    // A few quick retries, then fail: an unreachable store must become UNAVAILABLE
    // promptly, not hang the call.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: config.storage_timeout(),
        ..RetryConfig::default()
    };
    Ok(AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(&config.storage_bucket)
        .with_region(&config.storage_region)
        .with_access_key_id(&config.storage_access_key)
        .with_secret_access_key(&config.storage_secret_key)
        .with_virtual_hosted_style_request(false)
        .with_client_options(client_options)
        .with_http_connector(crate::s3_metrics::MeteredConnector)
        .with_retry(retry)
        .build()?)
}

/// `object_store` cannot create buckets, so a presigned CreateBucket (signed by
/// rusty-s3, a maintained signing crate) is sent with reqwest. "Already yours" is fine.
async fn create_bucket_if_missing(config: &Config, endpoint: &str) -> Result<(), String> {
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
    let endpoint_url =
        Url::parse(endpoint).map_err(|err| format!("STORAGE_ENDPOINT is not a URL: {err}"))?;
    let bucket = Bucket::new(
        endpoint_url,
        UrlStyle::Path,
        config.storage_bucket.clone(),
        config.storage_region.clone(),
    )
    .map_err(|err| err.to_string())?;
    let credentials = Credentials::new(
        config.storage_access_key.clone(),
        config.storage_secret_key.clone(),
    );
    let url = bucket
        .create_bucket(&credentials)
        .sign(Duration::from_secs(60));
    let response = reqwest::Client::builder()
        .timeout(config.storage_timeout())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| err.to_string())?
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .send()
        .await
        // reqwest's error carries the URL, which is presigned here (credential and
        // signature in the query): keep it out of logs and stderr.
        .map_err(|err| format!("the endpoint is unreachable: {}", err.without_url()))?;
    let status = response.status();
    if status.is_success() {
        tracing::info!(bucket = %config.storage_bucket, "created bucket");
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    // Some servers say "already exists" even for the caller's own bucket; the access
    // check that follows tells whether it is really usable.
    if status == reqwest::StatusCode::CONFLICT && body.contains("BucketAlready") {
        return Ok(());
    }
    Err(format!(
        "CreateBucket answered {status}: {}",
        body.chars().take(300).collect::<String>()
    ))
}

/// What a new object carries (see [`Backend::put_options`]).
#[derive(Debug, Clone, Copy)]
pub struct ObjectOptions {
    /// Content type and Content-Disposition, for presigned downloads.
    named: bool,
}

impl ObjectOptions {
    pub fn for_file(self, filename: &str, content_type: &str) -> PutMultipartOptions {
        let mut attributes = Attributes::new();
        if self.named {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
            attributes.insert(
                Attribute::ContentDisposition,
                content_disposition(filename).into(),
            );
        }
        PutMultipartOptions {
            attributes,
            ..Default::default()
        }
    }
}
