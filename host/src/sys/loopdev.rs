//! Loop devices by ioctl on descriptors: attached with `LOOP_CONFIGURE` to
//! an image the host opened beneath the plugin root, checked with
//! `LOOP_GET_STATUS64` against that image's device and inode. A device
//! counts as a plugin's only while its backing file is a file beneath the
//! plugin's root; the check is made on an open descriptor of the device,
//! which the kernel keeps bound to its file for as long as it is open, so
//! the device cannot change between the check and its use.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::beneath::{self, GrantedDir};
use super::CapError;

const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn zeroed_info() -> LoopInfo64 {
    // SAFETY: a plain C struct of integers and byte arrays; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// `/dev/loopN` → `loopN`, refusing anything that is not a loop device name.
fn kernel_name(device: &str) -> Result<&str, CapError> {
    device
        .strip_prefix("/dev/")
        .filter(|n| {
            n.strip_prefix("loop").is_some_and(|d| {
                !d.is_empty() && d.len() <= 7 && d.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .ok_or_else(|| CapError::invalid(format!("{device:?} is not a loop device (/dev/loopN)")))
}

fn ioctl_err(what: &str, device: &str) -> CapError {
    CapError::internal(format!(
        "{what} on {device}: {}",
        std::io::Error::last_os_error()
    ))
}

/// An open loop device.
pub struct LoopDevice {
    pub name: String,
    pub fd: OwnedFd,
    /// Its device number, as a mounted filesystem's `st_dev` shows it.
    pub rdev: u64,
}

impl LoopDevice {
    /// Opens `/dev/loopN`. The name is checked, and the node must be a
    /// block device of the loop driver (major 7).
    pub fn open(device: &str) -> Result<LoopDevice, CapError> {
        kernel_name(device)?;
        let fd = rustix::fs::open(device, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                Errno::NOENT | Errno::NXIO => {
                    CapError::not_found(format!("loop device {device} does not exist"))
                }
                e => CapError::internal(format!("opening {device}: {e}")),
            },
        )?;
        let st =
            rustix::fs::fstat(&fd).map_err(|e| CapError::internal(format!("{device}: {e}")))?;
        let is_block =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice;
        if !is_block || rustix::fs::major(st.st_rdev) != 7 {
            return Err(CapError::denied(format!("{device} is not a loop device")));
        }
        Ok(LoopDevice {
            name: device.to_string(),
            fd,
            rdev: st.st_rdev,
        })
    }

    /// `(st_dev, st_ino)` of the file it is bound to; `None` when unbound.
    pub fn backing(&self) -> Result<Option<(u64, u64)>, CapError> {
        let mut info = zeroed_info();
        // SAFETY: LOOP_GET_STATUS64 writes one `loop_info64` into `info`.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
        if rc == 0 {
            Ok(Some((info.lo_device, info.lo_inode)))
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(ioctl_err("LOOP_GET_STATUS64", &self.name))
        }
    }

    /// Size of the device in bytes.
    pub fn size(&self) -> Result<u64, CapError> {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if rc == 0 {
            Ok(size)
        } else {
            Err(ioctl_err("BLKGETSIZE64", &self.name))
        }
    }

    /// Makes the device see its file's new size.
    pub fn refresh(&self) -> Result<(), CapError> {
        // SAFETY: LOOP_SET_CAPACITY takes no argument.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(ioctl_err("LOOP_SET_CAPACITY", &self.name))
        }
    }

    /// Unbinds the device; while something still has it open (a mount),
    /// the kernel finishes the detach when the last user goes.
    fn detach(&self) -> Result<(), CapError> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), LOOP_CLR_FD, 0) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            Ok(())
        } else {
            Err(ioctl_err("LOOP_CLR_FD", &self.name))
        }
    }
}

/// The name sysfs gives the file behind a loop device, if bound.
fn sysfs_backing_file(device: &str) -> Option<PathBuf> {
    let name = kernel_name(device).ok()?;
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim_end_matches('\n')))
}

/// Opens `device` and checks that it is bound to a regular file beneath
/// `root`: its name in sysfs is located beneath the root's descriptor, and
/// the file found there must be the very inode the device is bound to.
pub fn owned(device: &str, root: &GrantedDir) -> Result<LoopDevice, CapError> {
    let dev = LoopDevice::open(device)?;
    let Some(bound) = dev.backing()? else {
        return Err(CapError::not_found(format!(
            "loop device {device} is not attached"
        )));
    };
    let outside = || {
        CapError::denied(format!(
            "loop device {device} is not backed by a file under the plugin root {}",
            root.path().display()
        ))
    };
    let name = sysfs_backing_file(device).ok_or_else(outside)?;
    let rel = name.strip_prefix(root.path()).map_err(|_| outside())?;
    let named = name.to_string_lossy();
    let at = beneath::Located {
        grant: root,
        rel,
        named: &named,
    };
    let file = beneath::open(at, OFlags::PATH).map_err(|_| outside())?;
    if beneath::identity(file.as_fd())? != bound {
        return Err(outside());
    }
    Ok(dev)
}

/// Which loop device each image (by device and inode) was last seen on, so
/// that finding a staged volume's device is one ioctl, not a scan of every
/// loop device on the node. Only a hint: a hit is checked on the device.
/// Attaching holds the lock, so two calls never attach one image twice.
#[derive(Default)]
pub struct LoopIndex(Mutex<HashMap<(u64, u64), String>>);

impl LoopIndex {
    /// The loop device an open image is attached to, if any.
    pub fn find(&self, image: BorrowedFd) -> Result<Option<LoopDevice>, CapError> {
        let key = beneath::identity(image)?;
        let hint = self.entries().get(&key).cloned();
        if let Some(device) = hint {
            if let Ok(dev) = LoopDevice::open(&device) {
                if dev.backing()? == Some(key) {
                    return Ok(Some(dev));
                }
            }
        }
        let found = scan(&beneath::current_path(image)?, key)?;
        self.note(key, found.as_ref().map(|d| d.name.clone()));
        Ok(found)
    }

    /// Attaches an image opened read-write, or returns the device it is
    /// already attached to. A new device is refused when `max` devices
    /// backed by files beneath `root` are attached already: counted on the
    /// node, so what earlier calls (or a driver before a restart) left
    /// attached counts too.
    pub fn attach(&self, image: BorrowedFd, root: &Path, max: u32) -> Result<LoopDevice, CapError> {
        let _one_at_a_time = ATTACHING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dev) = self.find(image)? {
            return Ok(dev);
        }
        let attached = attached_beneath(root)?;
        if attached >= max as usize {
            return Err(CapError::new(
                super::ErrorCode::ResourceExhausted,
                format!(
                    "{attached} loop devices are attached to images under {} already: \
                     limits.maxLoopDevices is {max}; detach one first",
                    root.display()
                ),
            ));
        }
        let key = beneath::identity(image)?;
        let control = rustix::fs::open(
            "/dev/loop-control",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CapError::internal(format!("opening /dev/loop-control: {e}")))?;
        // Another process may take the free device first: try a few.
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(ioctl_err("LOOP_CTL_GET_FREE", "/dev/loop-control"));
            }
            let dev = LoopDevice::open(&format!("/dev/loop{n}"))?;
            let config = LoopConfig {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info: zeroed_info(),
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads one `loop_config`.
            let rc = unsafe { libc::ioctl(dev.fd.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc == 0 {
                self.note(key, Some(dev.name.clone()));
                return Ok(dev);
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
                return Err(ioctl_err("LOOP_CONFIGURE", &dev.name));
            }
            // A device being released still counts as free for a moment.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(CapError::new(
            super::ErrorCode::Unavailable,
            "no free loop device could be had; try again",
        ))
    }

    /// Detaches a device (already checked to be the plugin's).
    pub fn detach(&self, dev: &LoopDevice) -> Result<(), CapError> {
        dev.detach()?;
        self.entries().retain(|_, d| *d != dev.name);
        Ok(())
    }

    fn note(&self, key: (u64, u64), device: Option<String>) {
        let mut entries = self.entries();
        match device {
            Some(device) => entries.insert(key, device),
            None => entries.remove(&key),
        };
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Attaches are serialised node-wide: two plugins' images never race for
/// one free device, and one image is never attached twice.
static ATTACHING: Mutex<()> = Mutex::new(());

/// The loop devices on the node bound to a file beneath `root` (by the
/// name sysfs gives it, a deleted file's included).
fn attached_beneath(root: &Path) -> Result<usize, CapError> {
    let entries = std::fs::read_dir("/sys/block")
        .map_err(|e| CapError::internal(format!("reading /sys/block: {e}")))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter_map(|n| sysfs_backing_file(&format!("/dev/{n}")))
        .filter(|file| file.starts_with(root))
        .count())
}

/// Every loop device on the node, looking for the one bound to the image
/// (by its name in sysfs, then confirmed by device and inode).
fn scan(image: &Path, key: (u64, u64)) -> Result<Option<LoopDevice>, CapError> {
    let entries = std::fs::read_dir("/sys/block")
        .map_err(|e| CapError::internal(format!("reading /sys/block: {e}")))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .map(|n| format!("/dev/{n}"))
        .filter(|d| sysfs_backing_file(d).as_deref() == Some(image))
        .collect();
    names.sort();
    for name in names {
        if let Ok(dev) = LoopDevice::open(&name) {
            if dev.backing()? == Some(key) {
                return Ok(Some(dev));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detaches the loop devices of a test, however it ends.
    struct Attached(Vec<String>);

    impl Drop for Attached {
        fn drop(&mut self) {
            for device in &self.0 {
                let _ = std::process::Command::new("losetup")
                    .args(["--detach", device])
                    .status();
            }
        }
    }

    fn image(dir: &Path, name: &str) -> OwnedFd {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    #[test]
    fn attach_find_and_a_stale_hint_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (image(dir.path(), "a.img"), image(dir.path(), "b.img"));
        let index = LoopIndex::default();
        let mut attached = Attached(Vec::new());
        let dev = index.attach(a.as_fd(), dir.path(), 8).unwrap();
        attached.0.push(dev.name.clone());
        assert_eq!(
            index.find(a.as_fd()).unwrap().map(|d| d.name),
            Some(dev.name.clone())
        );
        assert_eq!(
            index.attach(a.as_fd(), dir.path(), 8).unwrap().name,
            dev.name,
            "attached twice"
        );
        // Behind the index's back: `a` detached, its device likely reused for `b`.
        dev.detach().unwrap();
        drop(dev);
        let other = index.attach(b.as_fd(), dir.path(), 8).unwrap();
        attached.0.push(other.name.clone());
        assert!(index.find(a.as_fd()).unwrap().is_none());
        assert_eq!(index.find(b.as_fd()).unwrap().unwrap().name, other.name);

        // Ownership: b's device belongs to a root holding b, not to another.
        let root = GrantedDir::open(dir.path()).unwrap();
        owned(&other.name, &root).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let stranger = GrantedDir::open(elsewhere.path()).unwrap();
        let e = owned(&other.name, &stranger).err().unwrap();
        assert!(e.message.contains("not backed"), "{}", e.message);
        assert!(LoopDevice::open("/dev/sda").is_err());
        assert!(LoopDevice::open("/dev/loop1/../sda").is_err());
    }

    /// At most `max` devices for images under one root, counted on the
    /// node: the next is refused until one is detached; the one an image
    /// already has is no new device.
    #[test]
    fn attached_devices_are_bounded_per_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let images: Vec<OwnedFd> = (0..3).map(|i| image(&root, &format!("{i}.img"))).collect();
        let index = LoopIndex::default();
        let mut attached = Attached(Vec::new());
        for image in &images[..2] {
            attached
                .0
                .push(index.attach(image.as_fd(), &root, 2).unwrap().name);
        }
        let e = index.attach(images[2].as_fd(), &root, 2).err().unwrap();
        assert_eq!(e.code, super::super::ErrorCode::ResourceExhausted);
        assert!(e.message.contains("limits.maxLoopDevices"), "{}", e.message);
        assert_eq!(
            index.attach(images[0].as_fd(), &root, 2).unwrap().name,
            attached.0[0],
            "an attached image is no new device"
        );
        let other = tempfile::tempdir().unwrap();
        let elsewhere = image(other.path(), "x.img");
        attached.0.push(
            index
                .attach(elsewhere.as_fd(), other.path(), 2)
                .expect("another root counts its own")
                .name,
        );
        let first = LoopDevice::open(&attached.0[0]).unwrap();
        index.detach(&first).unwrap();
        // The kernel unbinds it when its last user (this descriptor) goes.
        drop(first);
        attached
            .0
            .push(index.attach(images[2].as_fd(), &root, 2).unwrap().name);
    }
}
