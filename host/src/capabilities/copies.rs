//! The `copies` capability: copies of images and subvolumes under the
//! plugin's root, for snapshots and clones. Granted with `fs`.
//!
//! Image copies act on opened files: the source and the destination are
//! opened once and the data moves between the two descriptors (FICLONE,
//! else copy_file_range over the data ranges only). A source in use is
//! made consistent first: its mounted filesystem is frozen (FIFREEZE on a
//! descriptor of its mount point) for the copy and always thawed before
//! the call returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{command, fs, loopdev, CapError, CapResult, ErrorCode};
use crate::runtime::bindings::wasmcsi::plugin::copies::{CopyMethod, Host};
use crate::runtime::state::CallState;

// ioctl numbers from <linux/fs.h>.
const FICLONE: libc::c_ulong = 0x4004_9409;
const FIFREEZE: libc::c_ulong = 0xc004_5877;
const FITHAW: libc::c_ulong = 0xc004_5878;

impl CallState {
    fn copies_root(&self) -> Result<&fs::FsCap, CapError> {
        self.grants
            .fs
            .as_deref()
            .ok_or_else(|| CapError::not_granted("copies (with fs)", &self.grants.plugin))
    }
}

fn io_error(what: impl std::fmt::Display, e: io::Error) -> CapError {
    let code = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::ResourceExhausted,
        Some(libc::ENOENT) => ErrorCode::NotFound,
        _ => ErrorCode::Internal,
    };
    CapError::new(code, format!("{what}: {e}"))
}

fn attached(image: &Path) -> Result<Option<String>, CapError> {
    loopdev::LoopIndex::default().find(image)
}

/// Refuses an image that a loop device is using: its filesystem could be
/// mounted and would be changed under the kernel's feet.
fn not_attached(image: &Path, what: &str) -> Result<(), CapError> {
    match attached(image)? {
        Some(dev) => Err(CapError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "{} is attached to {dev}; refusing to {what}",
                image.display()
            ),
        )),
        None => Ok(()),
    }
}

/// Where the filesystem on `device` is mounted (any one of its mounts),
/// from the device number in /proc/self/mountinfo.
fn mount_point_of(device: &str) -> Result<Option<PathBuf>, CapError> {
    let rdev = std::fs::metadata(device)
        .map_err(|e| io_error(format_args!("stat {device}"), e))?
        .rdev();
    let wanted = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(2) == Some(&wanted.as_str()))
            .then(|| fields.get(4).map(|p| PathBuf::from(unescape(p))))
            .flatten()
    }))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(b[i + 1..i + 4].iter().fold(0u8, |n, d| n * 8 + (d - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A frozen filesystem, thawed when dropped (also on error or panic).
struct Frozen(File, PathBuf);

impl Frozen {
    fn freeze(mount_point: &Path) -> Result<Frozen, CapError> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(mount_point)
            .map_err(|e| io_error(format_args!("opening {}", mount_point.display()), e))?;
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE takes an int argument; `dir` is a valid open fd.
        if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, &mut arg) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io_error(
                format_args!("freezing the filesystem at {}", mount_point.display()),
                e,
            ));
        }
        Ok(Frozen(dir, mount_point.to_path_buf()))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut arg: libc::c_int = 0;
        // SAFETY: as in freeze.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), FITHAW, &mut arg) } != 0 {
            tracing::error!(
                mount_point = %self.1.display(),
                error = %io::Error::last_os_error(),
                "thawing a frozen filesystem failed"
            );
        }
    }
}

/// Copies `src` into the empty `dst`: a reflink where the filesystem can,
/// else the data ranges only (holes stay holes).
fn copy_fds(src: &File, dst: &File) -> io::Result<CopyMethod> {
    let len = src.metadata()?.len();
    // SAFETY: FICLONE takes the source fd as its argument; both are open.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(CopyMethod::Reflink);
    }
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: plain syscalls on open fds.
        let data = unsafe { libc::lseek(s, offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        let hole = unsafe { libc::lseek(s, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut from, mut to) = (data, data);
        while from < hole {
            let n = unsafe {
                libc::copy_file_range(s, &mut from, d, &mut to, (hole - from) as usize, 0)
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
        }
        offset = hole;
    }
    dst.set_len(len)?;
    Ok(CopyMethod::Sparse)
}

impl fs::FsCap {
    fn regular_file(&self, path: &str) -> Result<PathBuf, CapError> {
        let resolved = self.under_root(path)?;
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => Ok(resolved),
            Ok(_) => Err(CapError::invalid(format!("{path:?} is not a regular file"))),
            Err(e) => Err(CapError::not_found(format!("{path:?}: {e}"))),
        }
    }

    async fn copy_image(&self, source: &str, destination: &str) -> Result<CopyMethod, CapError> {
        let src_path = self.regular_file(source)?;
        let dst_path = self.under_root(destination)?;
        if dst_path == src_path {
            return Err(CapError::invalid("an image cannot be copied onto itself"));
        }
        if dst_path.exists() {
            not_attached(&dst_path, "overwrite it")?;
        }
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&src_path)
            .map_err(|e| io_error(format_args!("opening {}", src_path.display()), e))?;
        let dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dst_path)
            .map_err(|e| io_error(format_args!("creating {}", dst_path.display()), e))?;
        // In use: freeze its mounted filesystem, or flush the device.
        let device = attached(&src_path)?;
        let mount_point = match &device {
            Some(dev) => mount_point_of(dev)?,
            None => None,
        };
        let (dst_name, src_name) = (dst_path.clone(), src_path.clone());
        let device_for_flush = device.filter(|_| mount_point.is_none());
        tokio::task::spawn_blocking(move || {
            let _frozen = match &mount_point {
                Some(mp) => Some(Frozen::freeze(mp)?),
                None => None,
            };
            if let Some(dev) = device_for_flush {
                File::open(&dev)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_error(format_args!("flushing {dev}"), e))?;
            }
            let method = copy_fds(&src, &dst).map_err(|e| {
                io_error(
                    format_args!("copying {} to {}", src_name.display(), dst_name.display()),
                    e,
                )
            })?;
            dst.sync_all()
                .map_err(|e| io_error(format_args!("syncing {}", dst_name.display()), e))?;
            Ok(method)
        })
        .await
        .map_err(|e| CapError::internal(format!("the copy task failed: {e}")))?
    }

    async fn read_only_snapshot(&self, source: &str, path: &str) -> Result<(), CapError> {
        let source = self.under_root(source)?;
        let target = self.under_root(path)?;
        if target.exists() {
            return Err(CapError::new(
                ErrorCode::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        const SUBVOLUME_ROOT_INODE: u64 = 256;
        let meta = std::fs::metadata(&source)
            .map_err(|e| CapError::not_found(format!("{}: {e}", source.display())))?;
        if !(meta.is_dir()
            && meta.ino() == SUBVOLUME_ROOT_INODE
            && fs::type_name(&source)? == "btrfs")
        {
            return Err(CapError::invalid(format!(
                "{} is not a btrfs subvolume",
                source.display()
            )));
        }
        command::run(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                "-r",
                &source.to_string_lossy(),
                &target.to_string_lossy(),
            ],
        )
        .await
        .map(drop)
    }

    async fn new_filesystem_uuid(&self, image: &str, fs_type: &str) -> Result<(), CapError> {
        let image = self.regular_file(image)?;
        not_attached(&image, "change its filesystem's UUID")?;
        let path = image.to_string_lossy();
        match fs_type {
            "xfs" => {
                // xfs_admin exits 0 even when it refuses (a dirty log).
                let out = command::run_status("xfs_admin", &["-U", "generate", &path]).await?;
                let said = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() || said.contains("ERROR") {
                    return Err(CapError::new(
                        ErrorCode::FailedPrecondition,
                        format!("xfs_admin -U generate {path}: {}", said.trim()),
                    ));
                }
                String::new()
            }
            "ext4" => {
                // tune2fs wants a freshly checked filesystem for -U.
                let out = command::run_status("e2fsck", &["-f", "-p", &path]).await?;
                if !matches!(out.status.code(), Some(0..=2)) {
                    return Err(command::failure("e2fsck", &["-f", "-p", &path], &out));
                }
                command::run("tune2fs", &["-U", "random", &path]).await?
            }
            other => {
                return Err(CapError::invalid(format!(
                    "filesystem type {other:?} is not supported (supported: xfs, ext4)"
                )))
            }
        };
        Ok(())
    }
}

impl Host for CallState {
    async fn copy_image(&mut self, source: String, destination: String) -> CapResult<CopyMethod> {
        Ok(self
            .copies_root()?
            .copy_image(&source, &destination)
            .await?)
    }

    async fn read_only_snapshot(&mut self, source: String, path: String) -> CapResult<()> {
        Ok(self
            .copies_root()?
            .read_only_snapshot(&source, &path)
            .await?)
    }

    async fn new_filesystem_uuid(&mut self, image: String, fs_type: String) -> CapResult<()> {
        Ok(self
            .copies_root()?
            .new_filesystem_uuid(&image, &fs_type)
            .await?)
    }

    async fn allocated_bytes(&mut self, path: String) -> CapResult<u64> {
        let resolved = self.copies_root()?.under_root(&path)?;
        let meta = std::fs::symlink_metadata(&resolved)
            .map_err(|e| io_error(format_args!("stat {}", resolved.display()), e))?;
        Ok(meta.blocks() * 512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let mut f = File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.sync_all().unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        copy_fds(&src, &dst).unwrap();
        let meta = std::fs::metadata(&b).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "holes were filled");
        let data = std::fs::read(&b).unwrap();
        assert_eq!(&data[32 << 20..(32 << 20) + 8192], &[7u8; 8192][..]);
        assert!(data[..32 << 20].iter().all(|&x| x == 0));
    }

    #[test]
    fn unescape_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
