//! The plugin in Python (`plugins/tmpfs-py`, built by componentize-py with
//! `make plugin-py`), loaded by the real host next to local-dir and spoken
//! to over the unix socket: create → stage → publish → fill until the
//! kernel refuses (ENOSPC at the size) → ControllerExpand + NodeExpand (the
//! tmpfs resized in place) → fill again until refused at the new size →
//! unpublish → unstage → delete, each step repeated; then bad input.
//!
//! Without componentize-py and the built `.wasm` the tests skip, loudly;
//! with `CI=true` they fail instead.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tonic::Code;
use wasmcsi::proto::volume_capability::{AccessType, MountVolume};
use wasmcsi::proto::*;

/// Builds the plugin when componentize-py is here (`make plugin-py`, so
/// the test loads what the source says now); else the `.wasm` already
/// built, if any; else `None` (skip), or a failure in CI.
fn python_plugin() -> Option<PathBuf> {
    // Once per test process: the tests run in parallel, one build is enough.
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_python_plugin).clone()
}

fn build_python_plugin() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let have_tool = Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_tool {
        let status = Command::new("make")
            .args(["--no-print-directory", "plugin-py"])
            .current_dir(&workspace)
            .status()
            .expect("running make plugin-py");
        assert!(status.success(), "make plugin-py failed");
    }
    let wasm = workspace.join("target/wasm32-wasip2/release/tmpfs_py.wasm");
    if wasm.exists() {
        return Some(wasm);
    }
    let why = "componentize-py is not installed and target/wasm32-wasip2/release/tmpfs_py.wasm \
               is not built (pip install -r plugins/tmpfs-py/requirements.txt; make plugin-py)";
    assert!(!in_ci, "CI=true: the Python plugin must be tested: {why}");
    // Past libtest's capture (it hides a passing test's eprintln!).
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING the tmpfs-py tests: {why}\n"
    );
    None
}

struct Scratch {
    d: TestDriver,
    /// The plugin's `fs` root: its volume records.
    records: tempfile::TempDir,
}

/// A CPython component starts with 12.4 MiB of linear memory (the
/// interpreter's initialised heap), so its calls need more than a Rust
/// plugin's 1-2 MiB: 8 MiB fails at load ("ran out of memory in info"),
/// 16 MiB passes these tests; 32 MiB leaves room. The default call
/// timeout is ample (a call is milliseconds). See plugins/tmpfs-py/README.md.
const LIMITS: &str = "limits: { memoryBytes: 33554432, callTimeoutSeconds: 30 }";

impl Scratch {
    async fn start() -> Option<Scratch> {
        let wasm = python_plugin()?;
        // Compiling 18 MiB of CPython takes a debug host ~20 s: the first
        // driver compiles into a cache shared by this file's tests, and the
        // others start after it, from the cache.
        static FIRST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _first = FIRST.lock().await;
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tmpfs-py-cache");
        let records = tempfile::tempdir().unwrap();
        let extra = format!(
            r#"  - name: tmpfs
    path: {wasm}
    {LIMITS}
    capabilities:
      fs: {{ root: "{records}" }}
      mount: {{ types: [tmpfs], targetPrefixes: ["${{TEST_KUBELET}}"] }}
      log: {{}}
runtime: {{ cacheDir: "{cache}" }}
"#,
            wasm = wasm.display(),
            cache = cache.display(),
            records = records.path().display(),
        );
        let d = TestDriver::start(Options {
            plugin_extra: extra,
            ..Default::default()
        })
        .await;
        Some(Scratch { d, records })
    }

    async fn create(
        &mut self,
        name: &str,
        range: Option<CapacityRange>,
    ) -> Result<Volume, tonic::Status> {
        let mut req = create_req(name, 0, &[("plugin", "tmpfs")]);
        req.capacity_range = range;
        let resp = self.d.client.controller.create_volume(req).await?;
        Ok(resp.into_inner().volume.expect("a volume"))
    }

    async fn stage(&mut self, vol: &Volume, staging: &Path) -> Result<(), tonic::Status> {
        let mut req = stage_req(&vol.volume_id, staging);
        req.volume_context = vol.volume_context.clone();
        self.d.client.node.node_stage_volume(req).await.map(drop)
    }

    async fn publish(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
    ) -> Result<(), tonic::Status> {
        let req = publish_req(id, staging, target, false);
        self.d.client.node.node_publish_volume(req).await.map(drop)
    }

    async fn node_expand(
        &mut self,
        id: &str,
        target: &Path,
        staging: &Path,
        bytes: u64,
    ) -> Result<u64, tonic::Status> {
        let req = NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
            capacity_range: range(bytes),
            volume_capability: Some(rw()),
            ..Default::default()
        };
        let resp = self.d.client.node.node_expand_volume(req).await?;
        Ok(resp.into_inner().capacity_bytes as u64)
    }
}

/// Size of the filesystem at `path` (statvfs), as the kernel enforces it.
fn size_of(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

/// The mount table's line for a mount point: (source, fs type).
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if left.split(' ').nth(4)? != path.to_str()? {
            return None;
        }
        let mut right = right.split(' ');
        let fs_type = right.next()?.to_string();
        Some((right.next()?.to_string(), fs_type))
    })
}

/// Writes files into `dir` until the kernel refuses; the bytes it took.
fn fill_until_refused(dir: &Path, name: &str, most: u64) -> u64 {
    let (written, err) = fill(dir, name, most + 8 * MIB);
    let err = err.unwrap_or_else(|| panic!("{most} bytes allowed, but {written} were written"));
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "the write stopped for another reason: {err}"
    );
    written
}

#[tokio::test]
async fn python_plugin_lifecycle_fill_expand_fill() {
    let Some(mut s) = Scratch::start().await else {
        return;
    };
    let logs = s.d.logs();
    assert!(
        logs.contains("reports=tmpfs-py"),
        "the Python plugin was loaded\n{logs}"
    );

    // Create: nothing made, the rounded size in the volume context.
    let vol = s
        .create("pvc-scratch", range(8 * MIB + 1))
        .await
        .expect("create");
    let id = vol.volume_id.clone();
    assert!(id.starts_with("tmpfs:tmp-"), "{id}");
    assert_eq!(vol.capacity_bytes as u64, 9 * MIB);
    assert_eq!(
        vol.volume_context.get("capacityBytes").map(String::as_str),
        Some("9437184")
    );
    let again = s
        .create("pvc-scratch", range(9 * MIB))
        .await
        .expect("retry");
    assert_eq!(again.volume_id, id, "the id comes from the name");
    assert_eq!(again.capacity_bytes as u64, 9 * MIB, "the recorded size");
    let record = s
        .records
        .path()
        .join(format!("{}.json", id.trim_start_matches("tmpfs:")));
    assert!(record.exists(), "no record at {}", record.display());
    // The same name asking more than it has: another volume, refused.
    let err = s
        .create("pvc-scratch", range(10 * MIB))
        .await
        .expect_err("a conflicting create");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Stage: a tmpfs of that size, named after the volume; twice is fine.
    let staging = s.d.staging("scratch");
    s.stage(&vol, &staging).await.expect("stage");
    s.stage(&vol, &staging).await.expect("stage again");
    let (source, fs_type) = mount_entry(&staging).expect("staged");
    assert_eq!(fs_type, "tmpfs");
    assert_eq!(source, format!("wasmcsi:{}", id));
    assert_eq!(size_of(&staging), 9 * MIB);

    // Publish: the pod sees the staged tmpfs.
    let target = s.d.target("scratch");
    s.publish(&id, &staging, &target).await.expect("publish");
    s.publish(&id, &staging, &target)
        .await
        .expect("publish again");
    std::fs::write(target.join("kept"), b"scratch").unwrap();
    assert_eq!(std::fs::read(staging.join("kept")).unwrap(), b"scratch");

    // Fill: the kernel refuses at the size.
    let first = fill_until_refused(&target, "fill-1", 9 * MIB);
    assert!(
        (8 * MIB..=9 * MIB).contains(&first),
        "{first} bytes in 9 MiB"
    );

    // Expand: the controller answers the size and asks for the node step;
    // the node step resizes the mounted tmpfs in place.
    let grown = s.d.expand(&id, 20 * MIB).await.expect("controller expand");
    assert_eq!(grown.capacity_bytes as u64, 20 * MIB);
    assert!(grown.node_expansion_required);
    let bytes = s
        .node_expand(&id, &target, &staging, 20 * MIB)
        .await
        .expect("node expand");
    assert_eq!(bytes, 20 * MIB);
    assert_eq!(size_of(&target), 20 * MIB);
    assert_eq!(size_of(&staging), 20 * MIB);
    let bytes = s
        .node_expand(&id, &target, &staging, 20 * MIB)
        .await
        .expect("node expand again");
    assert_eq!(bytes, 20 * MIB);
    let bytes = s
        .node_expand(&id, &target, &staging, 5 * MIB)
        .await
        .expect("below: a no-op");
    assert_eq!(bytes, 20 * MIB);
    assert_eq!(std::fs::read(target.join("kept")).unwrap(), b"scratch");

    // Fill again: more fits, and the kernel refuses at the new size.
    let second = fill_until_refused(&target, "fill-2", 11 * MIB);
    assert!(
        second >= 10 * MIB,
        "only {second} more bytes after growing to 20 MiB"
    );
    assert!(
        first + second <= 20 * MIB,
        "{first} + {second} bytes in 20 MiB"
    );

    // Stats: the tmpfs as the kernel counts it.
    let stats =
        s.d.client
            .node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .expect("stats")
            .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == 1)
        .expect("bytes usage");
    assert_eq!(bytes.total as u64, 20 * MIB);
    assert!(bytes.used as u64 >= first + second, "{bytes:?}");

    // Take it down, each step twice; the data went with the tmpfs.
    s.d.unpublish(&id, &target).await.expect("unpublish");
    s.d.unpublish(&id, &target).await.expect("unpublish again");
    assert!(!mounted(&target));
    s.d.unstage(&id, &staging).await.expect("unstage");
    s.d.unstage(&id, &staging).await.expect("unstage again");
    assert!(!mounted(&staging));

    // Staged again, it is empty: scratch; at the recorded (grown) size.
    s.stage(&vol, &staging).await.expect("stage a second time");
    assert!(
        !staging.join("kept").exists(),
        "scratch data outlived unstage"
    );
    assert_eq!(size_of(&staging), 20 * MIB);
    s.d.unstage(&id, &staging).await.expect("unstage");

    s.d.delete(&id).await.expect("delete");
    s.d.delete(&id).await.expect("delete again");
    assert!(!record.exists(), "the record outlived the delete");
    let err =
        s.d.expand(&id, 30 * MIB)
            .await
            .expect_err("expand a deleted volume");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A deleted volume is not staged again.
    assert_eq!(code(s.stage(&vol, &staging).await), Code::NotFound);
    assert!(!mounted(&staging));
}

#[tokio::test]
async fn python_plugin_answers_bad_input_with_the_right_code() {
    let Some(mut s) = Scratch::start().await else {
        return;
    };
    // No capacity range: the plugin's default size.
    let vol = s.create("pvc-default", None).await.expect("no range");
    assert_eq!(vol.capacity_bytes as u64, 64 * MIB);
    // A range no whole MiB fits in.
    let tiny = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: 512 << 10,
    });
    assert_eq!(code(s.create("pvc-tiny", tiny).await), Code::OutOfRange);
    // Access types it does not serve: block (the host, from the features)
    // and a filesystem other than tmpfs (the plugin).
    let mut req = create_req("pvc-block", MIB, &[("plugin", "tmpfs")]);
    req.volume_capabilities = vec![block_cap()];
    let r = s.d.client.controller.create_volume(req).await;
    assert_eq!(code(r), Code::InvalidArgument);
    let mut req = create_req("pvc-xfs", MIB, &[("plugin", "tmpfs")]);
    req.volume_capabilities[0].access_type = Some(AccessType::Mount(MountVolume {
        fs_type: "xfs".into(),
        ..Default::default()
    }));
    let r = s.d.client.controller.create_volume(req).await;
    let status = r.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("tmpfs"), "{status:?}");

    // StorageClass parameters: it takes none.
    let req = create_req(
        "pvc-params",
        MIB,
        &[("plugin", "tmpfs"), ("sizeLimit", "1")],
    );
    let r = s.d.client.controller.create_volume(req).await;
    let status = r.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("sizeLimit"), "{status:?}");

    let staging = s.d.staging("bad");
    // An id it never made.
    let mut fake = vol.clone();
    fake.volume_id = "tmpfs:not-mine".into();
    assert_eq!(code(s.stage(&fake, &staging).await), Code::NotFound);
    // Expanding on the node what is not staged.
    let target = s.d.target("bad");
    std::fs::create_dir_all(&target).unwrap();
    let r = s
        .node_expand(&vol.volume_id, &target, &staging, 128 * MIB)
        .await;
    assert_eq!(code(r), Code::NotFound);
    // A mount flag the host's tmpfs table does not allow.
    let mut req = stage_req(&vol.volume_id, &staging);
    req.volume_context = vol.volume_context.clone();
    req.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["exec".into()],
            ..Default::default()
        })),
        ..rw()
    });
    let r = s.d.client.node.node_stage_volume(req).await;
    assert_eq!(code(r), Code::PermissionDenied);
    assert!(!mounted(&staging));
}

/// Row 8: sizes come from the plugin's own records, never from the volume
/// context a CO passes back, and a node expand acts on its own volume only.
#[tokio::test]
async fn python_plugin_sizes_come_from_its_records() {
    let Some(mut s) = Scratch::start().await else {
        return;
    };
    let context = |bytes: u64| {
        std::collections::HashMap::from([("capacityBytes".to_string(), bytes.to_string())])
    };
    // A never-created id with a size in its context: no tmpfs at all.
    let staging = s.d.staging("never");
    let mut never = stage_req(&format!("tmpfs:tmp-{}", "0".repeat(32)), &staging);
    never.volume_context = context(3 << 30);
    let r = s.d.client.node.node_stage_volume(never).await;
    assert_eq!(code(r), Code::NotFound);
    assert!(!mounted(&staging));

    // A 50 MiB volume staged with a context that says 1 TiB: 50 MiB.
    let a = s.create("pvc-a", range(50 * MIB)).await.expect("create a");
    let sa = s.d.staging("a");
    let mut req = stage_req(&a.volume_id, &sa);
    req.volume_context = context(1 << 40);
    s.d.client
        .node
        .node_stage_volume(req)
        .await
        .expect("stage a");
    assert_eq!(size_of(&sa), 50 * MIB);
    // Staged without any context: the same.
    let b = s.create("pvc-b", range(20 * MIB)).await.expect("create b");
    let sb = s.d.staging("b");
    let req = stage_req(&b.volume_id, &sb);
    s.d.client
        .node
        .node_stage_volume(req)
        .await
        .expect("stage b");
    assert_eq!(size_of(&sb), 20 * MIB);

    // B's node expand on A's path: NOT_FOUND, A untouched.
    s.d.expand(&b.volume_id, 30 * MIB)
        .await
        .expect("controller expand b");
    let r = s.node_expand(&b.volume_id, &sa, &sa, 30 * MIB).await;
    assert_eq!(code(r), Code::NotFound);
    assert_eq!(size_of(&sa), 50 * MIB);
    // Past the recorded size: refused, B untouched.
    let r = s.node_expand(&b.volume_id, &sb, &sb, 40 * MIB).await;
    assert_eq!(code(r), Code::OutOfRange);
    assert_eq!(size_of(&sb), 20 * MIB);
    let bytes = s
        .node_expand(&b.volume_id, &sb, &sb, 30 * MIB)
        .await
        .expect("node expand b");
    assert_eq!(bytes, 30 * MIB);

    // In use: not deleted.
    assert_eq!(
        code(s.d.delete(&a.volume_id).await),
        Code::FailedPrecondition
    );
    s.d.unstage(&a.volume_id, &sa).await.expect("unstage a");
    s.d.unstage(&b.volume_id, &sb).await.expect("unstage b");
    s.d.delete(&a.volume_id).await.expect("delete a");
}
