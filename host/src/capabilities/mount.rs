//! The `mount` capability: mounts and bind mounts, only of granted
//! filesystem types, only with allow-listed options, and only onto the
//! paths the call was given (see `call_paths`), which must lie beneath
//! granted prefixes (the outer fence). Block filesystems may only be
//! mounted from loop devices of the plugin's own images; bind sources must
//! lie beneath the plugin root or the call's staging path, or be a loop
//! device of the plugin's.
//!
//! Everything is done on descriptors (see `beneath`): the target is opened
//! beneath its prefix (directories made with `mkdirat`, never through a
//! link), the source is an open loop device or an `O_PATH` descriptor, and
//! the mount is made with the new mount API — `fsopen`/`fsconfig`/`fsmount`
//! for a filesystem, `open_tree(OPEN_TREE_CLONE)` for a bind — and attached
//! with `move_mount` onto the target's descriptor. Every mount the host
//! makes is `nosuid,nodev` (a block volume's device bind keeps `dev`), and
//! `noexec` too when the grant says so.
//!
//! tmpfs has no device: its source is a name, recorded in the mount table
//! as `wasmcsi:<plugin>:<name>`, and it must be given a size. That tag is
//! how `reconfigure` (`fspick` on the target's descriptor, `fsconfig`,
//! `FSCONFIG_CMD_RECONFIGURE`) knows a superblock is one this plugin made:
//! a bind mount carries its source's tag, so binding the node's own tmpfs
//! (or a directory of the root on one) under a prefix gets no such tag.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use rustix::fs::{FileType, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_reconfigure, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    fspick, move_mount, open_tree, FsMountFlags, FsOpenFlags, FsPickFlags, MountAttrFlags,
    MoveMountFlags, OpenTreeFlags,
};
use serde::Deserialize;
use wasmtime::component::{HasData, Linker};

use super::beneath::{self, GrantedDir, Located};
use super::call_paths::{Action, CallPaths};
use super::loopdev::LoopDevice;
use super::mount_options::{self, MountOptions};
use super::root::PluginRoot;
use super::tmpfs::{self, MemoryBound};
use super::{blocking, granted, netmount, CallCaps, CapError, CapResult, HasCallCaps};
use crate::config::env;
use crate::sys::mountinfo::{self, MountInfo};
use crate::wit::wasmcsi::plugin::mount::{self as wit, Host, MountEntry};
use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// The config's `capabilities.mount`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountGrant {
    /// Filesystem types the plugin may mount (`xfs`, `ext4`, `nfs`, ...).
    #[serde(default)]
    pub types: Vec<String>,
    /// Mount targets must resolve under one of these directories.
    pub target_prefixes: Vec<PathBuf>,
    /// Every mount the plugin makes is also `noexec` (always `nosuid,nodev`).
    #[serde(default, deserialize_with = "env::scalar")]
    pub noexec: bool,
    /// Test aid for nodes without an NFS client: network mounts are
    /// appended to this file (one JSON line each) instead of performed, and
    /// a 1 MiB tmpfs named like the export stands in at the target.
    #[serde(default)]
    pub record_network_mounts: Option<PathBuf>,
    /// Bytes of node memory the plugin's tmpfs mounts may take: each one,
    /// and all its live ones together. Default: a quarter of the node's
    /// memory (MemTotal, read at start).
    #[serde(default = "default_tmpfs_max_bytes", deserialize_with = "env::scalar")]
    pub tmpfs_max_bytes: u64,
}

fn default_tmpfs_max_bytes() -> u64 {
    tmpfs::node_memory_bytes()
        .map(|bytes| bytes / 4)
        .unwrap_or(1 << 30)
}

impl MountGrant {
    /// Checks the grant as the config is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.target_prefixes.is_empty() {
            bail!("capabilities.mount.targetPrefixes must list at least one directory");
        }
        for prefix in &self.target_prefixes {
            if !prefix.is_absolute() || prefix == Path::new("/") {
                bail!("capabilities.mount.targetPrefixes entry {prefix:?} must be an absolute directory other than /");
            }
        }
        for t in &self.types {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                bail!("capabilities.mount.types entry {t:?} is not a filesystem type name");
            }
        }
        if self.tmpfs_max_bytes < 4096 {
            bail!("capabilities.mount.tmpfsMaxBytes must be at least 4096 (one page)");
        }
        Ok(())
    }
}

/// Filesystem types whose source is a remote address, not a device.
const NETWORK_TYPES: &[&str] = &["nfs", "nfs4", "cifs", "smb3"];
/// Filesystem types with no device: their source is a name.
const MEMORY_TYPES: &[&str] = &["tmpfs"];

/// The mount unit's state, built once per plugin.
pub struct MountCap {
    pub types: Vec<String>,
    /// Directories mount targets must lie beneath, opened once.
    prefixes: Arc<[GrantedDir]>,
    /// Every mount is also `noexec`.
    noexec: bool,
    fs: Option<Arc<PluginRoot>>,
    record_network_mounts: Option<PathBuf>,
    /// `wasmcsi:<plugin>:`, the source of every tmpfs this plugin mounts.
    memory_tag: String,
    /// What its tmpfs mounts may take of the node's memory.
    memory: MemoryBound,
}

impl MountCap {
    pub fn new(grant: &MountGrant, fs: Option<Arc<PluginRoot>>, plugin: &str) -> Result<MountCap> {
        Ok(MountCap {
            types: grant.types.clone(),
            prefixes: grant
                .target_prefixes
                .iter()
                .map(|p| GrantedDir::open(p))
                .collect::<Result<Vec<_>>>()?
                .into(),
            noexec: grant.noexec,
            fs,
            record_network_mounts: grant.record_network_mounts.clone(),
            memory_tag: format!("wasmcsi:{plugin}:"),
            memory: MemoryBound::new(grant.tmpfs_max_bytes),
        })
    }

    pub fn prefix_dirs(&self) -> Vec<&GrantedDir> {
        self.prefixes.iter().collect()
    }

    /// The target prefixes, shared with the units that look beneath them.
    pub fn prefixes(&self) -> Arc<[GrantedDir]> {
        self.prefixes.clone()
    }

    /// A mount target: strictly beneath a granted prefix (the outer
    /// fence), and a path the call was given for `action`.
    fn target<'p>(
        &self,
        target: &'p str,
        call: &CallPaths,
        action: Action,
    ) -> Result<Located<'_, 'p>, CapError> {
        let at =
            beneath::locate(&self.prefix_dirs(), target, "mount target")?.below("mount target")?;
        call.allows(action, target)?;
        Ok(at)
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

    fn fs(&self) -> Result<&PluginRoot, CapError> {
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

    /// The attributes of a new mount: the grant's, the options', read-only
    /// when asked.
    fn attrs_for(&self, options: &MountOptions) -> MountAttrFlags {
        let mut attrs = self.base_attrs() | options.attrs;
        if options.read_only {
            attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
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
        call: &CallPaths,
    ) -> Result<(), CapError> {
        let dev = super::loopdev::owned(source, &self.fs()?.root)?;
        let target_fd = beneath::open_dir_creating(self.target(target, call, Action::Mount)?)?;
        if let Some(existing) = mount_at(target_fd.as_fd())? {
            let same = existing.fs_type == fs_type && fs_device(target_fd.as_fd())? == dev.rdev;
            return if same {
                Ok(())
            } else {
                Err(already(target, &existing))
            };
        }
        let attrs = self.attrs_for(options);
        let mnt = new_filesystem(&dev, fs_type, options, attrs)?;
        attach(mnt.as_fd(), target_fd.as_fd(), target)
    }

    /// Mounts a new tmpfs named `name` onto `target` (blocking).
    fn mount_memory(
        &self,
        name: &str,
        target: &str,
        fs_type: &str,
        mut options: MountOptions,
        call: &CallPaths,
    ) -> Result<(), CapError> {
        check_memory_name(name)?;
        let asked = tmpfs::check(&mut options, &self.memory, true)?;
        let bytes = asked.bytes.expect("a new tmpfs is given a size");
        let source = format!("{}{name}", self.memory_tag);
        let target_fd = beneath::open_dir_creating(self.target(target, call, Action::Mount)?)?;
        if let Some(existing) = mount_at(target_fd.as_fd())? {
            return if existing.fs_type == fs_type && existing.source == source {
                Ok(())
            } else {
                Err(already(target, &existing))
            };
        }
        let _accounting = tmpfs::ACCOUNTING.lock().unwrap_or_else(|e| e.into_inner());
        tmpfs::check_total(&self.memory_tag, &self.memory, bytes, None)?;
        let attrs = self.attrs_for(&options);
        let mnt = new_superblock(&source, fs_type, &options, attrs)?;
        attach(mnt.as_fd(), target_fd.as_fd(), target)
    }

    /// New filesystem parameters for the tmpfs this plugin mounted exactly
    /// at `target` (blocking). The mount is found by descriptor, beneath
    /// the grant, and that descriptor is what is checked and what `fspick`
    /// takes: no path is looked up again.
    fn reconfigure(
        &self,
        target: &str,
        options: &[String],
        call: &CallPaths,
    ) -> Result<(), CapError> {
        let nothing = || {
            CapError::new(
                ErrorCode::FailedPrecondition,
                format!("nothing is mounted at {target} to reconfigure"),
            )
        };
        let fd = match beneath::open(
            self.target(target, call, Action::Reconfigure)?,
            OFlags::PATH,
        ) {
            Ok(fd) => fd,
            Err(e) if e.code == ErrorCode::NotFound => return Err(nothing()),
            Err(e) => return Err(e),
        };
        let existing = mount_at(fd.as_fd())?.ok_or_else(nothing)?;
        if !MEMORY_TYPES.contains(&existing.fs_type.as_str())
            || !existing.source.starts_with(&self.memory_tag)
        {
            return Err(CapError::denied(format!(
                "{target} has {} ({}) mounted, not a tmpfs this plugin mounted: only those \
                 can be reconfigured",
                existing.source, existing.fs_type
            )));
        }
        self.check_type(&existing.fs_type)?;
        let mut options = mount_options::check(&existing.fs_type, options)?;
        if options.read_only || !options.attrs.is_empty() {
            return Err(CapError::invalid(
                "reconfigure changes filesystem parameters (size=...), not ro or mount attributes",
            ));
        }
        let asked = tmpfs::check(&mut options, &self.memory, false)?;
        let _accounting = tmpfs::ACCOUNTING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = asked.bytes {
            let dev = fs_device(fd.as_fd())?;
            let superblock = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
            tmpfs::check_total(&self.memory_tag, &self.memory, bytes, Some(&superblock))?;
        }
        let fs = fspick(
            fd.as_fd(),
            "",
            FsPickFlags::FSPICK_CLOEXEC
                | FsPickFlags::FSPICK_EMPTY_PATH
                | FsPickFlags::FSPICK_NO_AUTOMOUNT
                | FsPickFlags::FSPICK_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| CapError::internal(format!("fspick {target}: {e}")))?;
        // A parameter the kernel refuses is the plugin's mistake; the
        // reconfigure itself refused (tmpfs: "Too small a size for current
        // use") is the filesystem's state.
        let said = |what: &str, e: rustix::io::Errno| {
            let code = match (what, e) {
                ("reconfigure", rustix::io::Errno::INVAL | rustix::io::Errno::BUSY) => {
                    ErrorCode::FailedPrecondition
                }
                (_, rustix::io::Errno::INVAL) => ErrorCode::InvalidArgument,
                _ => ErrorCode::Internal,
            };
            CapError::new(
                code,
                format!(
                    "reconfiguring {target}: {what}: {e}{}",
                    kernel_messages(fs.as_fd())
                ),
            )
        };
        set_params(fs.as_fd(), &options).map_err(|(key, e)| said(&key, e))?;
        fsconfig_reconfigure(fs.as_fd()).map_err(|e| said("reconfigure", e))
    }

    /// Bind-mounts `source` onto `target` (blocking).
    fn bind(
        &self,
        source: &str,
        target: &str,
        read_only: bool,
        call: &CallPaths,
    ) -> Result<(), CapError> {
        let mut attrs = self.base_attrs();
        let (source_fd, is_dir) = if source.starts_with("/dev/") {
            // A raw block volume: the device node itself, so `dev` stays.
            let dev = super::loopdev::owned(source, &self.fs()?.root)?;
            attrs.remove(MountAttrFlags::MOUNT_ATTR_NODEV);
            (dev.fd, false)
        } else {
            let at = self.bind_source(source, call)?;
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
        let at = self.target(target, call, Action::Mount)?;
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

    /// Where a bind source that is not a device may come from: beneath the
    /// plugin root, or beneath the call's staging path (under a prefix).
    /// Nothing else under a prefix (another pod's volume, another volume's
    /// staging path) is the plugin's to show anywhere.
    fn bind_source<'p>(
        &self,
        source: &'p str,
        call: &CallPaths,
    ) -> Result<Located<'_, 'p>, CapError> {
        beneath::check_syntax(source)?;
        if let Some(fs) = &self.fs {
            if let Ok(at) = beneath::locate(&[&fs.root], source, "bind source") {
                return Ok(at);
            }
        }
        let outside = || {
            let root = self
                .fs
                .as_ref()
                .map(|fs| fs.root.path().display().to_string())
                .unwrap_or_else(|| "none granted".into());
            CapError::denied(format!(
                "bind source {source:?} is outside the allowed directories: the plugin root \
                 ({root}) or the staging path of this call"
            ))
        };
        let at =
            beneath::locate(&self.prefix_dirs(), source, "bind source").map_err(|_| outside())?;
        if !call.may_bind_from(source) {
            return Err(outside());
        }
        Ok(at)
    }

    /// Takes every mount stacked on `target` off, then optionally removes
    /// the emptied directory (or empty file) (blocking).
    fn unmount(&self, target: &str, remove_target: bool, call: &CallPaths) -> Result<(), CapError> {
        unmount_beneath(self.target(target, call, Action::Mount)?, remove_target)
    }

    fn mounted_at(&self, target: &str, call: &CallPaths) -> Result<Option<MountEntry>, CapError> {
        match beneath::open(self.target(target, call, Action::Look)?, OFlags::PATH) {
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
        call: CallPaths,
    ) -> Result<(), CapError> {
        check_remote_source(source)?;
        let this = self.clone();
        let (t, s, f) = (target.to_string(), source.to_string(), fs_type.to_string());
        let recording = self.record_network_mounts.is_some();
        let target_fd = blocking::run(move || {
            let fd = beneath::open_dir_creating(this.target(&t, &call, Action::Mount)?)?;
            if let Some(existing) = mount_at(fd.as_fd())? {
                let kind = existing.fs_type.starts_with(f.trim_end_matches('4'))
                    || (recording && existing.fs_type == "tmpfs");
                let same = kind && same_source(&existing.source, &s);
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
            record_mount(log, source, target, fs_type, &options.text)?;
            let (s, t) = (source.to_string(), target.to_string());
            return blocking::run(move || stand_in(&s, target_fd.as_fd(), &t)).await;
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
    // The name of the device the host holds open and checked; the check
    // below makes sure the kernel found that very device by it.
    let mnt = new_superblock(&dev.name, fs_type, options, attrs)?;
    if fs_device(mnt.as_fd())? != dev.rdev {
        return Err(CapError::internal(format!(
            "{} changed while it was being mounted",
            dev.name
        )));
    }
    Ok(mnt)
}

/// A new filesystem of `fs_type` from `source` with checked options, as a
/// detached mount.
fn new_superblock(
    source: &str,
    fs_type: &str,
    options: &MountOptions,
    attrs: MountAttrFlags,
) -> Result<OwnedFd, CapError> {
    let fs = fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| CapError::internal(format!("fsopen {fs_type}: {e}")))?;
    let said = |what: &str, e: rustix::io::Errno| {
        CapError::internal(format!(
            "mounting {source} as {fs_type}: {what}: {e}{}",
            kernel_messages(fs.as_fd())
        ))
    };
    fsconfig_set_string(fs.as_fd(), "source", source).map_err(|e| said("source", e))?;
    if options.read_only {
        fsconfig_set_flag(fs.as_fd(), "ro").map_err(|e| said("ro", e))?;
    }
    set_params(fs.as_fd(), options).map_err(|(key, e)| said(&key, e))?;
    fsconfig_create(fs.as_fd()).map_err(|e| said("create", e))?;
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| said("fsmount", e))
}

/// The checked filesystem parameters, onto a filesystem context.
fn set_params(fs: BorrowedFd, options: &MountOptions) -> Result<(), (String, rustix::io::Errno)> {
    for (key, value) in &options.params {
        match value {
            Some(v) => fsconfig_set_string(fs, key.as_str(), v.as_str()),
            None => fsconfig_set_flag(fs, key.as_str()),
        }
        .map_err(|e| (key.clone(), e))?;
    }
    Ok(())
}

/// A tmpfs's name: what the mount table shows after the plugin's tag.
fn check_memory_name(name: &str) -> Result<(), CapError> {
    let ok = !name.is_empty()
        && name.len() <= 96
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "a tmpfs source is a name (1-96 of A-Z a-z 0-9 . _ -), not {:?}",
            // Debug escapes control characters; the cut bounds the length.
            name.chars().take(100).collect::<String>()
        )))
    }
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

/// Takes down every mount stacked at `at` and, with `remove`, the emptied
/// target: the one unmount path, for a plugin's `unmount` and for the
/// host's own unmount of a volume whose plugin is gone.
pub fn unmount_beneath(at: Located, remove: bool) -> Result<(), CapError> {
    unmount_all(at)?;
    if remove {
        remove_empty(at)?;
    }
    Ok(())
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
    mountinfo::parse(info)
        .into_iter()
        .find(|m| m.id == mount_id)
        .map(entry)
}

/// A mount table line as the plugin sees it.
fn entry(m: MountInfo) -> MountEntry {
    MountEntry {
        read_only: m.read_only(),
        source: m.source,
        fs_type: m.fs_type,
    }
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

/// What a recorded network mount leaves in the mount table: a small tmpfs
/// named like the export, so the node sees a mount at the target as it
/// would with the real one (the host's records of who holds a path, stats,
/// unmount).
fn stand_in(source: &str, target_fd: BorrowedFd, target: &str) -> Result<(), CapError> {
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| CapError::internal(format!("fsopen tmpfs: {e}")))?;
    let said = |what: &str, e: rustix::io::Errno| {
        CapError::internal(format!("a stand-in for {source} at {target}: {what}: {e}"))
    };
    fsconfig_set_string(fs.as_fd(), "source", source).map_err(|e| said("source", e))?;
    fsconfig_set_string(fs.as_fd(), "size", "1m").map_err(|e| said("size", e))?;
    fsconfig_create(fs.as_fd()).map_err(|e| said("create", e))?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| said("fsmount", e))?;
    attach(mnt.as_fd(), target_fd, target)
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

/// The `mount` interface as the linker sees it.
pub struct Mount;

impl HasData for Mount {
    type Data<'a> = MountView<'a>;
}

/// One call's view of `mount`: the grant and the paths the call was given.
pub struct MountView<'a> {
    cap: Option<&'a Arc<MountCap>>,
    paths: &'a CallPaths,
    plugin: &'a str,
}

impl<'a> MountView<'a> {
    /// The view of the call's `mount` state.
    pub fn of(call: &'a CallCaps) -> MountView<'a> {
        MountView {
            cap: call.grants.mount.as_ref(),
            paths: &call.mounts,
            plugin: &call.grants.plugin,
        }
    }

    fn cap(&self) -> Result<&'a Arc<MountCap>, CapError> {
        granted(self.cap, "mount", self.plugin)
    }
}

/// Links `mount`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Mount>(linker, |t| MountView::of(t.call_caps()))
}

/// Runs `f` on the mount grant and the call's paths, off the async workers.
async fn with_mount<T: Send + 'static>(
    view: &MountView<'_>,
    f: impl FnOnce(&MountCap, &CallPaths) -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    let mount = view.cap()?.clone();
    let call = view.paths.clone();
    blocking::run(move || f(&mount, &call)).await
}

impl Host for MountView<'_> {
    async fn mount(
        &mut self,
        source: String,
        target: String,
        fs_type: String,
        options: Vec<String>,
    ) -> CapResult<()> {
        let cap = self.cap()?.clone();
        cap.check_type(&fs_type)?;
        let options = mount_options::check(&fs_type, &options)?;
        if NETWORK_TYPES.contains(&fs_type.as_str()) {
            return Ok(cap
                .mount_network(&source, &target, &fs_type, options, self.paths.clone())
                .await?);
        }
        if MEMORY_TYPES.contains(&fs_type.as_str()) {
            return Ok(with_mount(self, move |m, call| {
                m.mount_memory(&source, &target, &fs_type, options, call)
            })
            .await?);
        }
        Ok(with_mount(self, move |m, call| {
            m.mount_device(&source, &target, &fs_type, &options, call)
        })
        .await?)
    }

    async fn bind(&mut self, source: String, target: String, read_only: bool) -> CapResult<()> {
        Ok(with_mount(self, move |m, call| {
            m.bind(&source, &target, read_only, call)
        })
        .await?)
    }

    async fn unmount(&mut self, target: String, remove_target: bool) -> CapResult<()> {
        Ok(with_mount(self, move |m, call| m.unmount(&target, remove_target, call)).await?)
    }

    async fn mounted_at(&mut self, target: String) -> CapResult<Option<MountEntry>> {
        Ok(with_mount(self, move |m, call| m.mounted_at(&target, call)).await?)
    }

    async fn reconfigure(&mut self, target: String, options: Vec<String>) -> CapResult<()> {
        Ok(with_mount(self, move |m, call| m.reconfigure(&target, &options, call)).await?)
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

    fn opts(list: &[&str]) -> MountOptions {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        mount_options::check("tmpfs", &list).unwrap()
    }

    fn total_bytes(path: &Path) -> u64 {
        let st = rustix::fs::statvfs(path).unwrap();
        st.f_blocks * st.f_frsize
    }

    /// Unmounts whatever the test mounted, also when it fails.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                while nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
            }
        }
    }

    fn cap(prefix: &Path, plugin: &str) -> MountCap {
        let grant = MountGrant {
            types: vec!["tmpfs".into()],
            target_prefixes: vec![prefix.to_path_buf()],
            noexec: false,
            record_network_mounts: None,
            tmpfs_max_bytes: 64 << 20,
        };
        MountCap::new(&grant, None, plugin).unwrap()
    }

    /// reconfigure reaches only a tmpfs the plugin itself mounted beneath
    /// its prefix: not the node's tmpfs outside it (by path, through a
    /// link, or bound in), not one mounted under the prefix by someone
    /// else, not another plugin's. Needs root (it mounts).
    #[test]
    fn reconfigure_touches_only_the_plugins_own_tmpfs_under_its_prefixes() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("kubelet");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&prefix).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let foreign_in = prefix.join("foreign");
        std::fs::create_dir_all(&foreign_in).unwrap();
        let mut cleanup = Cleanup(vec![]);
        for dir in [&outside, &foreign_in] {
            nix::mount::mount(
                Some("tmpfs"),
                dir.as_path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m"),
            )
            .expect("mounting a tmpfs (run as root)");
            cleanup.0.push(dir.clone());
        }
        std::fs::create_dir_all(outside.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, prefix.join("link")).unwrap();
        let m = cap(&prefix, "scratch");
        let s = |p: &Path| p.display().to_string();
        // Each step as a node call given that very path would make it.
        let at = |p: &Path| CallPaths::stage(&p.display().to_string());

        // Its own: mounted with a size, then grown in place, data kept.
        let own = prefix.join("staging/v1");
        cleanup.0.push(own.clone());
        m.mount_memory("v1", &s(&own), "tmpfs", opts(&["size=1m"]), &at(&own))
            .unwrap();
        m.mount_memory("v1", &s(&own), "tmpfs", opts(&["size=1m"]), &at(&own))
            .expect("the same mount again is success");
        std::fs::write(own.join("kept"), b"x").unwrap();
        assert_eq!(total_bytes(&own), 1 << 20);
        m.reconfigure(&s(&own), &["size=3m".into()], &at(&own))
            .unwrap();
        assert_eq!(total_bytes(&own), 3 << 20);
        assert_eq!(std::fs::read(own.join("kept")).unwrap(), b"x");
        let entry = m.mounted_at(&s(&own), &at(&own)).unwrap().unwrap();
        assert_eq!(entry.source, "wasmcsi:scratch:v1");

        // Not unlimited, never without a size, no attributes.
        for bad in [&["size=0"][..], &["nr_blocks=0k"], &["ro"], &["noatime"]] {
            let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let e = m.reconfigure(&s(&own), &bad, &at(&own)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad:?}: {}", e.message);
        }
        let v2 = prefix.join("v2");
        let e = m
            .mount_memory("v2", &s(&v2), "tmpfs", opts(&["mode=700"]), &at(&v2))
            .unwrap_err();
        assert!(e.message.contains("must have a size"), "{}", e.message);
        let v3 = prefix.join("v3");
        let e = m
            .mount_memory("../x", &s(&v3), "tmpfs", opts(&["size=1m"]), &at(&v3))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        // Shrinking below what is used: the kernel refuses.
        std::fs::write(own.join("big"), vec![1u8; 2 << 20]).unwrap();
        let e = m
            .reconfigure(&s(&own), &["size=1m".into()], &at(&own))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{}", e.message);

        // The node's tmpfs outside the prefix: by path, through a link.
        for target in [
            s(&outside),
            s(&prefix.join("link")),
            s(&prefix.join("link/d")),
        ] {
            let call = CallPaths::stage(&target);
            let e = m
                .reconfigure(&target, &["size=5m".into()], &call)
                .unwrap_err();
            assert_ne!(e.code, ErrorCode::Internal, "{target}: {}", e.message);
        }
        // Someone else's tmpfs under the prefix, directly or bound in.
        let bound = prefix.join("bound");
        cleanup.0.push(bound.clone());
        let publish = CallPaths::publish(&s(&bound), Some(&s(&foreign_in)));
        m.bind(&s(&foreign_in), &s(&bound), false, &publish)
            .unwrap();
        for target in [&foreign_in, &bound] {
            let e = m
                .reconfigure(&s(target), &["size=5m".into()], &at(target))
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{}", e.message);
        }
        // Another plugin's, under the same prefix.
        let other = cap(&prefix, "other");
        let e = other
            .reconfigure(&s(&own), &["size=5m".into()], &at(&own))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{}", e.message);
        // Nothing mounted is not an unmount's "success".
        let none = prefix.join("none");
        let e = m
            .reconfigure(&s(&none), &["size=5m".into()], &at(&none))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);

        assert_eq!(
            total_bytes(&outside),
            1 << 20,
            "the node's tmpfs kept its size"
        );
        assert_eq!(total_bytes(&foreign_in), 1 << 20);
        assert_eq!(total_bytes(&own), 3 << 20);
    }

    #[test]
    fn remote_sources_are_checked() {
        assert!(check_remote_source("10.0.0.1:/sdsfs/x").is_ok());
        assert!(check_remote_source("-oexec").is_err());
        assert!(check_remote_source("/dev/sda").is_err());
        assert!(check_remote_source("h:/a,b").is_err());
    }
}
