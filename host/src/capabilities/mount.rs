//! The `mount` capability: mounts and bind mounts, only of granted
//! filesystem types, only with allow-listed options, and only onto targets
//! beneath granted prefixes. Block filesystems may only be mounted from
//! loop devices of the plugin's own images; bind sources must lie beneath
//! the plugin root or a granted prefix.
//!
//! Everything is done on descriptors (see `beneath`): the target is opened
//! beneath its prefix (directories made with `mkdirat`, never through a
//! link), the source is an open loop device or an `O_PATH` descriptor, and
//! the mount is made with the new mount API — `fsopen`/`fsconfig`/`fsmount`
//! for a filesystem, `open_tree(OPEN_TREE_CLONE)` for a bind — and attached
//! with `move_mount` onto the target's descriptor. Every mount the host
//! makes is `nosuid,nodev` (a block volume's device bind keeps `dev`), and
//! `noexec` too when the grant says so.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use rustix::fs::{FileType, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use super::beneath::{self, GrantedDir, Located};
use super::fs::FsCap;
use super::loopdev::LoopDevice;
use super::mount_options::{self, MountOptions};
use super::{blocking, netmount, CallCaps, CapError, CapResult, Grants};
use crate::config::MountGrant;
use crate::wit::wasmcsi::plugin::mount::{Host, MountEntry};
use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// Filesystem types whose source is a remote address, not a device.
const NETWORK_TYPES: &[&str] = &["nfs", "nfs4", "cifs", "smb3"];

pub struct MountCap {
    pub types: Vec<String>,
    /// Directories mount targets must lie beneath, opened once.
    pub prefixes: Vec<GrantedDir>,
    /// Every mount is also `noexec`.
    noexec: bool,
    fs: Option<Arc<FsCap>>,
    record_network_mounts: Option<PathBuf>,
}

impl MountCap {
    pub fn new(grant: &MountGrant, fs: Option<Arc<FsCap>>) -> Result<MountCap> {
        Ok(MountCap {
            types: grant.types.clone(),
            prefixes: grant
                .target_prefixes
                .iter()
                .map(|p| GrantedDir::open(p))
                .collect::<Result<_>>()?,
            noexec: grant.noexec,
            fs,
            record_network_mounts: grant.record_network_mounts.clone(),
        })
    }

    pub fn prefix_dirs(&self) -> Vec<&GrantedDir> {
        self.prefixes.iter().collect()
    }

    /// A mount target: strictly beneath a granted prefix.
    fn target<'p>(&self, target: &'p str) -> Result<Located<'_, 'p>, CapError> {
        beneath::locate(&self.prefix_dirs(), target, "mount target")?.below("mount target")
    }

    fn check_type(&self, fs_type: &str) -> Result<(), CapError> {
        if self.types.iter().any(|t| t == fs_type) {
            Ok(())
        } else {
            Err(CapError::denied(format!(
                "filesystem type {fs_type:?} is not granted (granted: {})",
                self.types.join(", ")
            )))
        }
    }

    fn fs(&self) -> Result<&FsCap, CapError> {
        self.fs.as_deref().ok_or_else(|| {
            CapError::denied(
                "mounting a device needs the fs capability (the device must back an image under the plugin root)",
            )
        })
    }

    /// The attributes of every mount the host makes.
    fn base_attrs(&self) -> MountAttrFlags {
        let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
        if self.noexec {
            attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
        }
        attrs
    }

    /// Mounts a loop device of the plugin's onto `target` (blocking).
    fn mount_device(
        &self,
        source: &str,
        target: &str,
        fs_type: &str,
        options: &MountOptions,
    ) -> Result<(), CapError> {
        let dev = super::loopdev::owned(source, &self.fs()?.root)?;
        let target_fd = beneath::open_dir_creating(self.target(target)?)?;
        if let Some(existing) = mount_at(target_fd.as_fd())? {
            let same = existing.fs_type == fs_type && fs_device(target_fd.as_fd())? == dev.rdev;
            return if same {
                Ok(())
            } else {
                Err(already(target, &existing))
            };
        }
        let mut attrs = self.base_attrs() | options.attrs;
        if options.read_only {
            attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        }
        let mnt = new_filesystem(&dev, fs_type, options, attrs)?;
        attach(mnt.as_fd(), target_fd.as_fd(), target)
    }

    /// Bind-mounts `source` onto `target` (blocking).
    fn bind(&self, source: &str, target: &str, read_only: bool) -> Result<(), CapError> {
        let mut attrs = self.base_attrs();
        let (source_fd, is_dir) = if source.starts_with("/dev/") {
            // A raw block volume: the device node itself, so `dev` stays.
            let dev = super::loopdev::owned(source, &self.fs()?.root)?;
            attrs.remove(MountAttrFlags::MOUNT_ATTR_NODEV);
            (dev.fd, false)
        } else {
            let mut grants = self.prefix_dirs();
            if let Some(fs) = &self.fs {
                grants.push(&fs.root);
            }
            let at = beneath::locate(&grants, source, "bind source")?;
            let fd = beneath::open(at, OFlags::PATH)?;
            let st = rustix::fs::fstat(&fd)
                .map_err(|e| CapError::internal(format!("{source:?}: {e}")))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => (fd, true),
                FileType::RegularFile => (fd, false),
                _ => {
                    return Err(CapError::invalid(format!(
                        "bind source {source:?} is neither a directory nor a regular file"
                    )))
                }
            }
        };
        if read_only {
            attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        }
        let at = self.target(target)?;
        let target_fd = if is_dir {
            beneath::open_dir_creating(at)?
        } else {
            beneath::open_file_creating(at)?
        };
        if let Some(existing) = mount_at(target_fd.as_fd())? {
            let same =
                beneath::identity(target_fd.as_fd())? == beneath::identity(source_fd.as_fd())?;
            return if same && existing.read_only == read_only {
                Ok(())
            } else {
                Err(already(target, &existing))
            };
        }
        let tree = open_tree(
            source_fd.as_fd(),
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| CapError::internal(format!("cloning {source:?} for a bind mount: {e}")))?;
        set_attrs(tree.as_fd(), attrs)
            .map_err(|e| CapError::internal(format!("setting bind mount attributes: {e}")))?;
        attach(tree.as_fd(), target_fd.as_fd(), target)
    }

    /// Takes every mount stacked on `target` off, then optionally removes
    /// the emptied directory (or empty file) (blocking).
    fn unmount(&self, target: &str, remove_target: bool) -> Result<(), CapError> {
        let at = self.target(target)?;
        unmount_all(at)?;
        if remove_target {
            remove_empty(at)?;
        }
        Ok(())
    }

    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>, CapError> {
        match beneath::open(self.target(target)?, OFlags::PATH) {
            Ok(fd) => mount_at(fd.as_fd()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A network filesystem: recorded (test aid), or mounted by mount(8)
    /// in the host's private staging directory and moved onto the target.
    async fn mount_network(
        self: &Arc<Self>,
        source: &str,
        target: &str,
        fs_type: &str,
        options: MountOptions,
    ) -> Result<(), CapError> {
        check_remote_source(source)?;
        let this = self.clone();
        let (t, s, f) = (target.to_string(), source.to_string(), fs_type.to_string());
        let target_fd = blocking::run(move || {
            let fd = beneath::open_dir_creating(this.target(&t)?)?;
            if let Some(existing) = mount_at(fd.as_fd())? {
                let same = existing.fs_type.starts_with(f.trim_end_matches('4'))
                    && same_source(&existing.source, &s);
                return if same {
                    Ok(None)
                } else {
                    Err(already(&t, &existing))
                };
            }
            Ok(Some(fd))
        })
        .await?;
        let Some(target_fd) = target_fd else {
            return Ok(());
        };
        if let Some(log) = &self.record_network_mounts {
            return record_mount(log, source, target, fs_type, &options.text);
        }
        let mut text = vec!["nosuid".to_string(), "nodev".to_string()];
        if self.noexec {
            text.push("noexec".into());
        }
        text.extend(options.text);
        netmount::mount(source, fs_type, &text, target_fd, target).await
    }
}

fn already(target: &str, existing: &MountEntry) -> CapError {
    CapError::new(
        ErrorCode::AlreadyExists,
        format!(
            "{target} already has {} ({}, read-only {}) mounted, not as asked",
            existing.source, existing.fs_type, existing.read_only
        ),
    )
}

/// Makes a new filesystem instance of `dev` (detached until attached).
fn new_filesystem(
    dev: &LoopDevice,
    fs_type: &str,
    options: &MountOptions,
    attrs: MountAttrFlags,
) -> Result<OwnedFd, CapError> {
    let fs = fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| CapError::internal(format!("fsopen {fs_type}: {e}")))?;
    let said = |what: &str, e: rustix::io::Errno| {
        CapError::internal(format!(
            "mounting {} as {fs_type}: {what}: {e}{}",
            dev.name,
            kernel_messages(fs.as_fd())
        ))
    };
    // The name of the device the host holds open and checked; the check
    // below makes sure the kernel found that very device by it.
    fsconfig_set_string(fs.as_fd(), "source", dev.name.as_str()).map_err(|e| said("source", e))?;
    if options.read_only {
        fsconfig_set_flag(fs.as_fd(), "ro").map_err(|e| said("ro", e))?;
    }
    for (key, value) in &options.params {
        match value {
            Some(v) => fsconfig_set_string(fs.as_fd(), key.as_str(), v.as_str()),
            None => fsconfig_set_flag(fs.as_fd(), key.as_str()),
        }
        .map_err(|e| said(key, e))?;
    }
    fsconfig_create(fs.as_fd()).map_err(|e| said("create", e))?;
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| said("fsmount", e))?;
    if fs_device(mnt.as_fd())? != dev.rdev {
        return Err(CapError::internal(format!(
            "{} changed while it was being mounted",
            dev.name
        )));
    }
    Ok(mnt)
}

/// What the kernel said about a failed `fsconfig` (its log on the fs fd).
fn kernel_messages(fs: BorrowedFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 512];
    for _ in 0..8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                out.push_str(" (");
                out.push_str(String::from_utf8_lossy(&buf[..n]).trim());
                out.push(')');
            }
            _ => break,
        }
    }
    out
}

/// Attaches a detached mount onto the target's descriptor.
fn attach(mnt: BorrowedFd, target_fd: BorrowedFd, target: &str) -> Result<(), CapError> {
    move_mount(
        mnt,
        "",
        target_fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| CapError::internal(format!("attaching the mount at {target}: {e}")))
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, attrs)`: rustix has no wrapper.
fn set_attrs(mnt: BorrowedFd, attrs: MountAttrFlags) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: u64::from(attrs.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated empty string and `attr` is a
    // `mount_attr` of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The device of the filesystem a descriptor is on.
fn fs_device(fd: BorrowedFd) -> Result<u64, CapError> {
    Ok(beneath::identity(fd)?.0)
}

/// Unmounts every mount stacked at `at`. Each is reached as one name in a
/// descriptor of its parent directory (`/proc/self/fd/N/name`, the last
/// component not followed): the parent is the one resolved beneath the
/// grant, and the host holds no reference into the mount itself, which
/// would keep it busy.
fn unmount_all(at: Located) -> Result<(), CapError> {
    let (parent, name) = at.split()?;
    let dir = match beneath::open(parent, OFlags::PATH | OFlags::DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let path = Path::new(&beneath::fd_path(dir.as_fd())).join(name);
    for _ in 0..64 {
        let mounted = match beneath::open(at, OFlags::PATH) {
            Ok(fd) => is_mount_root(fd.as_fd())?,
            Err(e) if e.code == ErrorCode::NotFound => false,
            Err(e) => return Err(e),
        };
        if !mounted {
            return Ok(());
        }
        nix::mount::umount2(&path, nix::mount::MntFlags::UMOUNT_NOFOLLOW).map_err(|e| match e {
            nix::errno::Errno::EBUSY => CapError::new(
                ErrorCode::FailedPrecondition,
                format!("{} is busy (still in use)", at.named),
            ),
            e => CapError::internal(format!("unmounting {}: {e}", at.named)),
        })?;
    }
    Err(CapError::internal(format!(
        "{} has more than 64 mounts stacked",
        at.named
    )))
}

/// Removes the target: an empty directory, or the empty file a device was
/// bound onto. Anything else stays, and is no error.
fn remove_empty(at: Located) -> Result<(), CapError> {
    let (parent, name) = at.split()?;
    let dir = match beneath::open(parent, OFlags::PATH | OFlags::DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    use rustix::fs::AtFlags;
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(CapError::internal(format!("{}: {e}", at.named))),
    };
    let removed = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR),
        FileType::RegularFile if st.st_size == 0 => {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty())
        }
        _ => Ok(()),
    };
    match removed {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(CapError::internal(format!("removing {}: {e}", at.named))),
    }
}

/// Whether a descriptor refers to the root of a mount.
pub fn is_mount_root(fd: BorrowedFd) -> Result<bool, CapError> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| CapError::internal(format!("statx: {e}")))?;
    Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// What is mounted with its root at `fd`, if anything: the mount's own
/// line of /proc/self/mountinfo, found by mount id.
pub fn mount_at(fd: BorrowedFd) -> Result<Option<MountEntry>, CapError> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| CapError::internal(format!("statx: {e}")))?;
    if !st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(None);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(parse_mountinfo(&info, st.stx_mnt_id))
}

fn parse_mountinfo(info: &str, mount_id: u64) -> Option<MountEntry> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.first()?.parse::<u64>().ok()? != mount_id {
            return None;
        }
        let options = left.get(5)?;
        Some(MountEntry {
            source: unescape(right.get(1)?),
            fs_type: right.first()?.to_string(),
            read_only: options.split(',').any(|o| o == "ro"),
        })
    })
}

/// Appends the mount that would have run to the record file.
fn record_mount(
    log: &Path,
    source: &str,
    target: &str,
    fs_type: &str,
    options: &[String],
) -> Result<(), CapError> {
    use std::io::Write;
    let line = serde_json::json!({
        "source": source,
        "target": target,
        "fsType": fs_type,
        "options": options,
    });
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| CapError::internal(format!("recording the mount in {}: {e}", log.display())))
}

/// `host:/path` (or `//host/share` for cifs); never an option in disguise.
fn check_remote_source(source: &str) -> Result<(), CapError> {
    let ok = !source.starts_with('-')
        && source.len() <= 1024
        && !source
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        && (source.contains(":/") || source.starts_with("//"));
    if ok {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "network mount source {source:?} must look like host:/path"
        )))
    }
}

fn same_source(mounted: &str, asked: &str) -> bool {
    mounted.trim_end_matches('/') == asked.trim_end_matches('/')
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let n = d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_cap(grants: &Grants) -> Result<&Arc<MountCap>, CapError> {
    grants
        .mount
        .as_ref()
        .ok_or_else(|| CapError::not_granted("mount", &grants.plugin))
}

/// Runs `f` on the mount grant, off the async workers.
async fn with_mount<T: Send + 'static>(
    grants: Arc<Grants>,
    f: impl FnOnce(&MountCap) -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    let mount = mount_cap(&grants)?.clone();
    blocking::run(move || f(&mount)).await
}

impl Host for CallCaps {
    async fn mount(
        &mut self,
        source: String,
        target: String,
        fs_type: String,
        options: Vec<String>,
    ) -> CapResult<()> {
        let cap = mount_cap(&self.grants)?.clone();
        cap.check_type(&fs_type)?;
        let options = mount_options::check(&fs_type, &options)?;
        if NETWORK_TYPES.contains(&fs_type.as_str()) {
            return Ok(cap
                .mount_network(&source, &target, &fs_type, options)
                .await?);
        }
        Ok(with_mount(self.grants.clone(), move |m| {
            m.mount_device(&source, &target, &fs_type, &options)
        })
        .await?)
    }

    async fn bind(&mut self, source: String, target: String, read_only: bool) -> CapResult<()> {
        Ok(with_mount(self.grants.clone(), move |m| {
            m.bind(&source, &target, read_only)
        })
        .await?)
    }

    async fn unmount(&mut self, target: String, remove_target: bool) -> CapResult<()> {
        Ok(with_mount(self.grants.clone(), move |m| {
            m.unmount(&target, remove_target)
        })
        .await?)
    }

    async fn mounted_at(&mut self, target: String) -> CapResult<Option<MountEntry>> {
        Ok(with_mount(self.grants.clone(), move |m| m.mounted_at(&target)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
        40 22 7:0 / /var/lib/kubelet/a\\040b rw,relatime - xfs /dev/loop0 rw\n\
        41 40 7:0 / /var/lib/kubelet/a\\040b ro,relatime - xfs /dev/loop1 ro\n";

    #[test]
    fn mountinfo_by_mount_id_and_unescapes() {
        let e = parse_mountinfo(INFO, 41).unwrap();
        assert_eq!(e.source, "/dev/loop1");
        assert!(e.read_only);
        let e = parse_mountinfo(INFO, 40).unwrap();
        assert!(!e.read_only);
        assert!(parse_mountinfo(INFO, 4).is_none());
    }

    #[test]
    fn remote_sources_are_checked() {
        assert!(check_remote_source("10.0.0.1:/sdsfs/x").is_ok());
        assert!(check_remote_source("-oexec").is_err());
        assert!(check_remote_source("/dev/sda").is_err());
        assert!(check_remote_source("h:/a,b").is_err());
    }
}
