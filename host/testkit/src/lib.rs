//! What the integration tests, the demo and the benchmark share, kept out
//! of the driver's library: a CSI client over a unix socket ([`client`]),
//! writing until the kernel says no, and tearing down mounts and loop
//! devices left under a scratch directory.

pub mod client;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Writes 1 MiB chunks into `dir/name` until `max` bytes or an error, then
/// fsyncs; returns the bytes the kernel accepted and the error that stopped it.
pub fn fill(dir: &Path, name: &str, max: u64) -> (u64, Option<std::io::Error>) {
    let chunk = vec![0xa5u8; MIB as usize];
    let mut file = match std::fs::File::create(dir.join(name)) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let mut written = 0;
    while written < max {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => return (written, Some(e)),
        }
    }
    match file.sync_all() {
        Ok(()) => (written, None),
        Err(e) => (written, Some(e)),
    }
}

fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Whether something is mounted exactly at `path`.
pub fn mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Unmounts everything mounted under `dir`, deepest first.
pub fn cleanup_mounts(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    for _ in 0..10 {
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|p| p.starts_with(&dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Command::new("umount")
                .arg(&p)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing =
                std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
            Path::new(backing.trim())
                .starts_with(&dir)
                .then(|| format!("/dev/{name}"))
        })
        .collect()
}

/// Unmounts and detaches everything under `dir`.
pub fn teardown(dir: &Path) {
    cleanup_mounts(dir);
    for device in loops_under(dir) {
        let _ = Command::new("losetup").args(["-d", &device]).status();
    }
}

/// Formats a sparse `size`-byte image as btrfs and loop-mounts it on `mount_point`.
pub fn mount_btrfs(image: &Path, mount_point: &Path, size: u64) -> anyhow::Result<()> {
    mount_new(image, mount_point, size, "btrfs", &["-q", "-f"])
}

/// Formats a sparse `size`-byte image as ext4 and loop-mounts it on `mount_point`.
pub fn mount_ext4(image: &Path, mount_point: &Path, size: u64) -> anyhow::Result<()> {
    mount_new(image, mount_point, size, "ext4", &["-q", "-F"])
}

fn mount_new(
    image: &Path,
    mount_point: &Path,
    size: u64,
    fs_type: &str,
    mkfs_args: &[&str],
) -> anyhow::Result<()> {
    use anyhow::{ensure, Context};
    std::fs::File::create(image)?.set_len(size)?;
    std::fs::create_dir_all(mount_point)?;
    let out = Command::new(format!("mkfs.{fs_type}"))
        .args(mkfs_args)
        .arg(image)
        .output()
        .with_context(|| format!("running mkfs.{fs_type}"))?;
    ensure!(
        out.status.success(),
        "mkfs.{fs_type}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(image)
        .arg(mount_point)
        .output()?;
    ensure!(
        out.status.success(),
        "mount {fs_type}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
