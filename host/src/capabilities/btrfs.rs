//! btrfs subvolumes and qgroups by ioctl on descriptors: each call names
//! at most one component, relative to a directory the host holds open, so
//! nothing is looked up by a path string. No tool is run, and no
//! transaction commit is forced (a delete used to wait for one).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::CapError;

const BTRFS_IOCTL_MAGIC: u64 = 0x94;
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;
const SUBVOL_RDONLY: u64 = 1 << 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
const QUOTA_CTL_ENABLE: u64 = 1;

const fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr) as libc::c_ulong
}
const WRITE: u64 = 1;
const READ: u64 = 2;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

const SUBVOL_CREATE: libc::c_ulong = ioc(WRITE, 14, std::mem::size_of::<VolArgs>());
const SNAP_DESTROY: libc::c_ulong = ioc(WRITE, 15, std::mem::size_of::<VolArgs>());
const INO_LOOKUP: libc::c_ulong = ioc(READ | WRITE, 18, std::mem::size_of::<InoLookupArgs>());
const SNAP_CREATE_V2: libc::c_ulong = ioc(WRITE, 23, std::mem::size_of::<VolArgsV2>());
const QUOTA_CTL: libc::c_ulong = ioc(READ | WRITE, 40, std::mem::size_of::<QuotaCtlArgs>());
const QGROUP_CREATE: libc::c_ulong = ioc(WRITE, 42, std::mem::size_of::<QgroupCreateArgs>());
const QGROUP_LIMIT: libc::c_ulong = ioc(READ, 43, std::mem::size_of::<QgroupLimitArgs>());

/// An ioctl's failure as an errno.
fn ioctl<T>(fd: BorrowedFd, request: libc::c_ulong, arg: &mut T) -> Result<(), rustix::io::Errno> {
    // SAFETY: every request here takes a pointer to the struct `T` it is
    // defined with (the request encodes its size).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::IO),
        )
    } else {
        Ok(())
    }
}

fn name_into<const N: usize>(name: &OsStr) -> Result<[u8; N], CapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= N.min(256) || bytes.contains(&b'/') || bytes.contains(&0)
    {
        return Err(CapError::invalid(format!("bad subvolume name {name:?}")));
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

fn failed(what: &str, name: &OsStr, e: rustix::io::Errno) -> CapError {
    use rustix::io::Errno;
    let message = format!("{what} {name:?}: {e}");
    match e {
        Errno::EXIST => CapError::new(super::ErrorCode::AlreadyExists, message),
        Errno::NOENT => CapError::not_found(message),
        Errno::NOTEMPTY | Errno::BUSY | Errno::PERM => {
            CapError::new(super::ErrorCode::FailedPrecondition, message)
        }
        Errno::NOSPC | Errno::DQUOT => CapError::new(super::ErrorCode::ResourceExhausted, message),
        _ => CapError::internal(message),
    }
}

/// Whether `fd` is on btrfs.
pub fn on_btrfs(fd: BorrowedFd) -> Result<bool, CapError> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| CapError::internal(format!("statfs: {e}")))?;
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether `fd` is the root directory of a btrfs subvolume.
pub fn is_subvolume(fd: BorrowedFd) -> Result<bool, CapError> {
    let st = rustix::fs::fstat(fd).map_err(|e| CapError::internal(format!("fstat: {e}")))?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    Ok(is_dir && st.st_ino == FIRST_FREE_OBJECTID && on_btrfs(fd)?)
}

/// The id of the subvolume `fd` is in (its qgroup is `0/<id>`).
pub fn subvolume_id(fd: BorrowedFd) -> Result<u64, CapError> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    ioctl(fd, INO_LOOKUP, &mut args)
        .map_err(|e| CapError::internal(format!("looking up the subvolume id: {e}")))?;
    Ok(args.treeid)
}

/// Creates subvolume `name` in directory `parent`.
pub fn create(parent: BorrowedFd, name: &OsStr) -> Result<(), CapError> {
    let mut args = VolArgs {
        fd: 0,
        name: name_into(name)?,
    };
    ioctl(parent, SUBVOL_CREATE, &mut args).map_err(|e| failed("creating subvolume", name, e))
}

/// Snapshots subvolume `source` as `name` in directory `parent`.
pub fn snapshot(
    source: BorrowedFd,
    parent: BorrowedFd,
    name: &OsStr,
    read_only: bool,
) -> Result<(), CapError> {
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_into(name)?,
    };
    ioctl(parent, SNAP_CREATE_V2, &mut args).map_err(|e| failed("snapshotting into", name, e))
}

/// Deletes subvolume `name` of directory `parent` (the kernel refuses
/// anything that is not a subvolume there). No commit is waited for.
pub fn destroy(parent: BorrowedFd, name: &OsStr) -> Result<(), CapError> {
    let mut args = VolArgs {
        fd: 0,
        name: name_into(name)?,
    };
    ioctl(parent, SNAP_DESTROY, &mut args).map_err(|e| failed("deleting subvolume", name, e))
}

/// Sets the referenced-bytes limit of subvolume `id`'s qgroup.
pub fn limit(fd: BorrowedFd, id: u64, bytes: u64) -> Result<(), CapError> {
    let mut args = QgroupLimitArgs {
        qgroupid: id,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    ioctl(fd, QGROUP_LIMIT, &mut args).map_err(|e| match e {
        rustix::io::Errno::NOTCONN => CapError::new(
            super::ErrorCode::FailedPrecondition,
            "quotas are not enabled on this btrfs filesystem: set \
             capabilities.quota.enableBtrfsQuotas in the driver config (or run \
             `btrfs quota enable` on the root once)",
        ),
        e => CapError::internal(format!("setting the qgroup limit of 0/{id}: {e}")),
    })
}

/// Removes the qgroup of a deleted subvolume; fails harmlessly while the
/// kernel still accounts for it, or when quotas are off.
pub fn destroy_qgroup(fd: BorrowedFd, id: u64) {
    let mut args = QgroupCreateArgs {
        create: 0,
        qgroupid: id,
    };
    let _ = ioctl(fd, QGROUP_CREATE, &mut args);
}

/// Turns quotas on for the filesystem of `fd` (nothing when already on).
pub fn enable_quotas(fd: BorrowedFd) -> Result<(), CapError> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    ioctl(fd, QUOTA_CTL, &mut args)
        .map_err(|e| CapError::internal(format!("enabling btrfs quotas: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // From linux/btrfs.h as compiled: _IOW(0x94, 14, vol_args) etc.
        assert_eq!(SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(SNAP_DESTROY, 0x5000_940f);
        assert_eq!(INO_LOOKUP, 0xd000_9412);
        assert_eq!(SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(QUOTA_CTL, 0xc010_9428);
        assert_eq!(QGROUP_CREATE, 0x4010_942a);
        assert_eq!(QGROUP_LIMIT, 0x8030_942b);
    }
}
