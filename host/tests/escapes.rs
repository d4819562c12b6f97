//! Escapes: the hostile plugin, with a real deployment's grants (its fs
//! root in one place, the mount prefix — the kubelet directory — in
//! another), tries to reach past them through the host's capabilities:
//! links of its own (dangling, climbing, swapped in by a second call in the
//! middle of the first), mount options that name devices or take the node
//! down, devices and places that are not its own, another pod's volumes
//! under the same prefix, tmpfs sizes past the grant (or wrapping to
//! unlimited), loop devices hoarded, quota calls on what is not a
//! subvolume beneath its root, a filesystem that never answers.
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

/// The hostile plugin's `limits.maxLoopDevices` here: small, so that the
/// bound is reached in a few attaches.
const MAX_LOOPS: usize = 4;

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
    limits: {{ memoryBytes: {mem}, callTimeoutSeconds: 60, maxConcurrentCalls: 16, maxLoopDevices: {MAX_LOOPS} }}
    capabilities:
      fs: {{ root: "{root}" }}
      quota: {{}}
      mount: {{ types: [xfs, ext4, tmpfs], targetPrefixes: ["${{TEST_KUBELET}}"] }}
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
        self.attempt_at(name, &target, context).await
    }

    /// The escape `name` (`name#n` for another volume id) with the target
    /// path the CO names.
    async fn attempt_at(
        &self,
        name: &str,
        target: &Path,
        context: &[(&str, &str)],
    ) -> Result<(), tonic::Status> {
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
    let target = node.kubelet().join("pods").join(name);
    expect_at(node, name, &target, context, want, says).await
}

async fn expect_at(
    node: &Node,
    name: &str,
    target: &Path,
    context: &[(&str, &str)],
    want: Code,
    says: &str,
) {
    let before = Snapshot::take(&node.d);
    let err = node
        .attempt_at(name, target, context)
        .await
        .expect_err(name);
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

    // Links of the plugin's own, dangling or to a directory, climbing out,
    // in its root's `view`, bound onto a target; then targets the CO names
    // through them.
    let view = node.kubelet().join("pods/links/view");
    let canary = node.canary("dangling-bind-made");
    node.attempt_at("bind-view", &view, &[("canary", &canary)])
        .await
        .expect("its own directory onto its target");
    let dangling = view.join("dangling");
    expect_at(&node, "dangling-bind", &dangling, &[], denied, "symlink").await;
    let through = view.join("out/inside");
    expect_at(&node, "link-dir-bind", &through, &[], denied, "symlink").await;
    unmount(&view);
    // Beneath its target is not its target.
    expect(&node, "below-target", &[], denied, "not a path this").await;

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
    let view = node.kubelet().join("pods/race/view");
    node.attempt_at("bind-view", &view, &rounds)
        .await
        .expect("its own directory onto its target");
    let flipping = view.join("flip/t");
    let (swapper, user, ()) = tokio::join!(
        node.attempt("race-swapper", &rounds),
        node.attempt_at("race-user", &flipping, &rounds),
        async {
            for i in 0..3 {
                still_serving(&node.d, &format!("race-{i}")).await;
            }
        }
    );
    swapper.expect("the swapping call");
    user.expect("the using call");
    unmount(&view);
    node.check("race", &before);
}

/// Takes every mount at `path` off (what a test itself mounted, or what
/// the hostile plugin, which has no unpublish, left).
fn unmount(path: &Path) {
    while nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// What the mount table says is mounted exactly at `path`: (type, source,
/// superblock options), the topmost mount.
fn mount_at(path: &Path) -> Option<(String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(path.as_str()))
        .filter_map(|l| {
            let (_, right) = l.split_once(" - ")?;
            let mut right = right.split(' ');
            Some((
                right.next()?.to_string(),
                right.next()?.to_string(),
                right.next()?.to_string(),
            ))
        })
        .next_back()
}

/// Another pod's Secret volume under the kubelet directory, as kubelet
/// makes it: a 1 MiB tmpfs holding `token`.
struct Victim {
    path: PathBuf,
}

impl Victim {
    fn mount(node: &Node) -> Victim {
        let path = node
            .kubelet()
            .join("pods/victim/volumes/kubernetes.io~secret/token");
        std::fs::create_dir_all(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mounting the victim's secret volume");
        std::fs::write(path.join("token"), b"the victim's secret").unwrap();
        Victim { path }
    }

    /// Still mounted, the same size, its secret unchanged.
    fn check(&self, case: &str) {
        let (fs_type, source, options) =
            mount_at(&self.path).unwrap_or_else(|| panic!("{case}: the victim was unmounted"));
        assert_eq!(
            (fs_type.as_str(), source.as_str()),
            ("tmpfs", "tmpfs"),
            "{case}"
        );
        assert!(options.contains("size=1024k"), "{case}: {options}");
        assert_eq!(
            std::fs::read(self.path.join("token")).unwrap(),
            b"the victim's secret",
            "{case}"
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// The grant is the whole kubelet directory, but a call may mount only on
/// the paths its request names, and bind only from its own root (or its
/// staging path): another pod's Secret is neither a source nor a target.
#[tokio::test(flavor = "multi_thread")]
async fn another_pods_volume_is_neither_source_nor_target() {
    let node = Node::start().await;
    let victim = Victim::mount(&node);
    let v = victim.path.display().to_string();
    let denied = Code::PermissionDenied;
    for (case, says) in [
        ("bind-victim", "outside the allowed directories"),
        ("bind-victim-file", "outside the allowed directories"),
        ("unmount-victim", "not a path this publish-volume call"),
        ("bind-onto-victim", "not a path this publish-volume call"),
        ("tmpfs-onto-victim", "not a path this publish-volume call"),
        ("reconfigure-victim", "not a path this publish-volume call"),
    ] {
        expect(&node, case, &[("victim", &v)], denied, says).await;
        victim.check(case);
        let target = node.kubelet().join("pods").join(case);
        assert_eq!(
            mount_at(&target),
            None,
            "{case}: something is at its target"
        );
    }
    // Its own directory onto its own target works: the refusals above are
    // about whose paths they were.
    let own = node.kubelet().join("pods/own/view");
    node.attempt_at("bind-view", &own, &[])
        .await
        .expect("its own directory onto its target");
    assert!(mount_at(&own).is_some());
    unmount(&own);
    victim.check("after all");
    still_serving(&node.d, "victim").await;
}

/// The node's memory, as /proc/meminfo counts it.
fn mem_total() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// A tmpfs's size and inode count (0: unlimited), by statvfs.
fn tmpfs_size(path: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    (st.blocks() * st.fragment_size(), st.files())
}

/// tmpfs is bounded by the grant's `tmpfsMaxBytes` (a quarter of the
/// node's memory when unset, as in the shipped configs): sizes that wrap
/// to 0 (unlimited), exceed the bound or set it twice, unlimited inodes,
/// and `reconfigure` to any of those are refused naming the option, and
/// the plugin's tmpfs mounts together stay within the bound.
#[tokio::test(flavor = "multi_thread")]
async fn tmpfs_is_bounded_by_the_grant() {
    let node = Node::start().await;
    // The default: a quarter of the memory, in whole pages.
    let bound = mem_total() / 4 / 4096 * 4096;
    let pods = node.kubelet().join("pods");
    let invalid = Code::InvalidArgument;
    let denied = Code::PermissionDenied;

    let own = pods.join("tmpfs-own");
    node.attempt_at("tmpfs", &own, &[("options", "size=1m mode=700")])
        .await
        .expect("a tmpfs of 1 MiB");
    assert_eq!(tmpfs_size(&own).0, MIB);
    assert!(tmpfs_size(&own).1 > 0, "inodes are bounded");

    let cases: &[(&str, Code, &str)] = &[
        ("size=17179869184g", invalid, "size=17179869184g"),
        ("nr_blocks=17179869184g", invalid, "nr_blocks=17179869184g"),
        (
            "size=18446744073709551616",
            invalid,
            "size=18446744073709551616",
        ),
        ("size=1m,size=17179869184g", invalid, "more than once"),
        ("size=1m size=17179869184g", invalid, "more than once"),
        ("size=400%", denied, "size=400%"),
        ("size=1048576g", denied, "size=1048576g"),
        ("size=0k", invalid, "size=0k"),
        ("size=1m nr_inodes=0", invalid, "nr_inodes=0"),
        (
            "size=1m nr_inodes=17179869184g",
            invalid,
            "nr_inodes=17179869184g",
        ),
    ];
    for (i, (options, want, says)) in cases.iter().enumerate() {
        let target = pods.join(format!("tmpfs-bad-{i}"));
        let name = format!("tmpfs#{i}");
        let before = Snapshot::take(&node.d);
        let err = node
            .attempt_at(&name, &target, &[("options", options)])
            .await
            .expect_err(options);
        eprintln!("mount {options}: {:?}: {}", err.code(), err.message());
        assert_eq!(err.code(), *want, "{options}: {err:?}");
        assert!(err.message().contains(says), "{options}: {err:?}");
        assert_eq!(mount_at(&target), None, "{options}: mounted anyway");
        node.check(options, &before);
    }
    // The same values as a reconfigure of the plugin's own tmpfs (each
    // call its own target: a path holds one volume).
    for (i, (options, want, says)) in cases.iter().enumerate() {
        let name = format!("tmpfs#r{i}");
        let own = pods.join(format!("tmpfs-r{i}"));
        let context = [("options", "size=1m mode=700"), ("reconfigure", options)];
        let err = node
            .attempt_at(&name, &own, &context)
            .await
            .expect_err(options);
        eprintln!("reconfigure {options}: {:?}: {}", err.code(), err.message());
        assert_eq!(err.code(), *want, "reconfigure {options}: {err:?}");
        assert!(
            err.message().contains(says),
            "reconfigure {options}: {err:?}"
        );
        let (bytes, inodes) = tmpfs_size(&own);
        assert_eq!(bytes, MIB, "reconfigure {options} changed the size");
        assert!(inodes > 0, "reconfigure {options} made inodes unlimited");
    }
    // Within the bound: a reconfigure grows it.
    let context = [("options", "size=1m"), ("reconfigure", "size=2m")];
    let grown = pods.join("tmpfs-grow");
    node.attempt_at("tmpfs#grow", &grown, &context)
        .await
        .expect("growing within the bound");
    assert_eq!(tmpfs_size(&grown).0, 2 * MIB);

    // Together: two tmpfs of 60% of the bound do not fit, nor does
    // growing one past what the others leave.
    let share = format!("size={}", bound / 10 * 6);
    let first = pods.join("tmpfs-share-1");
    node.attempt_at("tmpfs#s1", &first, &[("options", &share)])
        .await
        .expect("60% of the bound");
    let second = pods.join("tmpfs-share-2");
    let err = node
        .attempt_at("tmpfs#s2", &second, &[("options", &share)])
        .await
        .expect_err("another 60% of the bound");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("tmpfsMaxBytes"), "{err:?}");
    assert_eq!(mount_at(&second), None);
    let all = format!("size={}", bound);
    // The same volume again at its own target: a page of tmpfs on top,
    // then a reconfigure of it to the whole bound.
    let context = [("options", "size=4k"), ("reconfigure", all.as_str())];
    let err = node
        .attempt_at("tmpfs#s1", &first, &context)
        .await
        .expect_err("growing to the whole bound beside another");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let size = tmpfs_size(&first).0;
    assert!(
        size <= (bound / 10 * 6).div_ceil(4096) * 4096,
        "grew to {size}: {err:?}"
    );
    for path in [&own, &first, &grown] {
        unmount(path);
    }
    for i in 0..cases.len() {
        unmount(&pods.join(format!("tmpfs-r{i}")));
    }
    still_serving(&node.d, "tmpfs").await;
}

/// Loop devices a plugin keeps attached are bounded by
/// `limits.maxLoopDevices`, counted on the node over all its calls.
#[tokio::test(flavor = "multi_thread")]
async fn loop_devices_are_bounded_per_plugin() {
    let node = Node::start().await;
    let before = Snapshot::take(&node.d);
    let err = node
        .attempt("loop-hoard", &[("count", "24")])
        .await
        .expect_err("24 loop devices");
    eprintln!("loop-hoard: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limits.maxLoopDevices"), "{err:?}");
    let held = loops_under(node.hostile_root.path());
    assert_eq!(held.len(), MAX_LOOPS, "{held:?}");
    // A second call gets none either: the count is the node's.
    let err = node
        .attempt("loop-hoard#2", &[("count", "1"), ("prefix", "more")])
        .await
        .expect_err("one more");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(loops_under(node.hostile_root.path()).len(), MAX_LOOPS);
    still_serving(&node.d, "loop-hoard").await;
    wasmcsi_testkit::teardown(node.hostile_root.path());
    node.check("loop-hoard", &before);
}

/// A filesystem that never answers (a FUSE mount whose daemon does not
/// read its device): statfs calls on it hang, each costs its own call a
/// deadline, and Probe and other volumes' calls go on answering.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_filesystem_costs_only_its_own_calls() {
    let node = Node::start().await;
    // The hung mount is not the call's target (the host refuses to publish
    // onto a mount it did not make): the plugin looks at it by statfs.
    let hung = node.kubelet().join("pods").join("statfs-hung");
    std::fs::create_dir_all(&hung).unwrap();
    let fuse = HungFuse::mount(&hung);
    let started = Instant::now();
    let mut stuck = tokio::task::JoinSet::new();
    // More stuck calls than the runtime has worker threads.
    for i in 0..8 {
        let client = node.d.client.clone();
        let target = node.kubelet().join("pods").join(format!("statfs-{i}"));
        std::fs::create_dir_all(&target).unwrap();
        let target = target.display().to_string();
        let at = hung.display().to_string();
        stuck.spawn(async move {
            let mut client = client;
            let mut req = tonic::Request::new(NodePublishVolumeRequest {
                volume_id: format!("hostile:statfs#{i}"),
                target_path: target,
                volume_capability: Some(rw()),
                volume_context: [("at".to_string(), at)].into(),
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
