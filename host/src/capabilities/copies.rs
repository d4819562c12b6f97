//! Consistent copies beneath the plugin's root, for snapshots and clones:
//! image copies (the `images` unit's `copy-image(s)`) and read-only
//! subvolume snapshots (the `btrfs` unit's `read-only-snapshot(s)`).
//!
//! Image copies act on opened files: the source and the destination are
//! opened once and the data moves between the two descriptors (FICLONE,
//! else copy_file_range over the data ranges only). A source in use is
//! made consistent first: its mounted filesystem is frozen (FIFREEZE on a
//! descriptor of its mount point) for the copy and always thawed before
//! the call returns. Several images are copied as one cut: all their
//! filesystems are frozen before the first copy and thawed after the last.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{FileType, OFlags};

use super::loopdev::LoopDevice;
use super::root::PluginRoot;
use super::{beneath, CapError, ErrorCode};
use crate::sys::btrfs;
use crate::sys::mountinfo;
use crate::wit::wasmcsi::plugin::images::{CopyMethod, CopyPair};

/// Most pairs one consistent copy takes: each holds open descriptors, and
/// every frozen filesystem stalls its writers until the last copy is done.
const MAX_PAIRS: usize = 64;

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
    Ok(read_table()?
        .into_iter()
        .find(|m| m.device == wanted)
        .map(|m| m.point))
}

fn read_table() -> Result<Vec<mountinfo::MountInfo>, CapError> {
    mountinfo::read().map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))
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
fn destination(fs: &PluginRoot, path: &str, source: BorrowedFd) -> Result<File, CapError> {
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

/// One image copy, opened and checked before anything is frozen.
struct OpenedCopy<'p> {
    pair: &'p CopyPair,
    source: File,
    destination: File,
    device: Option<LoopDevice>,
}

/// A list of pairs a multi-copy takes: 1 to MAX_PAIRS, no path twice.
fn check_pairs(pairs: &[CopyPair]) -> Result<(), CapError> {
    if pairs.is_empty() || pairs.len() > MAX_PAIRS {
        return Err(CapError::invalid(format!(
            "{} copies asked for; one call takes 1 to {MAX_PAIRS}",
            pairs.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for path in pairs.iter().flat_map(|p| [&p.source, &p.destination]) {
        if !seen.insert(path.trim_end_matches('/')) {
            return Err(CapError::invalid(format!(
                "{path:?} is named twice in one copy"
            )));
        }
    }
    Ok(())
}

impl PluginRoot {
    /// Copies images as one cut (blocking): every source is opened and
    /// every destination made ready first; then all mounted sources are
    /// frozen together (attached-only ones flushed), copied, and thawed.
    pub(super) fn copy_images(&self, pairs: &[CopyPair]) -> Result<Vec<CopyMethod>, CapError> {
        check_pairs(pairs)?;
        let mut opened = Vec::with_capacity(pairs.len());
        let mut sources = std::collections::HashSet::new();
        for pair in pairs {
            let source = File::from(self.image(&pair.source, false)?);
            if !sources.insert(beneath::identity(source.as_fd())?) {
                return Err(CapError::invalid(format!(
                    "{:?} is the same image as another source",
                    pair.source
                )));
            }
            let destination = destination(self, &pair.destination, source.as_fd())?;
            let device = self.attached(source.as_fd())?;
            opened.push(OpenedCopy {
                pair,
                source,
                destination,
                device,
            });
        }
        let mut frozen = Vec::new();
        for copy in &opened {
            let Some(dev) = &copy.device else { continue };
            match Frozen::freeze(dev)? {
                Some(f) => frozen.push(f),
                None => rustix::fs::fsync(&dev.fd)
                    .map_err(|e| CapError::internal(format!("flushing {}: {e}", dev.name)))?,
            }
        }
        let mut methods = Vec::with_capacity(opened.len());
        for copy in &opened {
            let (from, to) = (&copy.pair.source, &copy.pair.destination);
            let method = copy_fds(&copy.source, &copy.destination)
                .map_err(|e| io_error(format_args!("copying {from} to {to}"), e))?;
            methods.push(method);
        }
        drop(frozen);
        for copy in &opened {
            copy.destination
                .sync_all()
                .map_err(|e| io_error(format_args!("syncing {}", copy.pair.destination), e))?;
        }
        Ok(methods)
    }

    /// Read-only snapshots of subvolumes (blocking). btrfs cuts one
    /// subvolume per transaction, so several are only one point in time
    /// when none of them can change between the cuts: none is mounted.
    pub(super) fn read_only_snapshots(&self, pairs: &[CopyPair]) -> Result<(), CapError> {
        check_pairs(pairs)?;
        let mut sources = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let source = self.subvolume(&pair.source)?;
            let (parent, name) = self.parent_of(&pair.destination)?;
            sources.push((source, parent, name.to_owned()));
        }
        if sources.len() > 1 {
            let fds: Vec<BorrowedFd> = sources.iter().map(|(s, _, _)| s.as_fd()).collect();
            if let Some((index, mount_point)) = subvolume_in_use(&fds)? {
                return Err(CapError::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "{:?} is mounted at {}: btrfs snapshots one subvolume at a time, so \
                         volumes in use cannot be cut together at one point in time",
                        pairs[index].source,
                        mount_point.display()
                    ),
                ));
            }
        }
        for (source, parent, name) in &sources {
            btrfs::snapshot(source.as_fd(), parent.as_fd(), name, true)?;
        }
        Ok(())
    }
}

/// The first subvolume of `subvolumes` that a mount shows (its root is the
/// subvolume or a directory in it), with that mount's point. A btrfs
/// subvolume has a device number of its own, which stat on a mount point
/// reports; the mounts looked at are those of the same filesystem.
fn subvolume_in_use(subvolumes: &[BorrowedFd]) -> Result<Option<(usize, PathBuf)>, CapError> {
    use rustix::fs::{AtFlags, StatxFlags};
    let table = read_table()?;
    let mut filesystems = std::collections::HashSet::new();
    let mut devices = Vec::with_capacity(subvolumes.len());
    for fd in subvolumes {
        let st = rustix::fs::statx(*fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
            .map_err(|e| CapError::internal(format!("statx: {e}")))?;
        if let Some(m) = table.iter().find(|m| m.id == st.stx_mnt_id) {
            filesystems.insert(m.device.as_str());
        }
        devices.push(rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor));
    }
    for m in &table {
        if !filesystems.contains(m.device.as_str()) {
            continue;
        }
        let point = m.point.clone();
        let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
        let Ok(st) = rustix::fs::statx(rustix::fs::CWD, &point, flags, StatxFlags::BASIC_STATS)
        else {
            continue; // gone since the table was read, or hidden: not ours
        };
        let seen = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
        if let Some(index) = devices.iter().position(|d| *d == seen) {
            return Ok(Some((index, point)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mountinfo::unescape;
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
