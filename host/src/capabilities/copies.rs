//! The `copies` capability: copies of images and subvolumes under the
//! plugin's root, for snapshots and clones. Granted with `fs`.
//!
//! Image copies act on opened files: the source and the destination are
//! opened once and the data moves between the two descriptors (FICLONE,
//! else copy_file_range over the data ranges only). A source in use is
//! made consistent first: its mounted filesystem is frozen (FIFREEZE on a
//! descriptor of its mount point) for the copy and always thawed before
//! the call returns.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{FileType, OFlags};

use super::command::{self, FD_ARG};
use super::fs::{with_fs, FsCap};
use super::loopdev::LoopDevice;
use super::mount::unescape;
use super::{beneath, btrfs, CapError, CapResult, ErrorCode};
use crate::runtime::bindings::wasmcsi::plugin::copies::{CopyMethod, Host};
use crate::runtime::state::CallState;

// ioctl numbers from <linux/fs.h>.
const FICLONE: libc::c_ulong = 0x4004_9409;
const FIFREEZE: libc::c_ulong = 0xc004_5877;
const FITHAW: libc::c_ulong = 0xc004_5878;

fn io_error(what: impl std::fmt::Display, e: io::Error) -> CapError {
    let code = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::ResourceExhausted,
        Some(libc::ENOENT) => ErrorCode::NotFound,
        _ => ErrorCode::Internal,
    };
    CapError::new(code, format!("{what}: {e}"))
}

/// A frozen filesystem, thawed when dropped (also on error or panic).
struct Frozen(OwnedFd, PathBuf);

impl Frozen {
    /// Freezes the filesystem of `dev`, found mounted somewhere on the
    /// node. The mount point comes from the mount table, so it is checked
    /// on the opened descriptor: only a directory on that very device is
    /// frozen, whatever the name leads to by then.
    fn freeze(dev: &LoopDevice) -> Result<Option<Frozen>, CapError> {
        let Some(mount_point) = mount_point_of(dev.rdev)? else {
            return Ok(None);
        };
        let dir = rustix::fs::open(
            &mount_point,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| CapError::internal(format!("opening {}: {e}", mount_point.display())))?;
        if beneath::identity(dir.as_fd())?.0 != dev.rdev {
            return Err(CapError::new(
                ErrorCode::Aborted,
                format!("the mount of {} moved; try again", dev.name),
            ));
        }
        let mut arg: libc::c_int = 0;
        // SAFETY: FIFREEZE takes an int argument; `dir` is a valid open fd.
        if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, &mut arg) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io_error(
                format_args!("freezing the filesystem at {}", mount_point.display()),
                e,
            ));
        }
        Ok(Some(Frozen(dir, mount_point)))
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

/// Where the filesystem of device `rdev` is mounted (any one of its
/// mounts), from /proc/self/mountinfo.
fn mount_point_of(rdev: u64) -> Result<Option<PathBuf>, CapError> {
    let wanted = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(2) == Some(&wanted.as_str()))
            .then(|| fields.get(4).map(|p| PathBuf::from(unescape(p))))
            .flatten()
    }))
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

/// Opens (creating it when missing) the regular file a copy goes to,
/// beneath the root, never through a link; emptied.
fn destination(fs: &FsCap, path: &str, source: BorrowedFd) -> Result<File, CapError> {
    let (parent, name) = fs.parent_of(path)?;
    let fd = rustix::fs::openat2(
        parent.as_fd(),
        name,
        OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|e| beneath::lookup_error(path, e))?;
    beneath::require_type(&fd, FileType::RegularFile, path)?;
    if beneath::identity(fd.as_fd())? == beneath::identity(source)? {
        return Err(CapError::invalid("an image cannot be copied onto itself"));
    }
    fs.refuse_attached(fd.as_fd(), path)?;
    let file = File::from(fd);
    file.set_len(0)
        .map_err(|e| io_error(format_args!("emptying {path}"), e))?;
    Ok(file)
}

impl FsCap {
    /// Copies an image (blocking): frozen if its filesystem is mounted,
    /// flushed if it is only attached.
    fn copy_image(&self, source: &str, destination_path: &str) -> Result<CopyMethod, CapError> {
        let src = File::from(self.image(source, false)?);
        let dst = destination(self, destination_path, src.as_fd())?;
        let device = self.attached(src.as_fd())?;
        let frozen = match &device {
            Some(dev) => Frozen::freeze(dev)?,
            None => None,
        };
        if let (Some(dev), None) = (&device, &frozen) {
            rustix::fs::fsync(&dev.fd)
                .map_err(|e| CapError::internal(format!("flushing {}: {e}", dev.name)))?;
        }
        let method = copy_fds(&src, &dst)
            .map_err(|e| io_error(format_args!("copying {source} to {destination_path}"), e))?;
        drop(frozen);
        dst.sync_all()
            .map_err(|e| io_error(format_args!("syncing {destination_path}"), e))?;
        Ok(method)
    }
}

impl Host for CallState {
    async fn copy_image(&mut self, source: String, destination: String) -> CapResult<CopyMethod> {
        Ok(with_fs(&self.grants, move |fs| fs.copy_image(&source, &destination)).await?)
    }

    async fn read_only_snapshot(&mut self, source: String, path: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| {
            let src = fs.subvolume(&source)?;
            let (parent, name) = fs.parent_of(&path)?;
            btrfs::snapshot(src.as_fd(), parent.as_fd(), name, true)
        })
        .await?)
    }

    async fn new_filesystem_uuid(&mut self, image: String, fs_type: String) -> CapResult<()> {
        let name = image.clone();
        let fd = with_fs(&self.grants, move |fs| {
            let fd = fs.image(&image, true)?;
            fs.refuse_attached(fd.as_fd(), &image)?;
            Ok(fd)
        })
        .await?;
        match fs_type.as_str() {
            "xfs" => {
                // xfs_admin exits 0 even when it refuses (a dirty log).
                let args = ["-U", "generate", FD_ARG];
                let out = command::run_on_fd("xfs_admin", &args, fd.as_fd()).await?;
                let said = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() || said.contains("ERROR") {
                    return Err(CapError::new(
                        ErrorCode::FailedPrecondition,
                        format!("xfs_admin -U generate {name}: {}", said.trim()),
                    )
                    .into());
                }
            }
            "ext4" => {
                // tune2fs wants a freshly checked filesystem for -U.
                let out = command::run_on_fd("e2fsck", &["-f", "-p", FD_ARG], fd.as_fd()).await?;
                if !matches!(out.status.code(), Some(0..=2)) {
                    return Err(command::failure("e2fsck", &["-f", "-p", FD_ARG], &out).into());
                }
                command::run_on_fd_ok("tune2fs", &["-U", "random", FD_ARG], fd.as_fd()).await?;
            }
            other => {
                return Err(CapError::invalid(format!(
                    "filesystem type {other:?} is not supported (supported: xfs, ext4)"
                ))
                .into())
            }
        }
        Ok(())
    }

    async fn allocated_bytes(&mut self, path: String) -> CapResult<u64> {
        Ok(with_fs(&self.grants, move |fs| {
            let fd = beneath::open(fs.locate(&path)?, OFlags::PATH)?;
            let st =
                rustix::fs::fstat(&fd).map_err(|e| CapError::internal(format!("{path:?}: {e}")))?;
            Ok((st.st_blocks as u64).saturating_mul(512))
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

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
