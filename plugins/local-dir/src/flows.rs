//! Whole-call tests against the fake host: idempotency, cleanup of failed
//! creates, and retries after a crash between any two capability calls.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::controller;
use crate::env::Env;
use crate::error::{ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{CreateVolumeRequest, ExpandRequest};
use crate::exports::wasmcsi::plugin::node::{
    ExpandRequest as NodeExpandRequest, PublishRequest, StageRequest,
};
use crate::fake::{Fake, CRASH};
use crate::meta::State;
use crate::node;
use crate::size::MIB;
use crate::snapshot;
use crate::store;
use crate::wasmcsi::plugin::types::{
    AccessMode, AccessType, CapacityRange, ContentSource, MountAccess, VolumeCapability,
};

struct World {
    fake: Fake,
    root: String,
}

impl World {
    fn new(tag: &str, root_fs: &str) -> World {
        quiet_crashes();
        let dir = std::env::temp_dir().join(format!("local-dir-flow-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.to_str().unwrap().to_string();
        World {
            fake: Fake::new(&root, root_fs),
            root,
        }
    }

    fn env(&self) -> Env {
        Env::with_host(Box::new(self.fake.clone())).unwrap()
    }

    fn set(&self, key: &str, value: &str) {
        self.fake.st().settings.push((key.into(), value.into()));
    }

    /// Runs one call, crashing at its `n`-th capability call (None: no crash).
    /// Returns None when it crashed.
    fn run<T>(&self, crash_at: Option<usize>, op: impl FnOnce(&Env) -> T) -> Option<T> {
        let base = self.fake.st().calls;
        self.fake.st().crash_at = crash_at.map(|n| base + n);
        let env = self.env();
        let out = catch_unwind(AssertUnwindSafe(|| op(&env)));
        self.fake.st().crash_at = None;
        match out {
            Ok(v) => Some(v),
            Err(p) if p.downcast_ref::<&str>() == Some(&CRASH) => None,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Capability calls one successful run of `op` makes.
    fn calls_of<T>(&self, op: impl FnOnce(&Env) -> T) -> usize {
        let base = self.fake.st().calls;
        self.run(None, op);
        self.fake.st().calls - base
    }

    fn path(&self, rel: &str) -> String {
        let p = format!("{}/{rel}", self.root);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn meta(&self, id: &str) -> Option<crate::meta::Meta> {
        store::read_meta(&self.env().layout, id).unwrap()
    }

    fn volume_dirs(&self) -> Vec<String> {
        store::list_ids(&self.env().layout).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Injected crashes are expected panics: keep them out of the test output.
fn quiet_crashes() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&CRASH) {
                default(info)
            }
        }));
    });
}

fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Mount(MountAccess {
            fs_type: fs.into(),
            mount_flags: vec![],
            volume_mount_group: String::new(),
        }),
        access_mode: AccessMode::SingleNodeWriter,
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Block,
        access_mode: AccessMode::SingleNodeWriter,
    }
}

fn create_req(name: &str, required: u64, cap: VolumeCapability) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity: CapacityRange {
            required_bytes: Some(required),
            limit_bytes: None,
        },
        capabilities: vec![cap],
        parameters: vec![],
        secrets: vec![],
        content_source: None,
    }
}

fn create(env: &Env, name: &str, required: u64, cap: VolumeCapability) -> Result<u64> {
    controller::create_volume(env, create_req(name, required, cap)).map(|v| v.capacity_bytes)
}

fn stage_req(id: &str, staging: &str, cap: VolumeCapability) -> StageRequest {
    StageRequest {
        volume_id: id.into(),
        staging_path: staging.into(),
        capability: cap,
        publish_context: vec![],
        volume_context: vec![],
        secrets: vec![],
    }
}

fn publish_req(
    id: &str,
    staging: &str,
    target: &str,
    cap: VolumeCapability,
    ro: bool,
) -> PublishRequest {
    PublishRequest {
        volume_id: id.into(),
        staging_path: Some(staging.into()),
        target_path: target.into(),
        capability: cap,
        read_only: ro,
        publish_context: vec![],
        volume_context: vec![],
        secrets: vec![],
    }
}

fn node_expand_req(
    id: &str,
    path: &str,
    bytes: u64,
    cap: Option<VolumeCapability>,
) -> NodeExpandRequest {
    NodeExpandRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_path: Some(path.into()),
        capacity: CapacityRange {
            required_bytes: Some(bytes),
            limit_bytes: None,
        },
        capability: cap,
        secrets: vec![],
    }
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.unwrap_err().code
}

#[test]
fn no_root_is_failed_precondition() {
    let w = World::new("noroot", "xfs");
    w.fake.st().root = None;
    let e = Env::with_host(Box::new(w.fake.clone())).err().unwrap();
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("fs capability"));
}

#[test]
fn image_create_is_idempotent_and_checks_compatibility() {
    let w = World::new("create", "xfs");
    let env = w.env();
    let v = controller::create_volume(&env, create_req("pvc-1", 10 * MIB, mount_cap(""))).unwrap();
    assert_eq!(v.volume_id, "pvc-1");
    assert_eq!(v.capacity_bytes, 300 * MIB, "xfs minimum");
    assert!(v.volume_context.contains(&("fsType".into(), "xfs".into())));
    assert!(v.volume_context.contains(&("node".into(), "node-1".into())));
    let image = env.layout.image("pvc-1");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 300 * MIB);
    assert!(
        w.meta("pvc-1").unwrap().format_pending,
        "mkfs waits for stage"
    );
    assert!(w.fake.st().filesystems.is_empty());

    assert_eq!(
        create(&env, "pvc-1", 300 * MIB, mount_cap("xfs")).unwrap(),
        300 * MIB
    );
    assert_eq!(
        code(create(&env, "pvc-1", 301 * MIB, mount_cap(""))),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(create(&env, "pvc-1", MIB, mount_cap("ext4"))),
        ErrorCode::AlreadyExists
    );
    assert_eq!(w.volume_dirs(), ["pvc-1"]);
}

#[test]
fn create_refusals() {
    let w = World::new("refuse", "xfs");
    let env = w.env();
    // Clones: a missing source or snapshot is NOT_FOUND; images do not clone.
    let from = |source: ContentSource| {
        let mut r = create_req("a", MIB, mount_cap(""));
        r.content_source = Some(source);
        code(controller::create_volume(&env, r))
    };
    assert_eq!(from(ContentSource::Volume("b".into())), ErrorCode::NotFound);
    assert_eq!(
        from(ContentSource::Snapshot("s".into())),
        ErrorCode::NotFound
    );
    assert_eq!(
        from(ContentSource::Volume("Not/An-Id".into())),
        ErrorCode::InvalidArgument
    );
    // A raw block image has no filesystem for a mount clone.
    create(&env, "b", MIB, block_cap()).unwrap();
    assert_eq!(
        from(ContentSource::Volume("b".into())),
        ErrorCode::InvalidArgument
    );
    assert_eq!(w.volume_dirs(), ["b"]);
    controller::delete_volume(&env, "b".into()).unwrap();
    let mut r = create_req("a", MIB, mount_cap(""));
    r.parameters = vec![("mode".into(), "project-quota".into())];
    assert_eq!(
        code(controller::create_volume(&env, r)),
        ErrorCode::Unimplemented
    );
    let mut r = create_req("a", MIB, mount_cap(""));
    r.capacity.limit_bytes = Some(100 * MIB);
    assert_eq!(
        code(controller::create_volume(&env, r)),
        ErrorCode::OutOfRange
    );
    w.set("maxVolumeBytes", "1Gi");
    assert_eq!(
        code(create(&env, "a", 2 << 30, mount_cap(""))),
        ErrorCode::OutOfRange
    );
    assert!(w.volume_dirs().is_empty(), "refusals make nothing");
}

#[test]
fn failed_create_leaves_nothing() {
    for (tag, fs, settings) in [("fimg", "xfs", "image"), ("fsub", "btrfs", "subvolume")] {
        let probe = World::new(&format!("{tag}-probe"), fs);
        probe.set("mode", settings);
        let n = probe.calls_of(|env| create(env, "pvc-x", MIB, mount_cap("")).unwrap());
        assert!(n >= 1);
        for at in 1..=n {
            let w = World::new(&format!("{tag}-{at}"), fs);
            w.set("mode", settings);
            let base = w.fake.st().calls;
            w.fake.st().fail_at = Some(base + at);
            let r = w.run(None, |env| create(env, "pvc-x", MIB, mount_cap("")));
            assert_eq!(code(r.unwrap()), ErrorCode::Internal, "failing call {at}");
            w.fake.st().fail_at = None;
            assert!(
                w.volume_dirs().is_empty(),
                "{tag}: leftovers after failing call {at}"
            );
            let st = w.fake.st();
            assert!(st.subvolumes.is_empty() && st.loops.is_empty() && st.limits.is_empty());
        }
    }
}

#[test]
fn create_retried_after_crash_anywhere_finishes() {
    for (tag, fs, settings) in [("cimg", "xfs", "image"), ("csub", "btrfs", "subvolume")] {
        let probe = World::new(&format!("{tag}-probe"), fs);
        probe.set("mode", settings);
        let n = probe.calls_of(|env| create(env, "pvc-x", MIB, mount_cap("")).unwrap());
        for at in 1..=n {
            let w = World::new(&format!("{tag}-{at}"), fs);
            w.set("mode", settings);
            assert!(w
                .run(Some(at), |env| create(env, "pvc-x", MIB, mount_cap("")))
                .is_none());
            let cap = w
                .run(None, |env| create(env, "pvc-x", MIB, mount_cap("")))
                .unwrap()
                .unwrap();
            let meta = w.meta("pvc-x").unwrap();
            assert_eq!(meta.state, State::Ready);
            assert_eq!(meta.capacity_bytes, cap);
            let env = w.env();
            let st = w.fake.st();
            if settings == "image" {
                assert!(meta.format_pending);
                assert_eq!(
                    std::fs::metadata(env.layout.image("pvc-x")).unwrap().len(),
                    cap
                );
            } else {
                assert_eq!(st.limits[&env.layout.data("pvc-x")], cap);
            }
        }
    }
}

#[test]
fn interrupted_create_states_are_redone() {
    let w = World::new("redo", "xfs");
    let env = w.env();
    // A record left `creating` (by an older local-dir) and a bare image.
    create(&env, "pvc-r", MIB, mount_cap("")).unwrap();
    let mut meta = w.meta("pvc-r").unwrap();
    meta.state = State::Creating;
    store::write_meta(&env.layout, "pvc-r", &meta).unwrap();
    assert_eq!(
        code(controller::get_volume(&env, "pvc-r".into())),
        ErrorCode::NotFound
    );
    create(&env, "pvc-r", MIB, mount_cap("")).unwrap();
    let meta = w.meta("pvc-r").unwrap();
    assert_eq!(meta.state, State::Ready);
    assert!(meta.format_pending);
    // A directory without meta (crash right after mkdir).
    std::fs::create_dir_all(env.layout.dir("pvc-s")).unwrap();
    std::fs::write(env.layout.image("pvc-s"), b"junk").unwrap();
    create(&env, "pvc-s", MIB, mount_cap("")).unwrap();
    assert_eq!(
        std::fs::metadata(env.layout.image("pvc-s")).unwrap().len(),
        300 * MIB
    );
}

#[test]
fn delete_removes_everything_even_after_crashes() {
    let probe = World::new("dprobe", "xfs");
    let staging = probe.path("stage");
    let setup = |w: &World, staging: &str| {
        let env = w.env();
        create(&env, "pvc-d", MIB, block_cap()).unwrap();
        node::stage_volume(&env, stage_req("pvc-d", staging, block_cap())).unwrap();
        assert_eq!(w.fake.st().loops.len(), 1);
    };
    setup(&probe, &staging);
    let n = probe.calls_of(|env| controller::delete_volume(env, "pvc-d".into()).unwrap());
    assert!(probe.volume_dirs().is_empty());
    assert!(probe.fake.st().loops.is_empty(), "loop device detached");
    for at in 1..=n {
        let w = World::new(&format!("d{at}"), "xfs");
        let staging = w.path("stage");
        setup(&w, &staging);
        assert!(w
            .run(Some(at), |env| controller::delete_volume(
                env,
                "pvc-d".into()
            ))
            .is_none());
        let env = w.env();
        assert_eq!(
            code(controller::get_volume(&env, "pvc-d".into())),
            ErrorCode::NotFound
        );
        assert!(controller::list_volumes(&env, String::new(), 0)
            .unwrap()
            .volumes
            .is_empty());
        controller::delete_volume(&env, "pvc-d".into()).unwrap();
        assert!(w.volume_dirs().is_empty() && w.fake.st().loops.is_empty());
    }
    let env = probe.env();
    controller::delete_volume(&env, "pvc-d".into()).unwrap();
    controller::delete_volume(&env, "never-was".into()).unwrap();
    assert_eq!(
        code(controller::delete_volume(&env, "../x".into())),
        ErrorCode::InvalidArgument
    );
}

/// Deleting an image volume that was never staged looks for no loop device
/// (that looks at every loop device on the node); once staged, it does.
#[test]
fn only_a_staged_image_is_looked_for_on_loop_devices() {
    let w = World::new("loops", "xfs");
    let env = w.env();
    let steps_of = |op: &dyn Fn(&Env)| {
        let from = w.fake.st().steps.len();
        op(&env);
        w.fake.st().steps[from..].to_vec()
    };
    create(&env, "pvc-n", MIB, mount_cap("")).unwrap();
    let steps = steps_of(&|env| controller::delete_volume(env, "pvc-n".into()).unwrap());
    assert!(!steps.contains(&"find-loop"), "{steps:?}");
    assert!(w.volume_dirs().is_empty());

    let staging = w.path("stage");
    create(&env, "pvc-s", MIB, mount_cap("")).unwrap();
    node::stage_volume(&env, stage_req("pvc-s", &staging, mount_cap(""))).unwrap();
    node::unstage_volume(&env, "pvc-s".into(), staging.clone()).unwrap();
    let steps = steps_of(&|env| controller::delete_volume(env, "pvc-s".into()).unwrap());
    assert!(steps.contains(&"find-loop"), "{steps:?}");
    assert!(w.volume_dirs().is_empty());
}

#[test]
fn image_mount_lifecycle_is_idempotent() {
    let w = World::new("life", "xfs");
    let env = w.env();
    let (staging, target) = (w.path("stage"), w.path("target"));
    create(&env, "pvc-l", MIB, mount_cap("")).unwrap();

    assert_eq!(
        code(node::publish_volume(
            &env,
            publish_req("pvc-l", &staging, &target, mount_cap(""), false)
        )),
        ErrorCode::FailedPrecondition,
        "publish before stage must not bind an empty directory"
    );
    for _ in 0..2 {
        node::stage_volume(&env, stage_req("pvc-l", &staging, mount_cap(""))).unwrap();
    }
    assert_eq!(w.fake.st().mounts[&staging].fs_type, "xfs");
    assert_eq!(
        code(node::stage_volume(
            &env,
            stage_req("pvc-l", &staging, mount_cap("ext4"))
        )),
        // Staged, but with another filesystem: the spec's ALREADY_EXISTS.
        ErrorCode::AlreadyExists
    );
    for _ in 0..2 {
        node::publish_volume(
            &env,
            publish_req("pvc-l", &staging, &target, mount_cap(""), false),
        )
        .unwrap();
    }
    assert_eq!(
        code(node::publish_volume(
            &env,
            publish_req("pvc-l", &staging, &target, mount_cap(""), true)
        )),
        ErrorCode::AlreadyExists
    );
    let stats = node::get_volume_stats(&env, "pvc-l".into(), target.clone(), Some(staging.clone()))
        .unwrap();
    assert!(stats.healthy);
    assert_eq!(stats.total_bytes, 300 * MIB);
    assert_eq!(stats.used_inodes, 100);
    for _ in 0..2 {
        node::unpublish_volume(&env, "pvc-l".into(), target.clone()).unwrap();
    }
    let stats = node::get_volume_stats(&env, "pvc-l".into(), target.clone(), Some(staging.clone()))
        .unwrap();
    assert!(!stats.healthy && stats.message.contains("not mounted"));
    let missing = format!("{}/nowhere", w.root);
    assert_eq!(
        code(node::get_volume_stats(&env, "pvc-l".into(), missing, None)),
        ErrorCode::NotFound
    );
    for _ in 0..2 {
        node::unstage_volume(&env, "pvc-l".into(), staging.clone()).unwrap();
    }
    let st = w.fake.st();
    assert!(st.mounts.is_empty() && st.loops.is_empty());
}

#[test]
fn stage_retried_after_crash_anywhere_mounts_once() {
    let probe = World::new("sprobe", "xfs");
    let staging = probe.path("stage");
    create(&probe.env(), "pvc-s", MIB, mount_cap("")).unwrap();
    let n = probe.calls_of(|env| {
        node::stage_volume(env, stage_req("pvc-s", &staging, mount_cap(""))).unwrap()
    });
    for at in 1..=n {
        let w = World::new(&format!("s{at}"), "xfs");
        let staging = w.path("stage");
        create(&w.env(), "pvc-s", MIB, mount_cap("")).unwrap();
        let req = || stage_req("pvc-s", &staging, mount_cap(""));
        assert!(w
            .run(Some(at), |env| node::stage_volume(env, req()))
            .is_none());
        w.run(None, |env| node::stage_volume(env, req()))
            .unwrap()
            .unwrap();
        let st = w.fake.st();
        assert_eq!(st.loops.len(), 1);
        assert_eq!(st.mounts.len(), 1);
        assert_eq!(st.mounts[&staging].source, *st.loops.keys().next().unwrap());
    }
}

#[test]
fn first_stage_formats_once_and_a_crash_in_it_is_redone() {
    for fs in ["xfs", "ext4"] {
        let probe = World::new(&format!("fprobe-{fs}"), "xfs");
        probe.set("fsType", fs);
        let staging = probe.path("stage");
        create(&probe.env(), "pvc-f", MIB, mount_cap("")).unwrap();
        let n = probe.calls_of(|env| {
            node::stage_volume(env, stage_req("pvc-f", &staging, mount_cap(""))).unwrap()
        });
        for at in 1..=n {
            let w = World::new(&format!("f{fs}{at}"), "xfs");
            w.set("fsType", fs);
            let staging = w.path("stage");
            let env = w.env();
            let cap = create(&env, "pvc-f", MIB, mount_cap("")).unwrap();
            let req = || stage_req("pvc-f", &staging, mount_cap(""));
            assert!(w
                .run(Some(at), |env| node::stage_volume(env, req()))
                .is_none());
            w.run(None, |env| node::stage_volume(env, req()))
                .unwrap()
                .unwrap();
            let meta = w.meta("pvc-f").unwrap();
            assert!(
                !meta.format_pending && !meta.grow_pending,
                "{fs}: crash at {at}"
            );
            let image = env.layout.image("pvc-f");
            let st = w.fake.st();
            assert_eq!(st.filesystems[&image], (fs.to_string(), cap));
            assert_eq!(st.mounts[&staging].fs_type, fs);
            assert_eq!(st.loops.len(), 1);
        }
    }

    // What a half-made filesystem left is wiped before mkfs; once made, a
    // filesystem is never made again.
    let w = World::new("fonce", "xfs");
    let env = w.env();
    let staging = w.path("stage");
    create(&env, "pvc-o", MIB, mount_cap("")).unwrap();
    let image = env.layout.image("pvc-o");
    write_at_start(&image, b"half-made");
    node::stage_volume(&env, stage_req("pvc-o", &staging, mount_cap(""))).unwrap();
    assert_eq!(head(&image, 9), [0; 9]);
    write_at_start(&image, b"user data");
    node::unstage_volume(&env, "pvc-o".into(), staging.clone()).unwrap();
    node::stage_volume(&env, stage_req("pvc-o", &staging, mount_cap(""))).unwrap();
    assert_eq!(head(&image, 9), b"user data");
}

#[test]
fn never_staged_volumes_expand_copy_and_format_at_first_use() {
    for fs in ["xfs", "ext4"] {
        let w = World::new(&format!("fresh-{fs}"), "xfs");
        w.set("fsType", fs);
        let env = w.env();
        let cap = create(&env, "pvc-n", MIB, mount_cap("")).unwrap();
        // Expanded before any stage: the image grows, no filesystem to grow.
        let grown = node::expand_volume(
            &env,
            node_expand_req("pvc-n", &w.path("nowhere"), 2 * cap, Some(mount_cap(""))),
        )
        .unwrap();
        assert_eq!(grown, 2 * cap);
        let meta = w.meta("pvc-n").unwrap();
        assert!(meta.format_pending && !meta.grow_pending);
        assert_eq!(
            std::fs::metadata(env.layout.image("pvc-n")).unwrap().len(),
            2 * cap
        );
        // Its snapshot, a restore and a clone are as unformatted as it is.
        snapshot::create(&env, snap_req("snap-n", "pvc-n")).unwrap();
        assert!(snapshot::ready(&env, "snap-n").unwrap().format_pending);
        let restore = ContentSource::Snapshot("snap-n".into());
        controller::create_volume(&env, from_req("pvc-r", MIB, None, restore)).unwrap();
        let clone = ContentSource::Volume("pvc-n".into());
        controller::create_volume(&env, from_req("pvc-c", 3 * cap, None, clone)).unwrap();
        assert!(w.fake.st().new_uuids.is_empty(), "no filesystem to rename");
        for (v, size) in [("pvc-n", 2 * cap), ("pvc-r", 2 * cap), ("pvc-c", 3 * cap)] {
            let meta = w.meta(v).unwrap();
            assert!(
                meta.format_pending && !meta.grow_pending && !meta.nouuid,
                "{v}"
            );
            let staging = w.path(&format!("stage-{v}"));
            node::stage_volume(&env, stage_req(v, &staging, mount_cap(""))).unwrap();
            let image = env.layout.image(v);
            assert_eq!(
                w.fake.st().filesystems[&image],
                (fs.to_string(), size),
                "{v}"
            );
            assert!(!w.meta(v).unwrap().format_pending, "{v}");
            assert!(!w.fake.st().mount_options[&staging].contains(&"nouuid".to_string()));
        }
        // Formatted now: its next snapshot is of a filesystem.
        snapshot::create(&env, snap_req("snap-f", "pvc-n")).unwrap();
        assert!(!snapshot::ready(&env, "snap-f").unwrap().format_pending);
    }
}

#[test]
fn a_block_stage_of_a_filesystem_volume_formats_it_first() {
    let w = World::new("blockfs", "xfs");
    let env = w.env();
    create(&env, "pvc-bf", MIB, mount_cap("")).unwrap();
    let staging = w.path("stage");
    node::stage_volume(&env, stage_req("pvc-bf", &staging, block_cap())).unwrap();
    assert!(!w.meta("pvc-bf").unwrap().format_pending);
    assert_eq!(
        w.fake.st().filesystems[&env.layout.image("pvc-bf")].0,
        "xfs"
    );
}

#[test]
fn raw_block_volumes() {
    let w = World::new("block", "xfs");
    let env = w.env();
    let (staging, target) = (w.path("stage"), w.path("dev"));
    assert_eq!(
        create(&env, "pvc-b", 1, block_cap()).unwrap(),
        MIB,
        "no mkfs minimum"
    );
    assert!(w.fake.st().filesystems.is_empty());
    node::stage_volume(&env, stage_req("pvc-b", &staging, block_cap())).unwrap();
    assert!(w.fake.st().mounts.is_empty());
    assert_eq!(
        code(node::stage_volume(
            &env,
            stage_req("pvc-b", &staging, mount_cap(""))
        )),
        ErrorCode::FailedPrecondition
    );
    for _ in 0..2 {
        node::publish_volume(
            &env,
            publish_req("pvc-b", &staging, &target, block_cap(), false),
        )
        .unwrap();
    }
    let stats = node::get_volume_stats(&env, "pvc-b".into(), target.clone(), None).unwrap();
    assert_eq!((stats.total_bytes, stats.healthy), (MIB, true));
    let grown = node::expand_volume(
        &env,
        node_expand_req("pvc-b", &target, 3 * MIB, Some(block_cap())),
    )
    .unwrap();
    assert_eq!(grown, 3 * MIB);
    let st = w.fake.st();
    assert_eq!(
        st.loops.values().next().unwrap().1,
        3 * MIB,
        "loop refreshed"
    );
}

#[test]
fn xfs_expand_online_survives_crashes() {
    let setup = |w: &World, staging: &str| {
        let env = w.env();
        create(&env, "pvc-e", MIB, mount_cap("")).unwrap();
        node::stage_volume(&env, stage_req("pvc-e", staging, mount_cap(""))).unwrap();
        let r = ExpandRequest {
            volume_id: "pvc-e".into(),
            capacity: CapacityRange {
                required_bytes: Some(400 * MIB - 5),
                limit_bytes: None,
            },
            capability: None,
            secrets: vec![],
        };
        let out = controller::expand_volume(&env, r).unwrap();
        assert_eq!(
            (out.capacity_bytes, out.node_expansion_required),
            (400 * MIB, true)
        );
    };
    let check = |w: &World, staging: &str| {
        let env = w.env();
        let meta = w.meta("pvc-e").unwrap();
        assert_eq!((meta.capacity_bytes, meta.grow_pending), (400 * MIB, false));
        let image = env.layout.image("pvc-e");
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 400 * MIB);
        let st = w.fake.st();
        assert_eq!(st.filesystems[&image].1, 400 * MIB, "filesystem grown");
        assert!(st.mounts.contains_key(staging));
    };
    let expand = |staging: &str| {
        let staging = staging.to_string();
        move |env: &Env| {
            node::expand_volume(
                env,
                node_expand_req("pvc-e", &staging, 400 * MIB, Some(mount_cap(""))),
            )
        }
    };

    let probe = World::new("eprobe", "xfs");
    let staging = probe.path("stage");
    setup(&probe, &staging);
    let n = probe.calls_of(|env| expand(&staging)(env).unwrap());
    check(&probe, &staging);
    assert_eq!(
        expand(&staging)(&probe.env()).unwrap(),
        400 * MIB,
        "idempotent"
    );

    for at in 1..=n {
        let w = World::new(&format!("e{at}"), "xfs");
        let staging = w.path("stage");
        setup(&w, &staging);
        assert!(w.run(Some(at), expand(&staging)).is_none());
        assert_eq!(w.run(None, expand(&staging)).unwrap().unwrap(), 400 * MIB);
        check(&w, &staging);
    }

    // A crash after the intent is recorded, then an unstage and a new
    // stage instead of a retry: the stage finishes the growth.
    // (The first crash point past the checks made before the intent.)
    let (w, staging) = (1..=n)
        .find_map(|at| {
            let w = World::new(&format!("estage{at}"), "xfs");
            let staging = w.path("stage");
            setup(&w, &staging);
            assert!(w.run(Some(at), expand(&staging)).is_none());
            let pending = w.meta("pvc-e").unwrap().grow_pending;
            pending.then_some((w, staging))
        })
        .expect("a crash point after the intent");
    let env = w.env();
    node::unstage_volume(&env, "pvc-e".into(), staging.clone()).unwrap();
    node::stage_volume(&env, stage_req("pvc-e", &staging, mount_cap(""))).unwrap();
    check(&w, &staging);
}

#[test]
fn ext4_grow_refused_online_happens_at_next_stage() {
    let w = World::new("ext4", "xfs");
    w.set("fsType", "ext4");
    let env = w.env();
    let staging = w.path("stage");
    assert_eq!(create(&env, "pvc-4", MIB, mount_cap("")).unwrap(), 32 * MIB);
    node::stage_volume(&env, stage_req("pvc-4", &staging, mount_cap(""))).unwrap();
    w.fake.st().refuse_online_ext4 = true;
    let r = node::expand_volume(
        &env,
        node_expand_req("pvc-4", &staging, 64 * MIB, Some(mount_cap(""))),
    );
    assert_eq!(code(r), ErrorCode::FailedPrecondition);
    let meta = w.meta("pvc-4").unwrap();
    assert!(meta.grow_pending && meta.capacity_bytes == 64 * MIB);
    node::unstage_volume(&env, "pvc-4".into(), staging.clone()).unwrap();
    node::stage_volume(&env, stage_req("pvc-4", &staging, mount_cap(""))).unwrap();
    assert!(!w.meta("pvc-4").unwrap().grow_pending);
    assert_eq!(
        w.fake.st().filesystems[&env.layout.image("pvc-4")].1,
        64 * MIB
    );
    let again = node::expand_volume(
        &env,
        node_expand_req("pvc-4", &staging, 64 * MIB, Some(mount_cap(""))),
    );
    assert_eq!(again.unwrap(), 64 * MIB);
}

#[test]
fn subvolume_volumes() {
    let w = World::new("sub", "btrfs");
    w.set("mode", "subvolume");
    let env = w.env();
    let (staging, target) = (w.path("stage"), w.path("target"));
    assert_eq!(
        code(create(&env, "pvc-v", MIB, block_cap())),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        create(&env, "pvc-v", 5 * MIB - 1, mount_cap("")).unwrap(),
        5 * MIB
    );
    let data = env.layout.data("pvc-v");
    assert_eq!(w.fake.st().limits[&data], 5 * MIB);
    node::stage_volume(&env, stage_req("pvc-v", &staging, mount_cap(""))).unwrap();
    node::stage_volume(&env, stage_req("pvc-v", &staging, mount_cap(""))).unwrap();
    node::publish_volume(
        &env,
        publish_req("pvc-v", &staging, &target, mount_cap(""), true),
    )
    .unwrap();
    w.fake.st().used.insert(data.clone(), MIB);
    let stats = node::get_volume_stats(&env, "pvc-v".into(), target.clone(), None).unwrap();
    assert_eq!(
        (
            stats.total_bytes,
            stats.used_bytes,
            stats.available_bytes,
            stats.total_inodes
        ),
        (5 * MIB, MIB, 4 * MIB, 1000)
    );
    let grown =
        node::expand_volume(&env, node_expand_req("pvc-v", &target, 8 * MIB, None)).unwrap();
    assert_eq!(grown, 8 * MIB);
    assert_eq!(w.fake.st().limits[&data], 8 * MIB);
    assert_eq!(w.meta("pvc-v").unwrap().capacity_bytes, 8 * MIB);
    node::unpublish_volume(&env, "pvc-v".into(), target).unwrap();
    node::unstage_volume(&env, "pvc-v".into(), staging).unwrap();
    controller::delete_volume(&env, "pvc-v".into()).unwrap();
    assert!(w.fake.st().subvolumes.is_empty() && w.volume_dirs().is_empty());
}

#[test]
fn subvolume_clones_copy_the_data_and_outlive_their_source() {
    let w = World::new("clone", "btrfs");
    w.set("mode", "subvolume");
    let env = w.env();
    create(&env, "pvc-src", 8 * MIB, mount_cap("")).unwrap();
    std::fs::write(
        format!("{}/hello", env.layout.data("pvc-src")),
        "from the source",
    )
    .unwrap();
    let clone_req = |name: &str, required: u64, limit: Option<u64>| {
        let mut r = create_req(name, required, mount_cap(""));
        r.capacity.limit_bytes = limit;
        r.content_source = Some(ContentSource::Volume("pvc-src".into()));
        r
    };

    // Smaller than the source: raised to the source's size.
    let vol = controller::create_volume(&env, clone_req("pvc-copy", MIB, None)).unwrap();
    assert_eq!(vol.capacity_bytes, 8 * MIB);
    assert!(matches!(&vol.content_source, Some(ContentSource::Volume(s)) if s == "pvc-src"));
    let copy = env.layout.data("pvc-copy");
    assert_eq!(
        std::fs::read_to_string(format!("{copy}/hello")).unwrap(),
        "from the source"
    );
    assert_eq!(w.fake.st().limits[&copy], 8 * MIB);
    // The same request again is the same volume; another source or none is not.
    let again = controller::create_volume(&env, clone_req("pvc-copy", MIB, None)).unwrap();
    assert_eq!(
        (again.volume_id, again.capacity_bytes),
        (vol.volume_id, vol.capacity_bytes)
    );
    assert_eq!(
        code(create(&env, "pvc-copy", 8 * MIB, mount_cap(""))),
        ErrorCode::AlreadyExists
    );
    // A limit below the source's size cannot be met.
    assert_eq!(
        code(controller::create_volume(
            &env,
            clone_req("pvc-tiny", MIB, Some(4 * MIB))
        )),
        ErrorCode::OutOfRange
    );
    assert!(!w.volume_dirs().contains(&"pvc-tiny".to_string()));

    // A crash anywhere in a clone: the retry finishes it.
    for n in 0..w.calls_of(|env| controller::create_volume(env, clone_req("pvc-c2", MIB, None))) {
        controller::delete_volume(&env, "pvc-c2".into()).unwrap();
        w.run(Some(n), |env| {
            controller::create_volume(env, clone_req("pvc-c2", MIB, None))
        });
        let done = controller::create_volume(&env, clone_req("pvc-c2", MIB, None)).unwrap();
        assert_eq!(done.capacity_bytes, 8 * MIB, "crash at call {n}");
    }

    // The source goes; its clones stay whole, and a repeated create of one
    // still answers it.
    controller::delete_volume(&env, "pvc-src".into()).unwrap();
    let repeated = controller::create_volume(&env, clone_req("pvc-copy", MIB, None)).unwrap();
    assert_eq!(repeated.volume_id, "pvc-copy");
    assert_eq!(
        std::fs::read_to_string(format!("{copy}/hello")).unwrap(),
        "from the source"
    );
    for id in ["pvc-copy", "pvc-c2"] {
        controller::delete_volume(&env, id.into()).unwrap();
    }
    assert!(w.fake.st().subvolumes.is_empty() && w.volume_dirs().is_empty());
}

#[test]
fn subvolume_needs_btrfs() {
    let w = World::new("nobtrfs", "xfs");
    let env = w.env();
    let mut r = create_req("pvc-n", MIB, mount_cap(""));
    r.parameters = vec![("mode".into(), "subvolume".into())];
    assert_eq!(
        code(controller::create_volume(&env, r)),
        ErrorCode::InvalidArgument
    );
    w.set("mode", "subvolume");
    let e = create(&env, "pvc-n", MIB, mount_cap("")).unwrap_err();
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("btrfs"), "{}", e.message);
    assert!(w.volume_dirs().is_empty());
}

#[test]
fn list_pages_and_capacity() {
    let w = World::new("list", "xfs");
    let env = w.env();
    for name in ["pvc-c", "pvc-a", "pvc-b"] {
        create(&env, name, MIB, block_cap()).unwrap();
    }
    let all = controller::list_volumes(&env, String::new(), 0).unwrap();
    let ids: Vec<_> = all.volumes.iter().map(|v| v.volume_id.as_str()).collect();
    assert_eq!(
        (ids, all.next_token.as_str()),
        (vec!["pvc-a", "pvc-b", "pvc-c"], "")
    );
    let p1 = controller::list_volumes(&env, String::new(), 2).unwrap();
    assert_eq!((p1.volumes.len(), p1.next_token.as_str()), (2, "pvc-b"));
    let p2 = controller::list_volumes(&env, p1.next_token, 2).unwrap();
    assert_eq!(
        (p2.volumes[0].volume_id.as_str(), p2.next_token.as_str()),
        ("pvc-c", "")
    );
    assert_eq!(
        code(controller::list_volumes(&env, "Not-An-Id!".into(), 2)),
        ErrorCode::Aborted
    );

    // The three sparse 1 MiB images may still claim 3 MiB of the root;
    // the answer is whole MiB, as a create of exactly it rounds.
    assert_eq!(
        controller::get_capacity(&env, vec![]).unwrap(),
        (1 << 39) - 4 * MIB
    );
    let bad = vec![("colour".into(), "red".into())];
    assert_eq!(
        code(controller::get_capacity(&env, bad)),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn controller_expand_without_local_meta_only_rounds() {
    let w = World::new("cexp", "xfs");
    let env = w.env();
    let req = |bytes, limit| ExpandRequest {
        volume_id: "pvc-elsewhere".into(),
        capacity: CapacityRange {
            required_bytes: Some(bytes),
            limit_bytes: limit,
        },
        capability: None,
        secrets: vec![],
    };
    let out = controller::expand_volume(&env, req(5 * MIB + 1, None)).unwrap();
    assert_eq!(
        (out.capacity_bytes, out.node_expansion_required),
        (6 * MIB, true)
    );
    assert_eq!(
        code(controller::expand_volume(
            &env,
            req(5 * MIB + 1, Some(5 * MIB + 1))
        )),
        ErrorCode::OutOfRange
    );
}

// ---- snapshots, restores, image clones, room and condition ----

fn snap_req(
    name: &str,
    source: &str,
) -> crate::exports::wasmcsi::plugin::controller::CreateSnapshotRequest {
    crate::exports::wasmcsi::plugin::controller::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        parameters: vec![],
        secrets: vec![],
    }
}

fn filter(
    snapshot: Option<&str>,
    source: Option<&str>,
    token: &str,
    max: u32,
) -> crate::exports::wasmcsi::plugin::controller::SnapshotFilter {
    crate::exports::wasmcsi::plugin::controller::SnapshotFilter {
        snapshot_id: snapshot.map(Into::into),
        source_volume_id: source.map(Into::into),
        starting_token: token.into(),
        max_entries: max,
        secrets: vec![],
    }
}

fn from_req(
    name: &str,
    required: u64,
    limit: Option<u64>,
    source: ContentSource,
) -> CreateVolumeRequest {
    let mut r = create_req(name, required, mount_cap(""));
    r.capacity.limit_bytes = limit;
    r.content_source = Some(source);
    r
}

fn ids(page: &crate::exports::wasmcsi::plugin::controller::SnapshotPage) -> Vec<&str> {
    page.snapshots
        .iter()
        .map(|s| s.snapshot_id.as_str())
        .collect()
}

fn head(path: &str, n: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[..n].to_vec()
}

fn write_at_start(path: &str, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn image_snapshot_restore_and_clone() {
    let w = World::new("isnap", "xfs");
    let env = w.env();
    let staging = w.path("stage");
    create(&env, "pvc-src", MIB, mount_cap("")).unwrap();
    let src_image = env.layout.image("pvc-src");
    node::stage_volume(&env, stage_req("pvc-src", &staging, mount_cap(""))).unwrap();
    write_at_start(&src_image, b"before");

    let snap = snapshot::create(&env, snap_req("snap-1", "pvc-src")).unwrap();
    assert_eq!(
        (snap.snapshot_id.as_str(), snap.source_volume_id.as_str()),
        ("snap-1", "pvc-src")
    );
    assert_eq!((snap.size_bytes, snap.ready_to_use), (300 * MIB, true));
    assert!(snap.creation_time > 1_600_000_000);
    assert_eq!(
        w.fake.st().frozen,
        std::slice::from_ref(&staging),
        "taken frozen"
    );
    // Same name, same source: the same snapshot; another source: refused.
    let again = snapshot::create(&env, snap_req("snap-1", "pvc-src")).unwrap();
    assert_eq!(again.creation_time, snap.creation_time);
    create(&env, "pvc-other", MIB, mount_cap("")).unwrap();
    assert_eq!(
        code(snapshot::create(&env, snap_req("snap-1", "pvc-other"))),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(snapshot::create(&env, snap_req("snap-x", "pvc-gone"))),
        ErrorCode::NotFound
    );
    write_at_start(&src_image, b"after!");

    // Restore, larger: the snapshot's data, a new UUID, the new size, and
    // the filesystem grows at the first stage.
    let snap_src = ContentSource::Snapshot("snap-1".into());
    let vol = controller::create_volume(&env, from_req("pvc-r", 400 * MIB, None, snap_src.clone()))
        .unwrap();
    assert_eq!(vol.capacity_bytes, 400 * MIB);
    assert!(matches!(&vol.content_source, Some(ContentSource::Snapshot(s)) if s == "snap-1"));
    let image = env.layout.image("pvc-r");
    assert_eq!(head(&image, 6), b"before");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 400 * MIB);
    assert!(
        w.meta("pvc-r").unwrap().nouuid,
        "an XFS copy mounts with nouuid"
    );
    assert!(w.fake.st().new_uuids.is_empty());
    let restaging = w.path("stage-r");
    node::stage_volume(&env, stage_req("pvc-r", &restaging, mount_cap(""))).unwrap();
    assert_eq!(w.fake.st().filesystems[&image].1, 400 * MIB, "grown");
    assert!(w.fake.st().mount_options[&restaging].contains(&"nouuid".to_string()));
    assert!(!w.meta("pvc-r").unwrap().grow_pending);
    // Repeats: the same volume; another source: refused.
    let repeat =
        controller::create_volume(&env, from_req("pvc-r", 400 * MIB, None, snap_src.clone()))
            .unwrap();
    assert_eq!(repeat.capacity_bytes, 400 * MIB);
    assert_eq!(
        code(controller::create_volume(
            &env,
            from_req(
                "pvc-r",
                400 * MIB,
                None,
                ContentSource::Volume("pvc-src".into())
            )
        )),
        ErrorCode::AlreadyExists
    );
    // Below the snapshot's size, or of a snapshot that is not there.
    assert_eq!(
        code(controller::create_volume(
            &env,
            from_req("pvc-t", MIB, Some(200 * MIB), snap_src.clone())
        )),
        ErrorCode::OutOfRange
    );
    assert_eq!(
        code(controller::create_volume(
            &env,
            from_req("pvc-t", MIB, None, ContentSource::Snapshot("nope".into()))
        )),
        ErrorCode::NotFound
    );
    // Another filesystem than the snapshot's.
    let mut ext4 = from_req("pvc-t", MIB, None, snap_src.clone());
    ext4.capabilities = vec![mount_cap("ext4")];
    assert_eq!(
        code(controller::create_volume(&env, ext4)),
        ErrorCode::InvalidArgument
    );

    // An image clone of the mounted source: its current data, frozen.
    w.fake.st().frozen.clear();
    let clone = controller::create_volume(
        &env,
        from_req("pvc-c", MIB, None, ContentSource::Volume("pvc-src".into())),
    )
    .unwrap();
    assert_eq!(clone.capacity_bytes, 300 * MIB);
    let clone_image = env.layout.image("pvc-c");
    assert_eq!(head(&clone_image, 6), b"after!");
    assert!(w.meta("pvc-c").unwrap().nouuid);
    assert_eq!(w.fake.st().frozen, std::slice::from_ref(&staging));

    // The source goes; the snapshot stays and still restores.
    node::unstage_volume(&env, "pvc-src".into(), staging).unwrap();
    controller::delete_volume(&env, "pvc-src".into()).unwrap();
    controller::create_volume(&env, from_req("pvc-r2", MIB, None, snap_src.clone())).unwrap();
    assert_eq!(head(&env.layout.image("pvc-r2"), 6), b"before");
    snapshot::delete(&env, "snap-1").unwrap();
    snapshot::delete(&env, "snap-1").unwrap();
    assert!(!std::path::Path::new(&env.layout.snap_dir("snap-1")).exists());
    assert_eq!(code(snapshot::ready(&env, "snap-1")), ErrorCode::NotFound);
}

#[test]
fn snapshots_list_with_filters_and_pages() {
    let w = World::new("lsnap", "btrfs");
    w.set("mode", "subvolume");
    let env = w.env();
    for v in ["pvc-a", "pvc-b"] {
        create(&env, v, MIB, mount_cap("")).unwrap();
    }
    for (s, v) in [("s3", "pvc-a"), ("s1", "pvc-a"), ("s2", "pvc-b")] {
        snapshot::create(&env, snap_req(s, v)).unwrap();
        assert!(w.fake.st().read_only.contains(&env.layout.snap_data(s)));
    }
    let all = snapshot::list(&env, filter(None, None, "", 0)).unwrap();
    assert_eq!(
        (ids(&all), all.next_token.as_str()),
        (vec!["s1", "s2", "s3"], "")
    );
    let of_a = snapshot::list(&env, filter(None, Some("pvc-a"), "", 0)).unwrap();
    assert_eq!(ids(&of_a), ["s1", "s3"]);
    let one = snapshot::list(&env, filter(Some("s2"), None, "", 0)).unwrap();
    assert_eq!(ids(&one), ["s2"]);
    assert_eq!(one.snapshots[0].source_volume_id, "pvc-b");
    let none = snapshot::list(&env, filter(Some("s2"), Some("pvc-a"), "", 0)).unwrap();
    assert!(none.snapshots.is_empty());
    for missing in ["s9", "Not/An-Id"] {
        let page = snapshot::list(&env, filter(Some(missing), None, "", 0)).unwrap();
        assert!(page.snapshots.is_empty(), "{missing}");
    }
    let p1 = snapshot::list(&env, filter(None, None, "", 2)).unwrap();
    assert_eq!((ids(&p1), p1.next_token.as_str()), (vec!["s1", "s2"], "s2"));
    let p2 = snapshot::list(&env, filter(None, None, &p1.next_token, 2)).unwrap();
    assert_eq!((ids(&p2), p2.next_token.as_str()), (vec!["s3"], ""));
    assert_eq!(
        code(snapshot::list(&env, filter(None, None, "Bad!", 2))),
        ErrorCode::Aborted
    );

    // Restore into a subvolume with its own limit, larger than the snapshot.
    std::fs::write(format!("{}/f", env.layout.snap_data("s2")), "kept").unwrap();
    let vol = controller::create_volume(
        &env,
        from_req("pvc-r", 4 * MIB, None, ContentSource::Snapshot("s2".into())),
    )
    .unwrap();
    assert_eq!(vol.capacity_bytes, 4 * MIB);
    let data = env.layout.data("pvc-r");
    assert_eq!(
        std::fs::read_to_string(format!("{data}/f")).unwrap(),
        "kept"
    );
    assert_eq!(w.fake.st().limits[&data], 4 * MIB);
    assert!(
        !w.fake.st().read_only.contains(&data),
        "restores are writable"
    );
    // An image-mode restore of a subvolume snapshot is refused.
    let mut r = from_req("pvc-i", MIB, None, ContentSource::Snapshot("s2".into()));
    r.parameters = vec![("mode".into(), "image".into())];
    assert_eq!(
        code(controller::create_volume(&env, r)),
        ErrorCode::InvalidArgument
    );
    for s in ["s1", "s2", "s3"] {
        snapshot::delete(&env, s).unwrap();
    }
    assert!(snapshot::list(&env, filter(None, None, "", 0))
        .unwrap()
        .snapshots
        .is_empty());
    assert!(!w
        .fake
        .st()
        .subvolumes
        .iter()
        .any(|s| s.contains("/snapshots/")));
}

#[test]
fn snapshot_and_restore_retried_after_crash_anywhere_finish() {
    for (tag, fs, mode) in [("kimg", "xfs", "image"), ("ksub", "btrfs", "subvolume")] {
        let setup = |w: &World| {
            w.set("mode", mode);
            create(&w.env(), "pvc-s", MIB, mount_cap("")).unwrap();
        };
        let probe = World::new(&format!("{tag}-probe"), fs);
        setup(&probe);
        let n = probe.calls_of(|env| snapshot::create(env, snap_req("snap", "pvc-s")).unwrap());
        let restore = |env: &Env| {
            controller::create_volume(
                env,
                from_req("pvc-r", MIB, None, ContentSource::Snapshot("snap".into())),
            )
        };
        let m = probe.calls_of(|env| restore(env).unwrap());
        for at in 1..=n {
            let w = World::new(&format!("{tag}-s{at}"), fs);
            setup(&w);
            assert!(w
                .run(Some(at), |env| snapshot::create(
                    env,
                    snap_req("snap", "pvc-s")
                ))
                .is_none());
            let env = w.env();
            // Half-made snapshots are not listed.
            let listed = snapshot::list(&env, filter(None, None, "", 0)).unwrap();
            assert!(listed.snapshots.len() <= 1);
            snapshot::create(&env, snap_req("snap", "pvc-s")).unwrap();
            assert_eq!(
                ids(&snapshot::list(&env, filter(None, None, "", 0)).unwrap()),
                ["snap"],
                "{tag}: crash at call {at}"
            );
        }
        for at in 1..=m {
            let w = World::new(&format!("{tag}-r{at}"), fs);
            setup(&w);
            snapshot::create(&w.env(), snap_req("snap", "pvc-s")).unwrap();
            assert!(w.run(Some(at), restore).is_none());
            let vol = w.run(None, restore).unwrap().unwrap();
            assert_eq!(vol.capacity_bytes, w.meta("pvc-s").unwrap().capacity_bytes);
            assert_eq!(w.meta("pvc-r").unwrap().state, State::Ready);
        }
    }
}

#[test]
fn image_creates_stay_within_the_roots_room() {
    let w = World::new("room", "xfs");
    let env = w.env();
    w.fake.st().root_available = Some(1 << 30);
    assert_eq!(controller::get_capacity(&env, vec![]).unwrap(), 1 << 30);
    create(&env, "pvc-1", 600 * MIB, mount_cap("")).unwrap();
    // Sparse: nothing of it is written yet, so it may still claim 600 MiB.
    assert_eq!(
        controller::get_capacity(&env, vec![]).unwrap(),
        (1 << 30) - 600 * MIB
    );
    let e = create(&env, "pvc-2", 600 * MIB, mount_cap("")).unwrap_err();
    assert_eq!(e.code, ErrorCode::ResourceExhausted, "{}", e.message);
    assert!(w.meta("pvc-2").is_none(), "nothing made");
    // What get-capacity offers can be made.
    let offered = controller::get_capacity(&env, vec![]).unwrap();
    create(&env, "pvc-3", offered, mount_cap("")).unwrap();
    assert_eq!(controller::get_capacity(&env, vec![]).unwrap(), 0);
    // Overcommit by configuration.
    w.set("overcommitRatio", "2");
    create(&env, "pvc-2", 600 * MIB, mount_cap("")).unwrap();
    assert_eq!(
        controller::get_capacity(&env, vec![]).unwrap(),
        (2 << 30) - (600 + 600) * MIB - offered
    );
    // A repeat of a made volume is no new claim.
    create(&env, "pvc-2", 600 * MIB, mount_cap("")).unwrap();
    w.set("overcommitRatio", "0");
    assert_eq!(code(env.settings()), ErrorCode::FailedPrecondition);
}

#[test]
fn volume_condition_is_checked() {
    let w = World::new("cond", "xfs");
    let env = w.env();
    let (staging, target) = (w.path("stage"), w.path("target"));
    create(&env, "pvc-h", MIB, mount_cap("")).unwrap();
    node::stage_volume(&env, stage_req("pvc-h", &staging, mount_cap(""))).unwrap();
    node::publish_volume(
        &env,
        publish_req("pvc-h", &staging, &target, mount_cap(""), false),
    )
    .unwrap();
    let stats = |w: &World| {
        node::get_volume_stats(
            &w.env(),
            "pvc-h".into(),
            target.clone(),
            Some(staging.clone()),
        )
        .unwrap()
    };
    assert!(stats(&w).healthy);
    // The filesystem went read-only under the staging mount.
    w.fake.st().mounts.get_mut(&staging).unwrap().read_only = true;
    let s = stats(&w);
    assert!(
        !s.healthy && s.message.contains("read-only"),
        "{}",
        s.message
    );
    w.fake.st().mounts.get_mut(&staging).unwrap().read_only = false;
    // The loop device was detached behind our back.
    let dev = w.fake.st().loops.keys().next().unwrap().clone();
    let saved = w.fake.st().loops.remove(&dev).unwrap();
    let s = stats(&w);
    assert!(!s.healthy && s.message.contains("loop"), "{}", s.message);
    w.fake.st().loops.insert(dev, saved);
    assert!(stats(&w).healthy);

    // Subvolume: a lost qgroup limit is no healthy volume.
    let w = World::new("cond-sub", "btrfs");
    w.set("mode", "subvolume");
    let env = w.env();
    let (staging, target) = (w.path("stage"), w.path("target"));
    create(&env, "pvc-q", MIB, mount_cap("")).unwrap();
    node::stage_volume(&env, stage_req("pvc-q", &staging, mount_cap(""))).unwrap();
    node::publish_volume(
        &env,
        publish_req("pvc-q", &staging, &target, mount_cap(""), false),
    )
    .unwrap();
    let get = || node::get_volume_stats(&env, "pvc-q".into(), target.clone(), None).unwrap();
    assert!(get().healthy);
    w.fake.st().limits.clear();
    let s = get();
    assert!(!s.healthy && s.message.contains("qgroup"), "{}", s.message);
}

#[test]
fn ext4_copies_get_a_new_uuid() {
    let w = World::new("e4copy", "xfs");
    w.set("fsType", "ext4");
    let env = w.env();
    create(&env, "pvc-e", MIB, mount_cap("")).unwrap();
    // Staged once, so it has its filesystem.
    let first = w.path("first");
    node::stage_volume(&env, stage_req("pvc-e", &first, mount_cap(""))).unwrap();
    node::unstage_volume(&env, "pvc-e".into(), first).unwrap();
    snapshot::create(&env, snap_req("snap", "pvc-e")).unwrap();
    controller::create_volume(
        &env,
        from_req("pvc-r", MIB, None, ContentSource::Snapshot("snap".into())),
    )
    .unwrap();
    let image = env.layout.image("pvc-r");
    assert!(w.fake.st().new_uuids.contains(&image));
    assert!(!w.meta("pvc-r").unwrap().nouuid);
    // Its filesystem is checked and grown offline before its first mount.
    let staging = w.path("stage");
    node::stage_volume(&env, stage_req("pvc-r", &staging, mount_cap(""))).unwrap();
    assert!(!w.meta("pvc-r").unwrap().grow_pending);
    assert!(!w.fake.st().mount_options[&staging].contains(&"nouuid".to_string()));
}

fn group_req(
    name: &str,
    sources: &[&str],
) -> crate::exports::wasmcsi::plugin::controller::CreateGroupSnapshotRequest {
    crate::exports::wasmcsi::plugin::controller::CreateGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        parameters: vec![],
        secrets: vec![],
    }
}

#[test]
fn group_snapshots_are_one_cut_restorable_and_deleted_together() {
    use crate::group;
    let w = World::new("group", "xfs");
    let env = w.env();
    let (stage_a, stage_b) = (w.path("stage-a"), w.path("stage-b"));
    for (id, staging, data) in [("pvc-a", &stage_a, b"aaaa"), ("pvc-b", &stage_b, b"bbbb")] {
        create(&env, id, MIB, mount_cap("")).unwrap();
        // The filesystem is made at the first stage: data after it.
        node::stage_volume(&env, stage_req(id, staging, mount_cap(""))).unwrap();
        write_at_start(&env.layout.image(id), data);
    }

    let g = group::create(&env, group_req("grp", &["pvc-a", "pvc-b"])).unwrap();
    assert_eq!(g.group_snapshot_id, "grp");
    assert!(g.ready_to_use);
    let sources: Vec<&str> = g
        .snapshots
        .iter()
        .map(|s| s.source_volume_id.as_str())
        .collect();
    assert_eq!(sources, ["pvc-a", "pvc-b"]);
    assert!(g
        .snapshots
        .iter()
        .all(|s| s.group_snapshot_id.as_deref() == Some("grp")));
    // One host call for both copies, with both filesystems frozen.
    assert_eq!(w.fake.st().group_copies, [2]);
    let frozen = w.fake.st().frozen.clone();
    assert!(
        frozen.contains(&stage_a) && frozen.contains(&stage_b),
        "{frozen:?}"
    );

    // Idempotent; other sources under the name: refused.
    let again = group::create(&env, group_req("grp", &["pvc-b", "pvc-a"])).unwrap();
    assert_eq!(again.creation_time, g.creation_time);
    assert_eq!(
        code(group::create(&env, group_req("grp", &["pvc-a"]))),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(group::create(
            &env,
            group_req("grp2", &["pvc-a", "pvc-gone"])
        )),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(group::create(&env, group_req("grp3", &["pvc-a", "pvc-a"]))),
        ErrorCode::InvalidArgument
    );

    // A member is listed with its group, restores like any snapshot, and
    // is not deleted on its own.
    let member_b = g.snapshots[1].snapshot_id.clone();
    let listed = snapshot::list(&env, filter(Some(&member_b), None, "", 0)).unwrap();
    assert_eq!(
        listed.snapshots[0].group_snapshot_id.as_deref(),
        Some("grp")
    );
    write_at_start(&env.layout.image("pvc-b"), b"BBBB");
    let restored = controller::create_volume(
        &env,
        from_req(
            "pvc-rb",
            MIB,
            None,
            ContentSource::Snapshot(member_b.clone()),
        ),
    )
    .unwrap();
    assert_eq!(head(&env.layout.image(&restored.volume_id), 4), b"bbbb");
    assert_eq!(
        code(snapshot::delete(&env, &member_b)),
        ErrorCode::InvalidArgument
    );

    // Get and delete check the members the CO names.
    let members: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    assert_eq!(
        group::get(&env, "grp", &members).unwrap().snapshots.len(),
        2
    );
    let wrong = vec![members[0].clone()];
    assert_eq!(
        code(group::get(&env, "grp", &wrong)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(group::delete(&env, "grp", &wrong)),
        ErrorCode::InvalidArgument
    );
    group::delete(&env, "grp", &members).unwrap();
    assert_eq!(code(group::get(&env, "grp", &[])), ErrorCode::NotFound);
    assert!(snapshot::list(&env, filter(None, None, "", 0))
        .unwrap()
        .snapshots
        .is_empty());
    group::delete(&env, "grp", &members).unwrap();
    group::delete(&env, "not/ours", &[]).unwrap();
}

#[test]
fn group_snapshot_create_and_delete_retried_after_crash_anywhere_finish() {
    use crate::group;
    for (tag, fs, mode) in [("gimg", "xfs", "image"), ("gsub", "btrfs", "subvolume")] {
        let setup = |w: &World| {
            w.set("mode", mode);
            for id in ["pvc-a", "pvc-b"] {
                create(&w.env(), id, MIB, mount_cap("")).unwrap();
            }
        };
        let cut = |env: &Env| group::create(env, group_req("grp", &["pvc-a", "pvc-b"]));
        let probe = World::new(&format!("{tag}-probe"), fs);
        setup(&probe);
        let n = probe.calls_of(|env| cut(env).unwrap());
        let d = probe.calls_of(|env| group::delete(env, "grp", &[]).unwrap());
        assert!(n > 0, "the cut calls the host");
        for at in 1..=n {
            let w = World::new(&format!("{tag}-c{at}"), fs);
            setup(&w);
            assert!(w.run(Some(at), cut).is_none());
            let env = w.env();
            // No half-cut group is visible.
            assert!(matches!(
                group::get(&env, "grp", &[]).map_err(|e| e.code),
                Err(ErrorCode::NotFound) | Ok(_)
            ));
            let g = cut(&env).unwrap();
            assert_eq!(g.snapshots.len(), 2, "{tag}: crash at call {at}");
            assert_eq!(
                snapshot::list(&env, filter(None, None, "", 0))
                    .unwrap()
                    .snapshots
                    .len(),
                2,
                "{tag}: crash at call {at}: a member leaked or is missing"
            );
        }
        for at in 1..=d {
            let w = World::new(&format!("{tag}-d{at}"), fs);
            setup(&w);
            cut(&w.env()).unwrap();
            assert!(w
                .run(Some(at), |env| group::delete(env, "grp", &[]))
                .is_none());
            let env = w.env();
            assert_eq!(code(group::get(&env, "grp", &[])), ErrorCode::NotFound);
            group::delete(&env, "grp", &[]).unwrap();
            assert!(
                snapshot::list(&env, filter(None, None, "", 0))
                    .unwrap()
                    .snapshots
                    .is_empty(),
                "{tag}: crash at delete call {at}: members left"
            );
            assert!(
                !store::exists(&env.layout.groups()).unwrap()
                    || std::fs::read_dir(env.layout.groups())
                        .unwrap()
                        .next()
                        .is_none()
            );
        }
    }
}
