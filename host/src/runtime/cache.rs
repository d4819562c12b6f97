//! Precompiled plugins on disk, so a start (or a reload) deserializes
//! instead of compiling. An entry is keyed by the wasm's sha256 and the
//! engine's compatibility hash, carries a sha256 of its own body, and is
//! written atomically (temp file + rename) into a directory only the driver
//! may write. Anything unexpected — missing, truncated, flipped bits, from
//! another wasmtime — is compiled again and rewritten, never trusted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// First bytes of every entry; bump when the layout changes.
const MAGIC: &[u8; 8] = b"WCSIC01\n";
const HEADER: usize = MAGIC.len() + 32;

/// Where a component came from, for logs and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cache,
}

#[derive(Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// Opens (creating, mode 0700) a cache directory, refusing one that
    /// someone else owns or others may write: its files are run as code.
    pub fn open(dir: &Path) -> Result<ComponentCache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the plugin cache {}", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)
            .with_context(|| format!("inspecting the plugin cache {}", dir.display()))?;
        if !meta.is_dir() {
            bail!("plugin cache {} is not a directory", dir.display());
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!(
                "plugin cache {} belongs to uid {}, not to this driver (uid {me})",
                dir.display(),
                meta.uid()
            );
        }
        if meta.permissions().mode() & 0o022 != 0 {
            bail!(
                "plugin cache {} is writable by group or others: make it 0700",
                dir.display()
            );
        }
        Ok(ComponentCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache's directory (the OCI blob store lives beneath it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file for a wasm with this sha256 (hex) on this engine.
    pub fn entry(&self, engine: &Engine, wasm_sha256: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir
            .join(format!("{wasm_sha256}-{:016x}.cwasm", h.finish()))
    }

    /// The component for `wasm`, from the cache when a sound entry exists,
    /// else compiled and stored.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> Result<(Component, Origin)> {
        let path = self.entry(engine, wasm_sha256);
        match self.read(engine, &path) {
            Ok(Some(component)) => return Ok((component, Origin::Cache)),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                entry = %path.display(),
                error = format!("{e:#}"),
                "plugin cache entry unusable: compiling again"
            ),
        }
        let serialized = engine
            .precompile_component(wasm)
            .map_err(anyhow::Error::from)
            .context("compiling")?;
        let component = deserialize(engine, &serialized)?;
        if let Err(e) = self.write(&path, &serialized) {
            tracing::warn!(entry = %path.display(), error = format!("{e:#}"), "could not write the plugin cache");
        }
        Ok((component, Origin::Compiled))
    }

    /// `Ok(None)`: no entry. An error: an entry that must not be used.
    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Component>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading"),
        };
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            bail!("not a wasmcsi cache entry (bad header)");
        }
        let (want, body) = bytes[MAGIC.len()..].split_at(32);
        if Sha256::digest(body).as_slice() != want {
            bail!("checksum mismatch (corrupted)");
        }
        deserialize(engine, body).map(Some)
    }

    fn write(&self, path: &Path, serialized: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(serialized))?;
            f.write_all(serialized)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing {}", path.display()))
    }
}

fn deserialize(engine: &Engine, serialized: &[u8]) -> Result<Component> {
    // SAFETY: the bytes are wasmtime's own output for this engine: either
    // just compiled, or read back from a file this driver wrote into a
    // directory only it may write, whose checksum matched. Wasmtime checks
    // its version and engine settings itself on top.
    unsafe { Component::deserialize(engine, serialized) }
        .map_err(anyhow::Error::from)
        .context("loading precompiled code")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The empty component (magic, version 0x0d, component layer): quick
    /// to compile, and still real wasmtime output to cache.
    const EMPTY_COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        Engine::new(&c).unwrap()
    }

    fn wasm() -> Vec<u8> {
        EMPTY_COMPONENT.to_vec()
    }

    #[test]
    fn second_load_comes_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(&dir.path().join("c")).unwrap();
        let e = engine();
        let (_, first) = cache.component(&e, &wasm(), "ab").unwrap();
        let (_, second) = cache.component(&e, &wasm(), "ab").unwrap();
        assert_eq!((first, second), (Origin::Compiled, Origin::Cache));
    }

    #[test]
    fn a_corrupted_entry_is_compiled_again_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(dir.path()).unwrap();
        let e = engine();
        cache.component(&e, &wasm(), "cd").unwrap();
        let path = cache.entry(&e, "cd");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, origin) = cache.component(&e, &wasm(), "cd").unwrap();
        assert_eq!(origin, Origin::Compiled);
        let (_, origin) = cache.component(&e, &wasm(), "cd").unwrap();
        assert_eq!(origin, Origin::Cache, "the entry was rewritten");
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(
            cache.component(&e, &wasm(), "cd").unwrap().1,
            Origin::Compiled
        );
    }

    #[test]
    fn an_entry_for_another_engine_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(dir.path()).unwrap();
        let e = engine();
        cache.component(&e, &wasm(), "ef").unwrap();
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true).epoch_interruption(true);
        let other = Engine::new(&c).unwrap();
        // Different settings: a different key, and even if a file were
        // renamed into place wasmtime would refuse it.
        assert_ne!(cache.entry(&e, "ef"), cache.entry(&other, "ef"));
        std::fs::copy(cache.entry(&e, "ef"), cache.entry(&other, "ef")).unwrap();
        assert_eq!(
            cache.component(&other, &wasm(), "ef").unwrap().1,
            Origin::Compiled
        );
    }

    #[test]
    fn a_cache_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("writable"), "{err}");
    }
}
