//! Escapes: the hostile plugin, with a real deployment's grants (its fs
//! root in one place, the mount prefix — the kubelet directory — in
//! another), tries to reach past them through the host's capabilities:
//! links of its own (dangling, climbing, swapped in by a second call in the
//! middle of the first), mount options that name devices or take the node
//! down, devices and places that are not its own, quota calls on what is
//! not a subvolume beneath its root, a filesystem that never answers.
//! After each attempt the whole node is checked — canary files outside the
//! grants, the mount table, loop devices, the driver's descriptors — and
//! good calls made during the attempt must all succeed.

mod common;
mod hostile;

use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hostile::{driver_pid, hostile_wasm, still_serving};
use tonic::Code;
use wasmcsi::proto::*;

struct Node {
    d: TestDriver,
    hostile_root: tempfile::TempDir,
    canary_dir: tempfile::TempDir,
}

const CANARY_BYTES: &[u8] = b"must never change";

impl Node {
    async fn start() -> Node {
        let hostile_root = tempfile::Builder::new()
            .prefix("wasmcsi-escape-root")
            .tempdir()
            .unwrap();
        let canary_dir = tempfile::Builder::new()
            .prefix("wasmcsi-canary")
            .tempdir()
            .unwrap();
        std::fs::write(canary_dir.path().join("canary"), CANARY_BYTES).unwrap();
        // An image a race could format, were it followed out of the root.
        let img = std::fs::File::create(canary_dir.path().join("canary.img")).unwrap();
        img.set_len(8 * MIB).unwrap();
        // The kubelet directory is the harness's, shared with local-dir and
        // outside the hostile root: what a node gives.
        let extra = format!(
            r#"  - name: hostile
    path: {wasm}
    limits: {{ memoryBytes: {mem}, callTimeoutSeconds: 60, maxConcurrentCalls: 16 }}
    capabilities:
      fs: {{ root: "{root}" }}
      quota: {{}}
      mount: {{ types: [xfs, ext4], targetPrefixes: ["${{TEST_KUBELET}}"] }}
"#,
            wasm = hostile_wasm().display(),
            mem = 64 * MIB,
            root = hostile_root.path().display(),
        );
        let d = TestDriver::start(Options {
            plugin_extra: extra,
            ..Default::default()
        })
        .await;
        Node {
            d,
            hostile_root,
            canary_dir,
        }
    }

    fn kubelet(&self) -> PathBuf {
        self.d.kubelet.clone()
    }

    fn canary(&self, name: &str) -> String {
        self.canary_dir.path().join(name).display().to_string()
    }

    async fn attempt(&self, name: &str, context: &[(&str, &str)]) -> Result<(), tonic::Status> {
        let target = self.kubelet().join("pods").join(name);
        let mut context: HashMap<String, String> = context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        context
            .entry("canary".into())
            .or_insert_with(|| self.canary(&format!("{name}-made")));
        let req = NodePublishVolumeRequest {
            volume_id: format!("hostile:{name}"),
            target_path: target.display().to_string(),
            volume_capability: Some(rw()),
            volume_context: context,
            ..Default::default()
        };
        self.d
            .client
            .clone()
            .node
            .node_publish_volume(req)
            .await
            .map(drop)
    }

    /// What must be true of the whole node after any attempt.
    fn check(&self, name: &str, before: &Snapshot) {
        let after = Snapshot::take(&self.d);
        let canary = std::fs::read(self.canary_dir.path().join("canary")).unwrap();
        assert_eq!(canary, CANARY_BYTES, "{name}: the canary changed");
        let entries: BTreeSet<String> = std::fs::read_dir(self.canary_dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            entries,
            BTreeSet::from(["canary".to_string(), "canary.img".to_string()]),
            "{name}: something was made outside the grants"
        );
        let img = std::fs::read(self.canary_dir.path().join("canary.img")).unwrap();
        assert!(
            img.len() == (8 * MIB) as usize && img.iter().all(|b| *b == 0),
            "{name}: the outside image was written to"
        );
        let new_mounts: Vec<_> = after.mounts.difference(&before.mounts).collect();
        let outside: Vec<_> = new_mounts
            .iter()
            .filter(|m| {
                !m.starts_with("/tmp/")
                    || m.starts_with(&self.canary(""))
                    || m.starts_with(&self.hostile_root.path().display().to_string())
            })
            .collect();
        assert!(
            outside.is_empty(),
            "{name}: mounts outside the prefix: {outside:?}"
        );
        let canary_loops = loops_under(self.canary_dir.path());
        assert!(
            canary_loops.is_empty(),
            "{name}: outside files attached: {canary_loops:?}"
        );
        assert!(
            after.fds <= before.fds + 8,
            "{name}: the driver holds {} descriptors, {} before",
            after.fds,
            before.fds
        );
    }
}

/// The node-wide state an attempt must not change.
struct Snapshot {
    mounts: BTreeSet<String>,
    fds: usize,
}

impl Snapshot {
    fn take(d: &TestDriver) -> Snapshot {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        Snapshot {
            mounts,
            fds: driver_fds(d),
        }
    }
}

/// The driver's open descriptors (the process found by its config path).
fn driver_fds(d: &TestDriver) -> usize {
    let pid = driver_pid(d);
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the driver's descriptors")
        .count()
}

async fn expect(node: &Node, name: &str, context: &[(&str, &str)], want: Code, says: &str) {
    let before = Snapshot::take(&node.d);
    let err = node.attempt(name, context).await.expect_err(name);
    eprintln!("{name}: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), want, "{name}: {err:?}");
    assert!(
        err.message().contains(says),
        "{name}: {:?} does not say {says:?}",
        err.message()
    );
    node.check(name, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_escape_through_the_host() {
    let node = Node::start().await;
    let denied = Code::PermissionDenied;

    // Links of the plugin's own, dangling or to a directory, climbing out.
    expect(&node, "dangling-bind", &[], denied, "symlink").await;
    expect(&node, "link-dir-bind", &[], denied, "symlink").await;

    // Options naming devices or paths, or that can panic the kernel.
    expect(&node, "logdev", &[], denied, "logdev=/dev/loop1").await;
    expect(&node, "errors-panic", &[], denied, "errors=panic").await;
    expect(&node, "smuggled-option", &[], denied, "logdev").await;

    // Devices and places that are not the plugin's.
    let outside = tempfile::tempdir().unwrap();
    let foreign_img = outside.path().join("foreign.img");
    std::fs::File::create(&foreign_img)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let foreign = run(
        "losetup",
        &["--find", "--show", &foreign_img.display().to_string()],
    );
    let foreign = foreign.trim().to_string();
    let detach = Detach(foreign.clone());
    expect(
        &node,
        "foreign-device",
        &[("device", &foreign)],
        denied,
        "not backed",
    )
    .await;
    expect(
        &node,
        "bind-foreign-device",
        &[("device", &foreign)],
        denied,
        "not backed",
    )
    .await;
    drop(detach);
    expect(
        &node,
        "disk-device",
        &[],
        Code::InvalidArgument,
        "not a loop device",
    )
    .await;
    expect(&node, "bind-proc", &[], denied, "outside the allowed").await;
    let prefix = node.kubelet().display().to_string();
    expect(
        &node,
        "mount-on-prefix",
        &[("at", &prefix)],
        denied,
        "granted directory itself",
    )
    .await;

    // Quota and subvolume calls only on subvolumes beneath the root.
    expect(&node, "quota-root", &[], denied, "itself").await;
    expect(
        &node,
        "quota-dir",
        &[],
        Code::InvalidArgument,
        "not a btrfs subvolume",
    )
    .await;
    expect(&node, "quota-usage-root", &[], denied, "itself").await;
    expect(&node, "delete-root-subvolume", &[], denied, "itself").await;

    // A fifo where an image should be: refused, not waited on.
    nix::unistd::mkfifo(
        &node.hostile_root.path().join("fifo.img"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let quick = tokio::time::timeout(Duration::from_secs(3), node.attempt("fifo-image", &[]))
        .await
        .expect("opening a fifo must not hang the call");
    assert_eq!(code(quick), Code::InvalidArgument);
    expect(&node, "fifo-image", &[], Code::InvalidArgument, "fifo").await;

    still_serving(&node.d, "escapes").await;
}

/// Two calls of the plugin race: one flips a directory under the prefix
/// (through a bind of its root's `view`) between a real directory and a
/// link out, the other binds, formats, probes and attaches under it, many
/// times. Good calls run all the while and must all succeed.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_call_race_never_reaches_outside() {
    let node = Node::start().await;
    let before = Snapshot::take(&node.d);
    let canary = node.canary("canary");
    let rounds = [("rounds", "100"), ("canary", canary.as_str())];
    let (swapper, user, ()) = tokio::join!(
        node.attempt("race-swapper", &rounds),
        node.attempt("race-user", &rounds),
        async {
            for i in 0..3 {
                still_serving(&node.d, &format!("race-{i}")).await;
            }
        }
    );
    swapper.expect("the swapping call");
    user.expect("the using call");
    node.check("race", &before);
}

/// A filesystem that never answers (a FUSE mount whose daemon does not
/// read its device): statfs calls on it hang, each costs its own call a
/// deadline, and Probe and other volumes' calls go on answering.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_filesystem_costs_only_its_own_calls() {
    let node = Node::start().await;
    let target = node.kubelet().join("pods").join("statfs");
    std::fs::create_dir_all(&target).unwrap();
    let fuse = HungFuse::mount(&target);
    let started = Instant::now();
    let mut stuck = tokio::task::JoinSet::new();
    // More stuck calls than the runtime has worker threads.
    for i in 0..8 {
        let client = node.d.client.clone();
        let target = target.display().to_string();
        stuck.spawn(async move {
            let mut client = client;
            let mut req = tonic::Request::new(NodePublishVolumeRequest {
                volume_id: format!("hostile:statfs#{i}"),
                target_path: target,
                volume_capability: Some(rw()),
                ..Default::default()
            });
            // The CO's deadline: the host must answer by then.
            req.set_timeout(Duration::from_secs(4));
            client.node.node_publish_volume(req).await
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let probe_started = Instant::now();
        let ready = node
            .d
            .client
            .clone()
            .identity
            .probe(ProbeRequest {})
            .await
            .expect("probe during the hang")
            .into_inner()
            .ready;
        assert_eq!(ready, Some(true));
        assert!(probe_started.elapsed() < Duration::from_secs(1));
        still_serving(&node.d, &format!("hung-{i}")).await;
    }
    while let Some(result) = stuck.join_next().await {
        let code = code(result.unwrap());
        assert_eq!(code, Code::DeadlineExceeded);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(fuse);
}

/// A FUSE mount with nobody serving it: every request on it waits.
struct HungFuse {
    target: PathBuf,
    device: Option<std::fs::File>,
}

impl HungFuse {
    fn mount(target: &Path) -> HungFuse {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse");
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        );
        nix::mount::mount(
            Some("wasmcsi-hung"),
            target,
            Some("fuse"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .expect("mounting a FUSE filesystem");
        HungFuse {
            target: target.to_path_buf(),
            device: Some(device),
        }
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        // Closing the device aborts the connection: every waiter is freed.
        self.device.take();
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Detaches a loop device the test attached, however the test ends.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.0])
            .status();
    }
}
