//! The plugin template (`templates/plugin`, what docs/writing-a-plugin.md
//! walks through), built from source and loaded by the real host next to
//! local-dir, spoken to over the unix socket: create → publish → expand →
//! delete, with what it leaves under its root checked at each step, and
//! the capacity rules it takes from the SDK.

mod common;

use std::path::PathBuf;

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

struct Template {
    d: TestDriver,
    root: tempfile::TempDir,
}

impl Template {
    async fn start() -> Template {
        let root = tempfile::Builder::new()
            .prefix("wasmcsi-template-root")
            .tempdir()
            .unwrap();
        let extra = format!(
            r#"  - name: template
    path: {wasm}
    capabilities:
      fs: {{ root: "{root}" }}
      mount: {{ targetPrefixes: ["${{TEST_KUBELET}}"] }}
"#,
            wasm = build_plugin("plugin-template").display(),
            root = root.path().display(),
        );
        let d = TestDriver::start(Options {
            plugin_extra: extra,
            ..Default::default()
        })
        .await;
        Template { d, root }
    }

    fn volume_dir(&self, local_id: &str) -> PathBuf {
        self.root.path().join("volumes").join(local_id)
    }

    fn recorded(&self, local_id: &str) -> Option<u64> {
        let file = self.root.path().join("capacity").join(local_id);
        let text = std::fs::read_to_string(file).ok()?;
        Some(text.parse().expect("a recorded capacity is a number"))
    }

    async fn create(
        &mut self,
        name: &str,
        required: u64,
        limit: u64,
    ) -> Result<Volume, tonic::Status> {
        let mut req = create_req(name, required, &[("plugin", "template")]);
        req.capacity_range = Some(CapacityRange {
            required_bytes: required as i64,
            limit_bytes: limit as i64,
        });
        let resp = self.d.client.controller.create_volume(req).await?;
        Ok(resp.into_inner().volume.expect("a volume"))
    }
}

fn local(id: &str) -> &str {
    id.strip_prefix("template:")
        .unwrap_or_else(|| panic!("{id} is not the template's"))
}

#[tokio::test]
async fn template_lifecycle_create_publish_expand_delete() {
    let mut t = Template::start().await;

    // Create: rounded up to whole MiB, the directory made, the size recorded.
    let vol = t
        .create("pvc-template", 100 * MIB + 1, 0)
        .await
        .expect("create");
    let id = vol.volume_id.clone();
    assert_eq!(vol.capacity_bytes as u64, 101 * MIB);
    assert!(t.volume_dir(local(&id)).is_dir());
    assert_eq!(t.recorded(local(&id)), Some(101 * MIB));
    // A retry is the same volume; the same name asking for more is not.
    let again = t.create("pvc-template", 101 * MIB, 0).await.expect("retry");
    assert_eq!(again.volume_id, id);
    let err = t.create("pvc-template", 200 * MIB, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Publish: the pod's directory is the volume's, through a bind mount.
    let target = t.d.target("template");
    let publish = NodePublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(rw()),
        ..Default::default()
    };
    t.d.client
        .node
        .node_publish_volume(publish.clone())
        .await
        .expect("publish");
    t.d.client
        .node
        .node_publish_volume(publish)
        .await
        .expect("publish again");
    std::fs::write(target.join("data"), b"kept").unwrap();
    let data = t.volume_dir(local(&id)).join("data");
    assert_eq!(std::fs::read(&data).unwrap(), b"kept");
    t.d.unpublish(&id, &target).await.expect("unpublish");
    assert!(!mounted(&target), "{} still mounted", target.display());

    // Expand: the controller alone, the new size recorded; smaller is a no-op.
    let grown = t.d.expand(&id, 300 * MIB).await.expect("expand");
    assert_eq!(grown.capacity_bytes as u64, 300 * MIB);
    assert!(!grown.node_expansion_required);
    assert_eq!(t.recorded(local(&id)), Some(300 * MIB));
    let same = t.d.expand(&id, 10 * MIB).await.expect("expand below");
    assert_eq!(same.capacity_bytes as u64, 300 * MIB);
    assert_eq!(
        std::fs::read(&data).unwrap(),
        b"kept",
        "expansion keeps data"
    );

    // Delete: everything goes; deleting again succeeds.
    t.d.delete(&id).await.expect("delete");
    assert!(!t.volume_dir(local(&id)).exists());
    assert_eq!(t.recorded(local(&id)), None);
    t.d.delete(&id).await.expect("delete again");
    let err = t.d.expand(&id, 400 * MIB).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn template_refuses_what_it_cannot_fit_before_making_anything() {
    let mut t = Template::start().await;
    // At most 512 KiB, but a directory volume is at least 1 MiB.
    let err = t.create("pvc-tiny", 0, 512 << 10).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(!t.root.path().join("volumes").exists());
    let err = t.create("pvc-tiny", 0, 512 << 10).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "a retry: {err:?}");
    assert!(!t.root.path().join("capacity").exists());
}
