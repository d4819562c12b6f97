//! A plugin's OCI source, `oci://registry/repository@sha256:<digest>`:
//! parsed and checked with the config, pulled by `runtime::oci`.

use anyhow::{bail, Context, Result};
use oci_client::Reference;

/// A parsed, digest-pinned plugin source.
#[derive(Debug, Clone)]
pub struct OciSource {
    pub reference: Reference,
    /// The manifest's sha256, hex.
    pub manifest_sha256: String,
}

impl OciSource {
    pub fn parse(text: &str) -> Result<OciSource> {
        let Some(rest) = text.strip_prefix("oci://") else {
            bail!("{text:?} must be an OCI reference oci://registry/repository@sha256:<digest>");
        };
        let reference: Reference = rest
            .parse()
            .with_context(|| format!("{text:?} is not an OCI reference"))?;
        let Some(digest) = reference.digest() else {
            bail!(
                "{text} names a tag, not a digest: pin it as oci://{}/{}@sha256:<digest> \
                 (a tag can move under a running driver; `wasmcsi plugin push` prints the digest)",
                reference.registry(),
                reference.repository()
            );
        };
        let manifest_sha256 = sha256_hex(digest)
            .with_context(|| format!("{text}: the digest must be sha256:<64 hex digits>"))?;
        Ok(OciSource {
            reference,
            manifest_sha256,
        })
    }
}

/// `sha256:<64 lowercase hex>` → the hex; anything else is refused (the
/// hex names files in the cache).
pub fn sha256_hex(digest: &str) -> Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("{digest:?} is not sha256:<64 lowercase hex digits>");
    }
    Ok(hex.to_string())
}
