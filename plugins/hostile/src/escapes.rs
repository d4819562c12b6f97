//! Attempts to reach past the grants through the host's capabilities,
//! chosen by NodePublishVolume's volume id. The grants in the tests are a
//! real deployment's: an fs root in one place, the mount prefix (the
//! "kubelet" directory, the publish request's target path is under it)
//! somewhere else. `canary` (volume context) names a file outside every
//! grant that must come out untouched; `victim` a path of another pod's
//! volume under the same prefix, which must stay as it is.
//!
//! Links are made by the plugin itself through WASI, which refuses
//! absolute link targets but not relative ones climbing out of the root.

use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};

use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::{btrfs, fs_info, images, mount, quota};
use wasmcsi_plugin_sdk::error::fail as error;
use wasmcsi_plugin_sdk::get as param;
use wasmcsi_plugin_sdk::types::KeyValues;
use wasmcsi_plugin_sdk::{Error, ErrorCode, Result};

fn root() -> Result<(Descriptor, String)> {
    get_directories()
        .into_iter()
        .next()
        .ok_or_else(|| error(ErrorCode::Internal, "no preopen"))
}

fn wasi(what: &str, e: impl std::fmt::Debug) -> Error {
    error(ErrorCode::Internal, format!("{what}: {e:?}"))
}

/// `../` enough times to climb from `depth` directories below the root to
/// `/`, then `target` (absolute, without its leading slash).
fn climbing(depth: usize, root: &str, target: &str) -> String {
    let up = root.split('/').filter(|p| !p.is_empty()).count() + depth;
    format!("{}{}", "../".repeat(up + 4), target.trim_start_matches('/'))
}

fn make_dir(dir: &Descriptor, path: &str) {
    let _ = dir.create_directory_at(path);
}

fn write_file(dir: &Descriptor, path: &str, bytes: &[u8]) -> Result<()> {
    let file = dir
        .open_at(
            PathFlags::empty(),
            path,
            OpenFlags::CREATE,
            DescriptorFlags::READ | DescriptorFlags::WRITE,
        )
        .map_err(|e| wasi("open", e))?;
    file.write(bytes, 0).map_err(|e| wasi("write", e))?;
    Ok(())
}

/// Turns `path` into a symlink to `target`, or back into a directory.
fn swap(dir: &Descriptor, path: &str, target: &str, to_link: bool) {
    let _ = dir.unlink_file_at(path);
    let _ = dir.remove_directory_at(path);
    if to_link {
        let _ = dir.symlink_at(target, path);
    } else {
        let _ = dir.create_directory_at(path);
    }
}

/// Runs the escape `name`; `target` is a path under the mount prefix.
/// `name#n` is `name` (distinct volume ids, so the host's per-volume lock
/// lets several run at once).
pub fn attempt(name: &str, target: &str, context: &KeyValues) -> Result<()> {
    let name = name.split('#').next().unwrap_or(name);
    let (dir, root) = root()?;
    let canary = param(context, "canary").unwrap_or("/tmp/wasmcsi-no-canary");
    let rounds: usize = param(context, "rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let victim = param(context, "victim").unwrap_or("/nonexistent-victim");
    match name {
        // The root's `view` bound onto the target: links of the plugin's
        // own in it, one dangling and climbing to the canary, one to the
        // canary's directory. Later calls whose target the CO names
        // through them ("dangling-bind", "link-dir-bind", "race-user")
        // must not be followed out.
        "bind-view" => {
            make_dir(&dir, "view");
            write_file(&dir, "file", b"plugin data")?;
            let _ = dir.unlink_file_at("view/dangling");
            dir.symlink_at(&climbing(1, &root, canary), "view/dangling")
                .map_err(|e| wasi("symlink", e))?;
            let _ = dir.unlink_file_at("view/out");
            let outside = canary.rsplit_once('/').map(|(d, _)| d).unwrap_or("/tmp");
            dir.symlink_at(&climbing(1, &root, outside), "view/out")
                .map_err(|e| wasi("symlink", e))?;
            mount::bind(&format!("{root}/view"), target, false)
        }
        // A file bound onto a target the CO named through the dangling
        // link (the host must not create or mount through it).
        "dangling-bind" => mount::bind(&format!("{root}/file"), target, false),
        // The same through the directory link: mkdir -p of the target must
        // not follow it either.
        "link-dir-bind" => mount::bind(&format!("{root}/view"), target, false),
        // Below the target rather than at it: not a path the call gave.
        "below-target" => {
            make_dir(&dir, "view");
            mount::bind(&format!("{root}/view"), &format!("{target}/view"), false)
        }
        // Another pod's volume (a Secret), under the same prefix: shown in
        // this pod, a file of it, unmounted, or covered.
        "bind-victim" => mount::bind(victim, target, false),
        "bind-victim-file" => mount::bind(&format!("{victim}/token"), target, false),
        "unmount-victim" => mount::unmount(victim, false),
        "bind-onto-victim" => {
            make_dir(&dir, "view");
            mount::bind(&format!("{root}/view"), victim, false)
        }
        "tmpfs-onto-victim" => mount::mount("evil", victim, "tmpfs", &["size=1m".to_string()]),
        "reconfigure-victim" => mount::reconfigure(victim, &["size=1g".to_string()]),
        // A tmpfs at the target with the options of `options` (entries
        // separated by spaces), then `reconfigure` with those of
        // `reconfigure`, if any.
        "tmpfs" => {
            let list = |key: &str| -> Vec<String> {
                param(context, key)
                    .unwrap_or("")
                    .split(' ')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            mount::mount("scratch", target, "tmpfs", &list("options"))?;
            match param(context, "reconfigure") {
                Some(_) => mount::reconfigure(target, &list("reconfigure")),
                None => Ok(()),
            }
        }
        // Attaches `count` images of its own (named after `prefix`) and
        // keeps every device.
        "loop-hoard" => {
            let count: usize = param(context, "count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(24);
            let prefix = param(context, "prefix").unwrap_or("img");
            make_dir(&dir, "hoard");
            for i in 0..count {
                let image = format!("{root}/hoard/{prefix}-{i}.img");
                std::fs::File::create(&image)
                    .and_then(|f| f.set_len(1 << 20))
                    .map_err(|e| wasi("image", e))?;
                images::attach_loop(&image)?;
            }
            Ok(())
        }
        // One half of a two-call race: flips `view/flip` between a
        // directory and a link out, as fast as it can.
        "race-swapper" => {
            make_dir(&dir, "view");
            let outside = canary.rsplit_once('/').map(|(d, _)| d).unwrap_or("/tmp");
            let link = climbing(1, &root, outside);
            for round in 0..rounds * 8 {
                swap(&dir, "view/flip", &link, round % 2 == 0);
            }
            swap(&dir, "view/flip", &link, false);
            Ok(())
        }
        // The other half: binds onto its target, which the CO names under
        // the flipping directory (seen under the prefix through a bind of
        // `view`, "bind-view"), and formats an image in it.
        "race-user" => {
            write_file(&dir, "file", b"plugin data")?;
            for _ in 0..rounds {
                if mount::bind(&format!("{root}/file"), target, false).is_ok() {
                    let _ = mount::unmount(target, true);
                }
                let _ = images::make_filesystem(&format!("{root}/view/flip/canary.img"), "ext4");
                let _ = images::probe_filesystem(&format!("{root}/view/flip/canary.img"));
                let _ = images::attach_loop(&format!("{root}/view/flip/canary.img"))
                    .map(|d| images::detach_loop(&d));
            }
            Ok(())
        }
        // Options that name devices or paths, or take the node down.
        "logdev" => mount::mount(
            "/dev/loop0",
            target,
            "xfs",
            &["logdev=/dev/loop1".to_string()],
        ),
        "errors-panic" => mount::mount("/dev/loop0", target, "ext4", &["errors=panic".to_string()]),
        "smuggled-option" => mount::mount(
            "/dev/loop0",
            target,
            "xfs",
            &["nouuid,logdev=/dev/loop1".to_string()],
        ),
        // Devices and places that are not the plugin's.
        "foreign-device" => mount::mount(
            param(context, "device").unwrap_or("/dev/loop0"),
            target,
            "xfs",
            &[],
        ),
        "disk-device" => mount::mount("/dev/vda", target, "xfs", &[]),
        "bind-proc" => mount::bind("/proc/self/root", target, false),
        "bind-foreign-device" => mount::bind(
            param(context, "device").unwrap_or("/dev/loop0"),
            target,
            false,
        ),
        // Onto the prefix itself (the test names it as `at`).
        "mount-on-prefix" => {
            make_dir(&dir, "view");
            mount::bind(
                &format!("{root}/view"),
                param(context, "at").unwrap_or(target),
                false,
            )
        }
        // Quota on what is not a subvolume beneath the root.
        "quota-root" => quota::set_limit(quota::QuotaKind::BtrfsQgroup, &root, 1 << 20),
        "quota-dir" => {
            make_dir(&dir, "plain");
            quota::set_limit(
                quota::QuotaKind::BtrfsQgroup,
                &format!("{root}/plain"),
                1 << 20,
            )
        }
        "quota-usage-root" => quota::get_usage(quota::QuotaKind::BtrfsQgroup, &root).map(drop),
        "delete-root-subvolume" => btrfs::delete_subvolume(&root),
        // The test put a fifo there: the host must not hang opening it.
        "fifo-image" => images::make_filesystem(&format!("{root}/fifo.img"), "xfs"),
        // statfs of the target (the test mounts a filesystem that never
        // answers there): this call may hang, no other may.
        "statfs" => fs_info::statfs(param(context, "at").unwrap_or(target)).map(drop),
        other => Err(error(
            ErrorCode::InvalidArgument,
            format!("no escape called {other:?}"),
        )),
    }
}
