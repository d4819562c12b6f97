//! Network filesystems (NFS) are mounted by mount(8): its helper resolves
//! the server's name and negotiates versions, which the kernel's own mount
//! API leaves to user space. So that no plugin-named path is handed to it,
//! mount(8) mounts into a fresh directory of the host's own staging area
//! (a private mount, so the result may be moved), and the host then moves
//! the mount onto the target's descriptor.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use super::{blocking, command, CapError};

/// Where the host's staging directories are made.
fn staging_root() -> PathBuf {
    std::env::var_os("WASMCSI_NETMOUNT_STAGING")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/wasmcsi/network-mounts"))
}

/// Makes the staging area once: a directory bind-mounted onto itself and
/// made private, since the kernel moves no mount out of a shared parent.
fn private_staging() -> Result<&'static Path, CapError> {
    static AREA: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    AREA.get_or_init(|| {
        let root = staging_root();
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        use nix::mount::{mount, MsFlags};
        mount(
            Some(&root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mounting {}: {e}", root.display()))?;
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making {} private: {e}", root.display()))?;
        Ok(root)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|e| CapError::internal(format!("network mount staging: {e}")))
}

/// Mounts `source` with mount(8) and attaches it onto `target_fd`.
pub async fn mount(
    source: &str,
    fs_type: &str,
    options: &[String],
    target_fd: OwnedFd,
    target: &str,
) -> Result<(), CapError> {
    let area = blocking::run(|| private_staging().map(Path::to_path_buf)).await?;
    let dir = tempfile::Builder::new()
        .prefix("m")
        .tempdir_in(&area)
        .map_err(|e| CapError::internal(format!("staging directory: {e}")))?;
    let staged = dir.path().to_string_lossy().into_owned();
    let joined = options.join(",");
    command::run("mount", &["-t", fs_type, "-o", &joined, source, &staged]).await?;
    let (staged_path, target_owned) = (dir.path().to_path_buf(), target.to_string());
    let moved = blocking::run(move || {
        let mnt = open_tree(
            rustix::fs::CWD,
            staged_path.as_path(),
            OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| CapError::internal(format!("opening the staged mount: {e}")))?;
        move_mount(
            mnt.as_fd(),
            "",
            target_fd.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| CapError::internal(format!("moving the mount onto {target_owned}: {e}")))
    })
    .await;
    if moved.is_err() {
        let _ = nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::beneath::{self, GrantedDir};

    /// The same path with a filesystem this kernel has (tmpfs): mounted by
    /// mount(8) in the staging area, moved onto a target by descriptor.
    #[tokio::test]
    async fn mounts_by_tool_and_moves_onto_the_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        std::env::set_var("WASMCSI_NETMOUNT_STAGING", tmp.path().join("staging"));
        let grant = GrantedDir::open(&tmp.path().join("kubelet")).unwrap();
        let target = format!("{}/pods/p/mount", grant.path().display());
        let at = beneath::locate(&[&grant], &target, "t").unwrap();
        let fd = beneath::open_dir_creating(at).unwrap();
        mount("tmpfs", "tmpfs", &["size=1m".into()], fd, &target)
            .await
            .unwrap();
        let fd = beneath::open(at, rustix::fs::OFlags::PATH).unwrap();
        let entry = super::super::mount::mount_at(fd.as_fd()).unwrap().unwrap();
        assert_eq!(entry.fs_type, "tmpfs");
        drop(fd);
        nix::mount::umount2(target.as_str(), nix::mount::MntFlags::empty()).unwrap();
        let area = staging_root();
        let _ = nix::mount::umount2(&area, nix::mount::MntFlags::MNT_DETACH);
        // Nothing left in the staging area.
        assert_eq!(std::fs::read_dir(&area).unwrap().count(), 0);
    }
}
