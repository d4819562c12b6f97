//! A fake host for native tests: real files under a temporary root, and
//! simulated loop devices, filesystems, subvolumes, quotas and mounts that
//! behave as plugin.wit describes. A failure or a crash (a panic, i.e. the
//! instance dies mid-call) can be injected at the n-th capability call.
//! Log lines are kept (`State::logs`); `http` answers UNAVAILABLE.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::bindings::wasmcsi::plugin::fs_info::FsStats;
use crate::bindings::wasmcsi::plugin::images::CopyMethod;
use crate::bindings::wasmcsi::plugin::log::Level;
use crate::bindings::wasmcsi::plugin::mount::MountEntry;
use crate::bindings::wasmcsi::plugin::quota::{QuotaKind, Usage};
use crate::error::{fail, ErrorCode, Result};
use crate::host::Host;
use crate::http::{Request, Response};

/// Panic payload of an injected crash.
pub const CRASH: &str = "simulated crash";

#[derive(Default)]
pub struct State {
    pub root: Option<String>,
    pub settings: Vec<(String, String)>,
    /// What `filesystem-type(root)` answers.
    pub root_fs: String,
    /// Loop device → (image, size the device sees).
    pub loops: BTreeMap<String, (String, u64)>,
    next_loop: u32,
    /// Image → (filesystem type, filesystem size).
    pub filesystems: BTreeMap<String, (String, u64)>,
    pub subvolumes: BTreeSet<String>,
    /// Read-only subvolumes (snapshots).
    pub read_only: BTreeSet<String>,
    /// Images whose filesystem UUID was renewed.
    pub new_uuids: BTreeSet<String>,
    /// Mount points frozen during a copy (the fake checks it thaws them).
    pub frozen: Vec<String>,
    /// Sizes of the multi-source copies asked for (one cut each).
    pub group_copies: Vec<usize>,
    pub limits: BTreeMap<String, u64>,
    pub used: BTreeMap<String, u64>,
    /// Mount target → what is mounted there.
    pub mounts: BTreeMap<String, MountEntry>,
    /// Mount target → the options it was mounted with.
    pub mount_options: BTreeMap<String, Vec<String>>,
    pub refuse_online_ext4: bool,
    /// What statfs answers as available outside mounts (default: half of 1 TiB).
    pub root_available: Option<u64>,
    /// Capability calls made so far.
    pub calls: usize,
    /// The name of each, in order.
    pub steps: Vec<&'static str>,
    pub fail_at: Option<usize>,
    pub crash_at: Option<usize>,
    /// Every log line, in order.
    pub logs: Vec<LogLine>,
    /// Answers `send`, saying how long the request took (the clock moves
    /// on by that much); unset, `send` is UNAVAILABLE (no network).
    #[allow(clippy::type_complexity)]
    pub http: Option<Box<dyn FnMut(&Request) -> (Duration, Result<Response>)>>,
    /// A simulated clock: `now` answers it, `sleep` moves it on. Unset,
    /// real time.
    pub clock: Option<Instant>,
}

/// A line the plugin logged: (level, message, fields).
pub type LogLine = (Level, String, Vec<(String, String)>);

#[derive(Clone)]
pub struct Fake(pub Rc<RefCell<State>>);

impl Fake {
    pub fn new(root: &str, root_fs: &str) -> Fake {
        Fake(Rc::new(RefCell::new(State {
            root: Some(root.to_string()),
            root_fs: root_fs.to_string(),
            ..State::default()
        })))
    }

    pub fn st(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    /// Counts a capability call and fires an injected failure or crash.
    fn step(&self, what: &'static str) -> Result<()> {
        let (n, fail_now, crash_now) = {
            let mut s = self.st();
            s.calls += 1;
            s.steps.push(what);
            (
                s.calls,
                s.fail_at == Some(s.calls),
                s.crash_at == Some(s.calls),
            )
        };
        if crash_now {
            std::panic::panic_any(CRASH);
        }
        if fail_now {
            return Err(fail(
                ErrorCode::Internal,
                format!("injected failure of call {n} ({what})"),
            ));
        }
        Ok(())
    }

    fn device_of(&self, image: &str) -> Option<String> {
        let s = self.0.borrow();
        s.loops
            .iter()
            .find(|(_, (img, _))| img == image)
            .map(|(dev, _)| dev.clone())
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> crate::Error {
    fail(code, msg)
}

fn file_len(path: &str) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| err(ErrorCode::NotFound, format!("{path}: {e}")))
}

impl Host for Fake {
    fn settings(&self) -> Vec<(String, String)> {
        self.0.borrow().settings.clone()
    }
    fn node_id(&self) -> String {
        "node-1".into()
    }
    fn root(&self) -> Option<String> {
        self.0.borrow().root.clone()
    }
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        self.st()
            .logs
            .push((level, message.to_string(), fields.to_vec()));
    }

    fn statfs(&self, path: &str) -> Result<FsStats> {
        self.step("statfs")?;
        let s = self.0.borrow();
        let total = match s.mounts.get(path) {
            Some(e) if e.source.starts_with("/dev/loop") && e.fs_type != "devtmpfs" => s
                .loops
                .get(&e.source)
                .and_then(|(img, _)| s.filesystems.get(img))
                .map_or(1 << 40, |f| f.1),
            Some(_) => 1 << 40,
            None if std::path::Path::new(path).exists() => 1 << 40,
            None => {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("statfs {path}: no such path"),
                ))
            }
        };
        let available = match s.root_available.filter(|_| !s.mounts.contains_key(path)) {
            Some(bytes) => bytes,
            None => total / 2 - 1,
        };
        Ok(FsStats {
            total_bytes: total,
            free_bytes: total / 2,
            available_bytes: available,
            total_inodes: 1000,
            free_inodes: 900,
        })
    }

    fn filesystem_type(&self, _path: &str) -> Result<String> {
        self.step("filesystem-type")?;
        Ok(self.0.borrow().root_fs.clone())
    }

    fn make_filesystem(&self, image: &str, fs_type: &str) -> Result<()> {
        self.step("make-filesystem")?;
        let len = file_len(image)?;
        if self.device_of(image).is_some() {
            return Err(err(ErrorCode::FailedPrecondition, "image attached"));
        }
        self.st()
            .filesystems
            .insert(image.into(), (fs_type.into(), len));
        Ok(())
    }

    fn probe_filesystem(&self, image: &str) -> Result<Option<String>> {
        self.step("probe-filesystem")?;
        file_len(image)?;
        Ok(self.0.borrow().filesystems.get(image).map(|f| f.0.clone()))
    }

    fn check_filesystem(&self, image: &str, fs_type: &str) -> Result<()> {
        self.step("check-filesystem")?;
        let dev = self.device_of(image);
        let s = self.0.borrow();
        if s.mounts.values().any(|e| Some(&e.source) == dev.as_ref()) {
            return Err(err(ErrorCode::FailedPrecondition, "fsck of a mounted fs"));
        }
        match s.filesystems.get(image) {
            Some((t, _)) if t == fs_type => Ok(()),
            _ => Err(err(ErrorCode::FailedPrecondition, "no such filesystem")),
        }
    }

    fn grow_filesystem(&self, device: &str, mount_path: &str, fs_type: &str) -> Result<()> {
        self.step("grow-filesystem")?;
        let mut s = self.st();
        let (image, size) = s
            .loops
            .get(device)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no loop {device}")))?;
        let mounted = s.mounts.values().any(|e| e.source == device);
        if mount_path.is_empty() {
            if mounted || fs_type != "ext4" {
                return Err(err(ErrorCode::FailedPrecondition, "offline grow refused"));
            }
        } else {
            if s.mounts.get(mount_path).map(|e| e.source.as_str()) != Some(device) {
                return Err(err(ErrorCode::FailedPrecondition, "not mounted there"));
            }
            if fs_type == "ext4" && s.refuse_online_ext4 {
                return Err(err(
                    ErrorCode::FailedPrecondition,
                    "online ext4 grow refused",
                ));
            }
        }
        match s.filesystems.get_mut(&image) {
            Some((t, fs_size)) if t == fs_type => {
                *fs_size = size;
                Ok(())
            }
            _ => Err(err(ErrorCode::FailedPrecondition, "wrong filesystem")),
        }
    }

    fn attach_loop(&self, image: &str) -> Result<String> {
        self.step("attach-loop")?;
        let len = file_len(image)?;
        if let Some(dev) = self.device_of(image) {
            return Ok(dev);
        }
        let mut s = self.st();
        let dev = format!("/dev/loop{}", s.next_loop);
        s.next_loop += 1;
        s.loops.insert(dev.clone(), (image.into(), len));
        Ok(dev)
    }

    fn find_loop(&self, image: &str) -> Result<Option<String>> {
        self.step("find-loop")?;
        Ok(self.device_of(image))
    }

    fn refresh_loop(&self, device: &str) -> Result<()> {
        self.step("refresh-loop")?;
        let mut s = self.st();
        let entry = s
            .loops
            .get_mut(device)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no loop {device}")))?;
        entry.1 = file_len(&entry.0)?;
        Ok(())
    }

    fn detach_loop(&self, device: &str) -> Result<()> {
        self.step("detach-loop")?;
        self.st().loops.remove(device);
        Ok(())
    }

    fn create_subvolume(&self, path: &str) -> Result<()> {
        self.step("create-subvolume")?;
        std::fs::create_dir(path).map_err(|e| err(ErrorCode::AlreadyExists, e.to_string()))?;
        self.st().subvolumes.insert(path.into());
        Ok(())
    }

    fn snapshot_subvolume(&self, source: &str, path: &str) -> Result<()> {
        self.step("snapshot-subvolume")?;
        if !self.st().subvolumes.contains(source) {
            return Err(err(ErrorCode::InvalidArgument, "not a subvolume"));
        }
        std::fs::create_dir(path).map_err(|e| err(ErrorCode::AlreadyExists, e.to_string()))?;
        // The files at the top level are enough for what the tests write.
        for entry in
            std::fs::read_dir(source).map_err(|e| err(ErrorCode::Internal, e.to_string()))?
        {
            let entry = entry.map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
            std::fs::copy(
                entry.path(),
                format!("{path}/{}", entry.file_name().to_string_lossy()),
            )
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        }
        self.st().subvolumes.insert(path.into());
        Ok(())
    }

    fn copy_image(&self, source: &str, destination: &str) -> Result<CopyMethod> {
        self.step("copy-image")?;
        if self.device_of(destination).is_some() {
            return Err(err(ErrorCode::FailedPrecondition, "destination attached"));
        }
        std::fs::copy(source, destination).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
        let mut s = self.st();
        // The copy is consistent when the source's mount is frozen for it.
        let device = s
            .loops
            .iter()
            .find(|(_, (img, _))| img == source)
            .map(|(dev, _)| dev.clone());
        if let Some(dev) = device {
            let mounts: Vec<String> = s
                .mounts
                .iter()
                .filter(|(_, e)| e.source == dev)
                .map(|(t, _)| t.clone())
                .collect();
            s.frozen.extend(mounts.into_iter().take(1));
        }
        if let Some(fs) = s.filesystems.get(source).cloned() {
            s.filesystems.insert(destination.into(), fs);
        }
        Ok(CopyMethod::Sparse)
    }

    fn read_only_snapshot(&self, source: &str, path: &str) -> Result<()> {
        self.snapshot_subvolume(source, path)?;
        self.st().read_only.insert(path.into());
        Ok(())
    }

    fn copy_images(&self, pairs: &[(String, String)]) -> Result<Vec<CopyMethod>> {
        self.step("copy-images")?;
        self.st().group_copies.push(pairs.len());
        pairs.iter().map(|(s, d)| self.copy_image(s, d)).collect()
    }

    fn read_only_snapshots(&self, pairs: &[(String, String)]) -> Result<()> {
        self.step("read-only-snapshots")?;
        self.st().group_copies.push(pairs.len());
        pairs
            .iter()
            .try_for_each(|(s, d)| self.read_only_snapshot(s, d))
    }

    fn new_filesystem_uuid(&self, image: &str, fs_type: &str) -> Result<()> {
        self.step("new-filesystem-uuid")?;
        let mut s = self.st();
        if s.loops.values().any(|(img, _)| img == image) {
            return Err(err(ErrorCode::FailedPrecondition, "attached"));
        }
        match s.filesystems.get(image) {
            Some((t, _)) if t == fs_type => {}
            _ => return Err(err(ErrorCode::InvalidArgument, "no such filesystem")),
        }
        s.new_uuids.insert(image.into());
        Ok(())
    }

    fn allocated_bytes(&self, path: &str) -> Result<u64> {
        self.step("allocated-bytes")?;
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .map(|m| m.blocks() * 512)
            .map_err(|e| err(ErrorCode::NotFound, format!("{path}: {e}")))
    }

    fn delete_subvolume(&self, path: &str) -> Result<()> {
        self.step("delete-subvolume")?;
        let mut s = self.st();
        s.read_only.remove(path);
        if !s.subvolumes.remove(path) {
            return Err(err(ErrorCode::InvalidArgument, "not a subvolume"));
        }
        s.limits.remove(path);
        std::fs::remove_dir_all(path).map_err(|e| err(ErrorCode::Internal, e.to_string()))
    }

    fn set_limit(&self, _kind: QuotaKind, path: &str, bytes: u64) -> Result<()> {
        self.step("set-limit")?;
        let mut s = self.st();
        if !s.subvolumes.contains(path) {
            return Err(err(ErrorCode::NotFound, "not a subvolume"));
        }
        s.limits.insert(path.into(), bytes);
        Ok(())
    }

    fn get_usage(&self, _kind: QuotaKind, path: &str) -> Result<Usage> {
        self.step("get-usage")?;
        let s = self.0.borrow();
        Ok(Usage {
            limit_bytes: s.limits.get(path).copied(),
            used_bytes: s.used.get(path).copied().unwrap_or(0),
        })
    }

    fn mount(&self, source: &str, target: &str, fs_type: &str, options: &[String]) -> Result<()> {
        self.step("mount")?;
        let mut s = self.st();
        if s.mounts.contains_key(target) {
            return Err(err(ErrorCode::FailedPrecondition, "target busy"));
        }
        // A tmpfs's source is a name; anything else is an attached image
        // holding that filesystem.
        if fs_type != "tmpfs" {
            let image = s
                .loops
                .get(source)
                .map(|l| l.0.clone())
                .ok_or_else(|| err(ErrorCode::NotFound, "no such device"))?;
            if s.filesystems.get(&image).map(|f| f.0.as_str()) != Some(fs_type) {
                return Err(err(ErrorCode::InvalidArgument, "wrong fs type"));
            }
        }
        s.mounts.insert(
            target.into(),
            MountEntry {
                source: source.into(),
                fs_type: fs_type.into(),
                read_only: options.iter().any(|o| o == "ro"),
            },
        );
        s.mount_options.insert(target.into(), options.to_vec());
        Ok(())
    }

    fn bind(&self, source: &str, target: &str, read_only: bool) -> Result<()> {
        self.step("bind")?;
        let mut s = self.st();
        if s.mounts.contains_key(target) {
            return Err(err(ErrorCode::FailedPrecondition, "target busy"));
        }
        let entry = if s.loops.contains_key(source) {
            MountEntry {
                source: "udev".into(),
                fs_type: "devtmpfs".into(),
                read_only,
            }
        } else if let Some(e) = s.mounts.get(source) {
            MountEntry {
                read_only,
                ..e.clone()
            }
        } else if s.subvolumes.contains(source) {
            MountEntry {
                source: "/dev/vdb".into(),
                fs_type: "btrfs".into(),
                read_only,
            }
        } else {
            return Err(err(ErrorCode::NotFound, format!("bind source {source}")));
        };
        s.mounts.insert(target.into(), entry);
        Ok(())
    }

    fn unmount(&self, target: &str, _remove_target: bool) -> Result<()> {
        self.step("unmount")?;
        self.st().mounts.remove(target);
        Ok(())
    }

    fn reconfigure(&self, target: &str, options: &[String]) -> Result<()> {
        self.step("reconfigure")?;
        let mut s = self.st();
        if s.mounts.get(target).map(|e| e.fs_type.as_str()) != Some("tmpfs") {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("no tmpfs mounted at {target}"),
            ));
        }
        s.mount_options.insert(target.into(), options.to_vec());
        Ok(())
    }

    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>> {
        self.step("mounted-at")?;
        Ok(self.0.borrow().mounts.get(target).cloned())
    }

    fn send(&self, req: Request) -> Result<Response> {
        self.step("send")?;
        // Taken out while it runs: it may not borrow the state itself.
        let mut http = self.st().http.take();
        let answer = match http.as_mut() {
            Some(answer) => {
                let (took, result) = answer(&req);
                self.sleep(took);
                result
            }
            None => Err(err(
                ErrorCode::Unavailable,
                format!("the fake host has no network ({} {})", req.method, req.url),
            )),
        };
        self.st().http = http;
        answer
    }

    fn now(&self) -> Instant {
        self.0.borrow().clock.unwrap_or_else(Instant::now)
    }

    fn sleep(&self, d: Duration) {
        let mut s = self.st();
        match s.clock.as_mut() {
            Some(clock) => *clock += d,
            None => {
                drop(s);
                std::thread::sleep(d)
            }
        }
    }
}
