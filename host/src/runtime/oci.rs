//! Plugins from OCI registries, pinned by digest.
//!
//! A plugin's `source` is `oci://registry/repository@sha256:<manifest digest>`
//! (a tag may stand before the digest; a tag alone is refused). The
//! manifest is an OCI artifact with one wasm layer, as `wkg`, `oras`,
//! Kubewarden and `wasmcsi plugin push` publish it. Everything pulled is
//! untrusted until its digest matches: the manifest's bytes against the
//! reference's digest, the layer's bytes against the manifest's descriptor,
//! with the layer's size bounded (`runtime.registries.maxBytes`) before and
//! while it is read. Verified manifests and layers are kept in
//! `<cacheDir>/oci/blobs/sha256/<hex>` (the OCI image layout's blob store);
//! content addressed, so a later load (a restart, the registry down) reads
//! them from there, and hashes them again before use.
//!
//! The registry client is `oci-client` (rustls with ring). Credentials come
//! from a `.dockerconfigjson` file; TLS trusts the system roots plus an
//! optional CA file; plain HTTP is spoken only to listed `insecure`
//! registries, and to loopback ones after HTTPS failed.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::oci_source::sha256_hex;
use crate::config::{OciSource as Source, RegistriesConfig};

/// Layer media types taken as the component: the CNCF wasm artifact
/// layout (`wkg`, `oras push f.wasm:application/wasm`), Kubewarden's and
/// the older wasm-to-oci one.
pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

/// What `wasmcsi plugin push` writes (the CNCF wasm artifact layout).
pub const PUSH_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const PUSH_LAYER_TYPE: &str = "application/wasm";
const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest larger than this is refused (they are a few hundred bytes).
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Where the component's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Registry,
    Cache,
}

/// A verified component: its bytes and their sha256 (hex).
pub struct Pulled {
    pub wasm: Vec<u8>,
    pub sha256: String,
    pub from: Fetched,
}

/// The component a source names: from the blob store under `cache_dir`
/// when it holds it, else pulled (bounded by `timeoutSeconds`) and stored.
pub async fn fetch(
    source: &str,
    registries: &RegistriesConfig,
    cache_dir: Option<&Path>,
) -> Result<Pulled> {
    let started = Instant::now();
    let parsed = Source::parse(source)?;
    let store = match cache_dir {
        Some(dir) => match BlobStore::open(dir) {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "OCI blob store unusable: pulling");
                None
            }
        },
        None => None,
    };
    if let Some(store) = &store {
        if let Some(pulled) = from_store(store, &parsed, registries.max_bytes)? {
            tracing::info!(source, layer = %pulled.sha256, elapsed_ms = started.elapsed().as_millis() as u64, "plugin taken from the OCI cache");
            return Ok(pulled);
        }
    }
    let timeout = Duration::from_secs(registries.timeout_seconds);
    let (manifest, wasm) = tokio::time::timeout(timeout, pull(&parsed, registries))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "pulling {source}: no answer within {}s (runtime.registries.timeoutSeconds)",
                registries.timeout_seconds
            )
        })?
        .with_context(|| format!("pulling {source}"))?;
    let sha256 = hex::encode(Sha256::digest(&wasm));
    if let Some(store) = &store {
        for (hex, bytes) in [(&parsed.manifest_sha256, &manifest), (&sha256, &wasm)] {
            if let Err(e) = store.put(hex, bytes) {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not keep the pulled plugin in the OCI cache"
                );
            }
        }
    }
    tracing::info!(
        source,
        layer = %sha256,
        bytes = wasm.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plugin pulled from its registry"
    );
    Ok(Pulled {
        wasm,
        sha256,
        from: Fetched::Registry,
    })
}

fn from_store(store: &BlobStore, source: &Source, max_bytes: u64) -> Result<Option<Pulled>> {
    let Some(manifest) = store.get(&source.manifest_sha256, MAX_MANIFEST_BYTES as u64) else {
        return Ok(None);
    };
    // Verified bytes; a manifest that does not describe a component is
    // refused as it would be from the registry.
    let layer = wasm_layer(&manifest, max_bytes)?;
    let sha256 = sha256_hex(&layer.digest)?;
    Ok(store.get(&sha256, max_bytes).map(|wasm| Pulled {
        wasm,
        sha256,
        from: Fetched::Cache,
    }))
}

/// The manifest's bytes and the wasm layer's, both verified.
async fn pull(source: &Source, registries: &RegistriesConfig) -> Result<(Vec<u8>, Vec<u8>)> {
    let registry = source.reference.resolve_registry().to_string();
    let auth = auth_for(registries, &source.reference)?;
    let mut errors = Vec::new();
    for protocol in protocols(registries, &registry) {
        let scheme = if protocol == ClientProtocol::Http {
            "http"
        } else {
            "https"
        };
        let client = client(registries, protocol)?;
        match pull_with(&client, source, &auth, registries.max_bytes).await {
            Ok(pulled) => return Ok(pulled),
            // Only an unreachable registry is worth another scheme; an
            // answer (not found, denied, bad content) is final.
            Err(Failure::Refused(e)) if errors.is_empty() => return Err(e),
            Err(Failure::Refused(e)) => {
                errors.push(format!("over {scheme}: {e:#}"));
                bail!("{}", errors.join("; "))
            }
            Err(Failure::Transport(e)) => errors.push(format!("over {scheme}: {e:#}")),
        }
    }
    bail!("registry {registry} unreachable: {}", errors.join("; "))
}

enum Failure {
    /// The registry could not be spoken to (connection, TLS, timeout).
    Transport(anyhow::Error),
    /// It answered, and no (not found, denied), or what it sent was
    /// refused (digest, size, layout).
    Refused(anyhow::Error),
}

/// A client error as a `Failure`: only one that never got an answer is
/// a transport failure.
fn failure(e: oci_client::errors::OciDistributionError, what: &str) -> Failure {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(_) => Failure::Transport(anyhow::Error::from(e).context(what.to_string())),
        e => Failure::Refused(anyhow::Error::from(e).context(what.to_string())),
    }
}

async fn pull_with(
    client: &Client,
    source: &Source,
    auth: &RegistryAuth,
    max_bytes: u64,
) -> std::result::Result<(Vec<u8>, Vec<u8>), Failure> {
    let reference = &source.reference;
    let (body, _) = client
        .pull_manifest_raw(reference, auth, &[OCI_MANIFEST_TYPE, DOCKER_MANIFEST_TYPE])
        .await
        .map_err(|e| match e {
            oci_client::errors::OciDistributionError::DigestError(_) => failure(
                e,
                "digest mismatch: the manifest served does not have the pinned digest: refusing it",
            ),
            e => failure(e, "fetching the manifest"),
        })?;
    let refused = Failure::Refused;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(refused(anyhow::anyhow!(
            "the manifest is {} bytes, more than a wasm artifact's (at most {MAX_MANIFEST_BYTES})",
            body.len()
        )));
    }
    let got = hex::encode(Sha256::digest(&body));
    if got != source.manifest_sha256 {
        return Err(refused(anyhow::anyhow!(
            "digest mismatch: the reference pins sha256:{}, the registry served a manifest with sha256:{got}: refusing it",
            source.manifest_sha256
        )));
    }
    let layer = wasm_layer(&body, max_bytes).map_err(refused)?;
    let mut stream = client
        .pull_blob_stream(reference, &layer)
        .await
        .map_err(|e| failure(e, "fetching the wasm layer"))?;
    if stream.content_length.is_some_and(|n| n > max_bytes) {
        return Err(refused(anyhow::anyhow!(
            "the wasm layer is {} bytes, more than runtime.registries.maxBytes ({max_bytes})",
            stream.content_length.unwrap_or_default()
        )));
    }
    let declared = layer.size as u64;
    let mut wasm = Vec::with_capacity(declared as usize);
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // The client checks the digest too, and ends the stream with
            // an error after the last bytes: all of them were hashed here.
            Err(e)
                if e.get_ref()
                    .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()) =>
            {
                let got = hex::encode(hasher.clone().finalize());
                return Err(refused(anyhow::anyhow!(
                    "digest mismatch: the manifest names the wasm layer {}, the registry served bytes with sha256:{got}: refusing it",
                    layer.digest
                )));
            }
            Err(e) => {
                return Err(Failure::Transport(
                    anyhow::Error::from(e).context("reading the wasm layer"),
                ))
            }
        };
        if wasm.len() as u64 + chunk.len() as u64 > declared {
            return Err(refused(anyhow::anyhow!(
                "the wasm layer is longer than the {declared} bytes its manifest declares: refusing it"
            )));
        }
        hasher.update(&chunk);
        wasm.extend_from_slice(&chunk);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != layer.digest {
        return Err(refused(anyhow::anyhow!(
            "digest mismatch: the manifest names the wasm layer {}, the registry served bytes with {got}: refusing it",
            layer.digest
        )));
    }
    Ok((body.to_vec(), wasm))
}

/// The one wasm layer of a manifest, its digest and size checked.
fn wasm_layer(manifest: &[u8], max_bytes: u64) -> Result<OciDescriptor> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        media_type: Option<String>,
    }
    let versioned: Versioned =
        serde_json::from_slice(manifest).context("the manifest is not JSON")?;
    if let Some(t) = versioned.media_type.as_deref() {
        if INDEX_TYPES.contains(&t) {
            bail!("the reference names an image index ({t}): pin the digest of the wasm artifact's own manifest");
        }
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(manifest).context("the manifest is not an OCI image manifest")?;
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
        .collect();
    let [layer] = wasm.as_slice() else {
        bail!(
            "the manifest has {} wasm layers ({}), not one: not a plugin component artifact",
            wasm.len(),
            WASM_LAYER_TYPES.join(", ")
        );
    };
    sha256_hex(&layer.digest).context("the wasm layer's digest")?;
    if layer.size < 0 || layer.size as u64 > max_bytes {
        bail!(
            "the wasm layer is {} bytes, more than runtime.registries.maxBytes ({max_bytes})",
            layer.size
        );
    }
    Ok((*layer).clone())
}

/// The schemes tried for a registry, in order.
fn protocols(registries: &RegistriesConfig, registry: &str) -> Vec<ClientProtocol> {
    let host = host_of(registry);
    if registries
        .insecure
        .iter()
        .any(|entry| entry == registry || entry == host)
    {
        vec![ClientProtocol::Http]
    } else if is_loopback(host) {
        vec![ClientProtocol::Https, ClientProtocol::Http]
    } else {
        vec![ClientProtocol::Https]
    }
}

/// `host[:port]` → host (brackets kept off an IPv6 literal).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client(registries: &RegistriesConfig, protocol: ClientProtocol) -> Result<Client> {
    // reqwest 0.13 without a built-in provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        platform_resolver: None,
        ..Default::default()
    };
    if let Some(ca) = &registries.ca_file {
        config.extra_root_certificates = read_certificates(ca)?;
    }
    Client::try_from(config)
        .map_err(anyhow::Error::from)
        .context("building the registry client")
}

/// Every certificate of a PEM file, one by one.
fn read_certificates(path: &Path) -> Result<Vec<Certificate>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading runtime.registries.caFile {}", path.display()))?;
    const END: &str = "-----END CERTIFICATE-----";
    let certs: Vec<Certificate> = text
        .split_inclusive(END)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----") && block.ends_with(END))
        .map(|block| Certificate {
            encoding: CertificateEncoding::Pem,
            data: block.trim_start().as_bytes().to_vec(),
        })
        .collect();
    if certs.is_empty() {
        bail!(
            "runtime.registries.caFile {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

/// A `.dockerconfigjson` (what a `kubernetes.io/dockerconfigjson` Secret
/// holds).
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The credentials for a reference's registry; anonymous without a file
/// or an entry.
fn auth_for(registries: &RegistriesConfig, reference: &Reference) -> Result<RegistryAuth> {
    let Some(path) = &registries.docker_config_json else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = std::fs::read(path).with_context(|| {
        format!(
            "reading runtime.registries.dockerConfigJson {}",
            path.display()
        )
    })?;
    auth_from(&text, reference.registry())
        .with_context(|| format!("runtime.registries.dockerConfigJson {}", path.display()))
}

fn auth_from(json: &[u8], registry: &str) -> Result<RegistryAuth> {
    let config: DockerConfig =
        serde_json::from_slice(json).context("not a .dockerconfigjson ({\"auths\": {...}})")?;
    let wanted = canonical_registry(registry);
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| canonical_registry(key) == wanted)
        .map(|(_, entry)| entry)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    if let Some(auth) = &entry.auth {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .with_context(|| format!("auths[{registry}].auth is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .with_context(|| format!("auths[{registry}].auth is not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .with_context(|| format!("auths[{registry}].auth is not user:password"))?;
        return Ok(RegistryAuth::Basic(user.into(), password.into()));
    }
    bail!("auths[{registry}] has neither auth, username and password, nor registrytoken")
}

/// A docker config key or a registry name, comparable: no scheme, no path,
/// Docker Hub's aliases as one.
fn canonical_registry(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Verified blobs by sha256 under `<cache>/oci/blobs/sha256/`, written
/// atomically, mode 0600, in directories only the driver may write (the
/// cache directory was checked when it was opened).
struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    fn open(cache_dir: &Path) -> Result<BlobStore> {
        let dir = cache_dir.join("oci").join("blobs").join("sha256");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(BlobStore { dir })
    }

    /// The blob, when present, not larger than `max` and matching its name.
    fn get(&self, hex: &str, max: u64) -> Option<Vec<u8>> {
        let path = self.dir.join(hex);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let bytes = if meta.is_file() && meta.len() <= max {
            std::fs::read(&path).ok()
        } else {
            None
        };
        match bytes {
            Some(bytes) if hex::encode(Sha256::digest(&bytes)) == hex => Some(bytes),
            _ => {
                tracing::warn!(blob = %path.display(), "OCI cache entry unusable: removing it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn put(&self, hex: &str, bytes: &[u8]) -> Result<()> {
        debug_assert!(sha256_hex(&format!("sha256:{hex}")).is_ok());
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.dir.join(hex))
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}/{hex}", self.dir.display()))?;
        Ok(())
    }
}

/// Publishes a component as an OCI artifact (the CNCF wasm layout:
/// config `application/vnd.wasm.config.v0+json`, one `application/wasm`
/// layer) and returns the digest-pinned `oci://` reference to configure.
pub async fn push(file: &Path, target: &str, registries: &RegistriesConfig) -> Result<String> {
    let text = target.strip_prefix("oci://").unwrap_or(target);
    let reference: Reference = text
        .parse()
        .with_context(|| format!("{target:?} is not an OCI reference"))?;
    if reference.digest().is_some() {
        bail!("push to a repository or a tag, not a digest: the digest is what push prints");
    }
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // A component (not a core module): magic, then version 0x0d, layer 1.
    if wasm.len() < 8 || wasm[..4] != *b"\0asm" || wasm[4..8] != [0x0d, 0x00, 0x01, 0x00] {
        bail!(
            "{} is not a WebAssembly component (plugins are components: cargo build --target wasm32-wasip2)",
            file.display()
        );
    }
    if wasm.len() as u64 > registries.max_bytes {
        bail!(
            "{} is {} bytes, more than a driver pulls (runtime.registries.maxBytes, default {})",
            file.display(),
            wasm.len(),
            registries.max_bytes
        );
    }
    let layer_digest = format!("sha256:{}", hex::encode(Sha256::digest(&wasm)));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    }))?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let title = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_TYPE.into()),
        config: OciDescriptor {
            media_type: PUSH_CONFIG_TYPE.into(),
            digest: config_digest.clone(),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: PUSH_LAYER_TYPE.into(),
            digest: layer_digest.clone(),
            size: wasm.len() as i64,
            annotations: Some([("org.opencontainers.image.title".to_string(), title)].into()),
            ..Default::default()
        }],
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let registry = reference.resolve_registry().to_string();
    let auth = auth_for(registries, &reference)?;
    let mut errors = Vec::new();
    for protocol in protocols(registries, &registry) {
        let scheme = if protocol == ClientProtocol::Http {
            "http"
        } else {
            "https"
        };
        let client = client(registries, protocol)?;
        let attempt = async {
            client.store_auth_if_needed(&registry, &auth).await;
            client
                .auth(&reference, &auth, oci_client::RegistryOperation::Push)
                .await?;
            client
                .push_blob(&reference, wasm.clone(), &layer_digest)
                .await?;
            client
                .push_blob(&reference, config.clone(), &config_digest)
                .await?;
            client
                .push_manifest_raw(
                    &reference,
                    body.clone(),
                    OCI_MANIFEST_TYPE.parse().expect("a valid header value"),
                )
                .await?;
            Ok::<_, oci_client::errors::OciDistributionError>(())
        };
        match tokio::time::timeout(Duration::from_secs(registries.timeout_seconds), attempt).await {
            Ok(Ok(())) => {
                return Ok(format!(
                    "oci://{}/{}@{manifest_digest}",
                    reference.registry(),
                    reference.repository()
                ))
            }
            Ok(Err(e)) => errors.push(format!("over {scheme}: {:#}", anyhow::Error::from(e))),
            Err(_) => errors.push(format!(
                "over {scheme}: no answer within {}s",
                registries.timeout_seconds
            )),
        }
    }
    bail!("pushing to {target}: {}", errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn sources_must_be_pinned_by_digest() {
        let s =
            Source::parse(&format!("oci://registry.example/wasmcsi/xsky-nfs@{DIGEST}")).unwrap();
        assert_eq!(s.reference.registry(), "registry.example");
        assert_eq!(s.reference.repository(), "wasmcsi/xsky-nfs");
        assert_eq!(s.manifest_sha256, &DIGEST[7..]);
        // A tag beside the digest is fine: the digest decides.
        Source::parse(&format!("oci://127.0.0.1:5000/p:v1@{DIGEST}")).unwrap();
        let err = format!(
            "{:#}",
            Source::parse("oci://registry.example/wasmcsi/xsky-nfs:v1").unwrap_err()
        );
        assert!(err.contains("names a tag, not a digest"), "{err}");
        assert!(Source::parse("oci://registry.example/x").is_err());
        assert!(Source::parse(&format!("registry.example/x@{DIGEST}")).is_err());
        assert!(Source::parse("oci://registry.example/x@sha256:abc").is_err());
        assert!(Source::parse(&format!("oci://r.example/x@{}", DIGEST.to_uppercase())).is_err());
    }

    #[test]
    fn loopback_registries_may_fall_back_to_http_others_only_when_listed() {
        let mut r = RegistriesConfig::default();
        assert_eq!(
            protocols(&r, "registry.example"),
            vec![ClientProtocol::Https]
        );
        for local in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert_eq!(
                protocols(&r, local),
                vec![ClientProtocol::Https, ClientProtocol::Http],
                "{local}"
            );
        }
        r.insecure = vec!["registry.lab:5000".into()];
        assert_eq!(
            protocols(&r, "registry.lab:5000"),
            vec![ClientProtocol::Http]
        );
        assert_eq!(
            protocols(&r, "registry.lab:443"),
            vec![ClientProtocol::Https]
        );
    }

    #[test]
    fn docker_config_entries_are_found_by_registry() {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let json = format!(
            r#"{{"auths": {{"https://registry.example:5000/v1/": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}}}}}"#
        );
        let basic = |r: RegistryAuth| match r {
            RegistryAuth::Basic(u, p) => format!("{u}:{p}"),
            other => format!("{other:?}"),
        };
        assert_eq!(
            basic(auth_from(json.as_bytes(), "registry.example:5000").unwrap()),
            "bob:s3cret"
        );
        assert_eq!(
            basic(auth_from(json.as_bytes(), "docker.io").unwrap()),
            "hub:pw"
        );
        assert_eq!(
            basic(auth_from(json.as_bytes(), "other.example").unwrap()),
            "Anonymous"
        );
        assert!(auth_from(b"not json", "x").is_err());
    }

    fn manifest(layers: &[(&str, &str, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(t, d, s)| serde_json::json!({"mediaType": t, "digest": d, "size": s}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_TYPE,
            "config": {"mediaType": PUSH_CONFIG_TYPE, "digest": DIGEST, "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn the_wasm_layer_is_the_one_wasm_typed_layer_within_bounds() {
        let m = manifest(&[("application/wasm", DIGEST, 100)]);
        assert_eq!(wasm_layer(&m, 1000).unwrap().digest, DIGEST);
        let kw = manifest(&[("application/vnd.wasm.content.layer.v1+wasm", DIGEST, 100)]);
        assert!(wasm_layer(&kw, 1000).is_ok());
        let err = wasm_layer(&m, 99).unwrap_err().to_string();
        assert!(err.contains("maxBytes"), "{err}");
        let two = manifest(&[
            ("application/wasm", DIGEST, 1),
            ("application/wasm", DIGEST, 1),
        ]);
        assert!(wasm_layer(&two, 1000).is_err());
        let tar = manifest(&[("application/vnd.oci.image.layer.v1.tar", DIGEST, 1)]);
        assert!(wasm_layer(&tar, 1000).is_err());
        // A digest that could name a file outside the store is refused.
        let evil = manifest(&[("application/wasm", "sha256:../../../etc/passwd", 1)]);
        assert!(wasm_layer(&evil, 1000).is_err());
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": []
        }))
        .unwrap();
        let err = wasm_layer(&index, 1000).unwrap_err().to_string();
        assert!(err.contains("image index"), "{err}");
    }

    #[test]
    fn the_store_hands_back_only_blobs_that_match_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hex = hex::encode(Sha256::digest(b"plugin"));
        assert!(store.get(&hex, 100).is_none());
        store.put(&hex, b"plugin").unwrap();
        assert_eq!(store.get(&hex, 100).unwrap(), b"plugin");
        assert!(store.get(&hex, 3).is_none(), "over the bound");
        store.put(&hex, b"plugin").unwrap();
        std::fs::write(store.dir.join(&hex), b"tampered").unwrap();
        assert!(store.get(&hex, 100).is_none());
        assert!(!store.dir.join(&hex).exists(), "a bad entry is removed");
    }
}
