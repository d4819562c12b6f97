//! The filesystem of an image volume is made when the volume is first
//! staged, not when it is created: create only reserves a sparse image of
//! the volume's size (which is what bounds the filesystem, hence the
//! capacity), and mkfs — tens of milliseconds and a zeroed log of up to
//! 64 MiB — is paid by the volumes that are really used.
//!
//! `formatPending` in meta is the truth: while it is set nothing has ever
//! mounted the image, so whatever an interrupted attempt left in it is no
//! data. A format therefore always starts from a zeroed image, and the flag
//! is cleared durably before the first mount.

use std::fs::OpenOptions;

use crate::env::Env;
use crate::error::{self, Context, Result};
use crate::meta::Meta;
use crate::store;

/// Makes the volume's filesystem if it was never made. Returns whether it
/// did (the filesystem is then fresh: no probe or check is needed).
pub fn first_use(env: &Env, id: &str, meta: &mut Meta) -> Result<bool> {
    let Some(fs) = meta.fs_type.filter(|_| meta.format_pending) else {
        return Ok(false);
    };
    let image = env.layout.image(id);
    // mkfs refuses an attached image; only a stage attaches, after this.
    super::detach(env, id, &image)?;
    zero(id, &image, meta.capacity_bytes)?;
    env.host
        .make_filesystem(&image, fs.as_str())
        .context(|| format!("volume {id}: making {} on {image}", fs.as_str()))?;
    meta.format_pending = false;
    // Made at the image's full size: nothing is left to grow.
    meta.grow_pending = false;
    store::write_meta(&env.layout, id, meta)?;
    env.info(
        "filesystem made at first stage",
        &[("volume", id), ("fs", fs.as_str())],
    );
    Ok(true)
}

/// Empties the image and gives it back its size, sparse: no signature of a
/// half-made filesystem is left for mkfs to refuse.
fn zero(id: &str, image: &str, capacity: u64) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(image)
        .and_then(|f| f.set_len(capacity))
        .map_err(|e| error::io(format_args!("volume {id}: zeroing {image}"), e))
}
