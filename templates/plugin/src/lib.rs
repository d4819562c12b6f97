//! A wasmcsi plugin: volumes are directories under the root the host
//! grants (`capabilities.fs.root`), published by bind mount. The capacity
//! is recorded and checked against requests, but not enforced (no quota).

use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::{environment, mount};
use wasmcsi_plugin_sdk::capacity::{fits, Rules, GIB, MIB};
use wasmcsi_plugin_sdk::error::{already_exists, internal, not_found, precondition};
use wasmcsi_plugin_sdk::{files, id, types::*, Context, Result};

struct Dirs;
wasmcsi_plugin_sdk::export!(Dirs);

/// Whole MiB, at least 1 MiB, 1 GiB when the request names no size.
const SIZES: Rules = Rules {
    unit: MIB,
    min: MIB,
    max: None,
    default: GIB,
    kind: "directories",
};

/// `<root>/volumes/<id>` holds the data, `<root>/capacity/<id>` its size.
fn paths(volume_id: &str) -> Result<(String, String)> {
    id::check(volume_id)?;
    let root = environment::root().ok_or_else(|| precondition("grant the fs capability"))?;
    Ok((
        format!("{root}/volumes/{volume_id}"),
        format!("{root}/capacity/{volume_id}"),
    ))
}

fn recorded(file: &str) -> Result<Option<u64>> {
    let parse = |text: String| text.parse().map_err(|e| internal(format!("{file}: {e}")));
    files::read(file)?.map(parse).transpose()
}

impl wasmcsi_plugin_sdk::Identity for Dirs {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            features: Features::NODE_LOCAL | Features::CONTROLLER_EXPAND,
            access_modes: vec![AccessMode::SingleNodeWriter],
            min_volume_bytes: MIB,
        }
    }
}

/// What is not written here answers UNIMPLEMENTED (the SDK's defaults).
impl wasmcsi_plugin_sdk::Controller for Dirs {
    /// Ids come from names, so a retry finds what the first attempt made.
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        let volume_id = id::from_name(&req.name)?;
        let (dir, size_file) = paths(&volume_id)?;
        let capacity_bytes = match recorded(&size_file)? {
            Some(bytes) if fits(bytes, &req.capacity) => bytes,
            Some(b) => return Err(already_exists(format!("{b} bytes at {dir}"))),
            None => SIZES.for_create(&req.capacity)?,
        };
        std::fs::create_dir_all(&dir).context(|| format!("creating {dir}"))?;
        files::write_atomic(&size_file, capacity_bytes.to_string().as_bytes())?;
        Ok(Volume {
            volume_id,
            capacity_bytes,
            volume_context: vec![],
            content_source: None,
        })
    }

    fn delete_volume(volume_id: String, _secrets: Secrets) -> Result<()> {
        let (dir, size_file) = paths(&volume_id)?;
        files::remove(&dir)?;
        files::remove(&size_file)
    }

    fn expand_volume(req: ExpandRequest) -> Result<ExpandResult> {
        let (_, size_file) = paths(&req.volume_id)?;
        let gone = || not_found(format!("volume {} does not exist", req.volume_id));
        let current = recorded(&size_file)?.ok_or_else(gone)?;
        let capacity_bytes = SIZES.for_expand(Some(current), &req.capacity)?;
        files::write_atomic(&size_file, capacity_bytes.to_string().as_bytes())?;
        Ok(ExpandResult {
            capacity_bytes,
            node_expansion_required: false,
        })
    }
}

impl wasmcsi_plugin_sdk::Node for Dirs {
    fn publish_volume(req: PublishRequest) -> Result<()> {
        let (dir, _) = paths(&req.volume_id)?;
        mount::bind(&dir, &req.target_path, req.read_only).context(|| format!("binding {dir}"))
    }

    fn unpublish_volume(_volume_id: String, target_path: String) -> Result<()> {
        mount::unmount(&target_path, true).context(|| format!("unmounting {target_path}"))
    }
}
