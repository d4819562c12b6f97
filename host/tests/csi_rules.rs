//! The CSI spec's rules, checked against the real driver: error codes per
//! RPC, idempotency, concurrency on one name, restarts.

mod common;

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

#[tokio::test]
async fn identity_and_capabilities() {
    let mut d = TestDriver::start(Options::default()).await;
    let info = d
        .client
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "local.wasmcsi.io");
    assert!(!info.vendor_version.is_empty());

    let caps = d
        .client
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use plugin_capability::service::Type as S;
    let services: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert!(
        services.contains(&(S::ControllerService as i32)),
        "{services:?}"
    );
    assert!(
        services.contains(&(S::VolumeAccessibilityConstraints as i32)),
        "{services:?}"
    );
    let online = plugin_capability::volume_expansion::Type::Online as i32;
    assert!(
        caps.capabilities.iter().any(|c| matches!(&c.r#type,
            Some(plugin_capability::Type::VolumeExpansion(v)) if v.r#type == online)),
        "online expansion not offered"
    );

    let ctl = d
        .client
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let rpcs: Vec<i32> = ctl
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use controller_service_capability::rpc::Type as C;
    for want in [
        C::CreateDeleteVolume,
        C::ExpandVolume,
        C::ListVolumes,
        C::GetCapacity,
        C::CloneVolume,
        C::CreateDeleteSnapshot,
        C::ListSnapshots,
    ] {
        assert!(
            rpcs.contains(&(want as i32)),
            "{want:?} missing from {rpcs:?}"
        );
    }

    let node = d
        .client
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, "test-node");
    assert_eq!(
        node.accessible_topology
            .unwrap()
            .segments
            .get("topology.wasmcsi.io/node")
            .map(String::as_str),
        Some("test-node")
    );
    let ncaps = d
        .client
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let nrpcs: Vec<i32> = ncaps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use node_service_capability::rpc::Type as N;
    for want in [N::StageUnstageVolume, N::ExpandVolume, N::GetVolumeStats] {
        assert!(
            nrpcs.contains(&(want as i32)),
            "{want:?} missing from {nrpcs:?}"
        );
    }
    let probe = d
        .client
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn controller_error_codes() {
    let d = TestDriver::start(Options::default()).await;
    let c = &mut d.client.controller.clone();

    let mut no_name = create_req("x", GIB, &[]);
    no_name.name.clear();
    assert_eq!(code(c.create_volume(no_name).await), Code::InvalidArgument);
    let mut no_caps = create_req("x", GIB, &[]);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument);
    let mut no_mode = create_req("x", GIB, &[]);
    no_mode.volume_capabilities[0].access_mode = None;
    assert_eq!(code(c.create_volume(no_mode).await), Code::InvalidArgument);
    let mut multi = create_req("x", GIB, &[]);
    multi.volume_capabilities = vec![mount_cap(
        volume_capability::access_mode::Mode::MultiNodeMultiWriter,
    )];
    assert_eq!(code(c.create_volume(multi).await), Code::InvalidArgument);
    let mut inverted = create_req("x", GIB, &[]);
    inverted.capacity_range = Some(CapacityRange {
        required_bytes: 2 * GIB as i64,
        limit_bytes: GIB as i64,
    });
    assert_eq!(code(c.create_volume(inverted).await), Code::OutOfRange);
    let mut negative = create_req("x", GIB, &[]);
    negative.capacity_range = Some(CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    assert_eq!(code(c.create_volume(negative).await), Code::InvalidArgument);
    // Rounded up to the XFS minimum, a tiny limit cannot be met.
    let mut tiny = create_req("x", MIB, &[]);
    tiny.capacity_range = Some(CapacityRange {
        required_bytes: MIB as i64,
        limit_bytes: 2 * MIB as i64,
    });
    assert_eq!(code(c.create_volume(tiny).await), Code::OutOfRange);
    assert_eq!(
        code(
            c.create_volume(create_req("x", GIB, &[("mode", "nonsense")]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.create_volume(create_req("x", GIB, &[("plugin", "other")]))
                .await
        ),
        Code::InvalidArgument
    );
    let mut elsewhere = create_req("x", GIB, &[]);
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: [(
                "topology.wasmcsi.io/node".to_string(),
                "other-node".to_string(),
            )]
            .into(),
        }],
        preferred: vec![],
    });
    assert_eq!(
        code(c.create_volume(elsewhere).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        d.volumes_on_disk(),
        Vec::<String>::new(),
        "failed creates left storage"
    );

    // Delete: missing id is invalid; unknown ids are already deleted, but
    // not those of a plugin that is not loaded (volumes_of_an_unloaded_plugin).
    assert_eq!(
        code(c.delete_volume(DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_volume(DeleteVolumeRequest {
                volume_id: "no-such-plugin:x".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    for id in ["local-dir:never-made", "garbage"] {
        c.delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }

    // Expand.
    assert_eq!(
        code(
            c.controller_expand_volume(ControllerExpandVolumeRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "local-dir:x".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "nobody:x".into(),
                capacity_range: range(GIB),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Validate.
    assert_eq!(
        code(
            c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "local-dir:missing".into(),
                volume_capabilities: vec![rw()],
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "local-dir:missing".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );

    // List: a bad token is ABORTED, a negative size invalid.
    assert_eq!(
        code(
            c.list_volumes(ListVolumesRequest {
                starting_token: "bogus".into(),
                max_entries: 0
            })
            .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(
            c.list_volumes(ListVolumesRequest {
                starting_token: String::new(),
                max_entries: -1
            })
            .await
        ),
        Code::InvalidArgument
    );
    // A snapshot of a volume that does not exist.
    assert_eq!(
        code(
            c.create_snapshot(CreateSnapshotRequest {
                source_volume_id: "local-dir:x".into(),
                name: "s".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn node_error_codes() {
    let d = TestDriver::start(Options::default()).await;
    let staging = d.staging("e");
    let target = d.target("e");
    let n = &mut d.client.node.clone();

    let mut no_id = stage_req("local-dir:v", &staging);
    no_id.volume_id.clear();
    assert_eq!(
        code(n.node_stage_volume(no_id).await),
        Code::InvalidArgument
    );
    let mut no_path = stage_req("local-dir:v", &staging);
    no_path.staging_target_path.clear();
    assert_eq!(
        code(n.node_stage_volume(no_path).await),
        Code::InvalidArgument
    );
    let mut no_cap = stage_req("local-dir:v", &staging);
    no_cap.volume_capability = None;
    assert_eq!(
        code(n.node_stage_volume(no_cap).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            n.node_stage_volume(stage_req("local-dir:missing", &staging))
                .await
        ),
        Code::NotFound
    );

    let mut no_target = publish_req("local-dir:v", &staging, &target, false);
    no_target.target_path.clear();
    assert_eq!(
        code(n.node_publish_volume(no_target).await),
        Code::InvalidArgument
    );
    let mut no_staging = publish_req("local-dir:v", &staging, &target, false);
    no_staging.staging_target_path.clear();
    assert_eq!(
        code(n.node_publish_volume(no_staging).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            n.node_publish_volume(publish_req("local-dir:missing", &staging, &target, false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: "local-dir:v".into(),
                target_path: String::new()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "local-dir:missing".into(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "local-dir:v".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            n.node_expand_volume(NodeExpandVolumeRequest {
                volume_id: "local-dir:missing".into(),
                volume_path: target.display().to_string(),
                capacity_range: range(GIB),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_are_refused() {
    let d = TestDriver::start(Options::default()).await;
    let c = &mut d.client.controller.clone();
    let first = c
        .create_volume(create_req("pvc-same", 512 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let again = c
        .create_volume(create_req("pvc-same", 512 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(first.volume_id, again.volume_id);
    assert_eq!(first.capacity_bytes, again.capacity_bytes);
    assert_eq!(
        code(c.create_volume(create_req("pvc-same", 2 * GIB, &[])).await),
        Code::AlreadyExists
    );
    assert_eq!(d.volumes_on_disk().len(), 1);

    // Many creates of one name at once: one volume, the same answer for all.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = d.client.controller.clone();
        tasks.push(tokio::spawn(async move {
            client
                .create_volume(create_req("pvc-race", 400 * MIB, &[]))
                .await
                .map(|r| r.into_inner().volume.unwrap().volume_id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("concurrent create"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(d.volumes_on_disk().len(), 2);

    // ListVolumes pages through both.
    let c = &mut d.client.controller.clone();
    let page1 = c
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.entries.len(), 1);
    assert!(!page1.next_token.is_empty());
    let page2 = c
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: page1.next_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.entries.len(), 1);
    assert_ne!(
        page1.entries[0].volume.as_ref().unwrap().volume_id,
        page2.entries[0].volume.as_ref().unwrap().volume_id
    );

    // Delete twice: both succeed, nothing remains.
    for id in [first.volume_id.clone(), first.volume_id, ids[0].clone()] {
        c.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());

    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
}

#[tokio::test]
async fn node_calls_are_idempotent_and_survive_restarts_and_reboots() {
    let mut d = TestDriver::start(Options::default()).await;
    let id = d
        .client
        .controller
        .create_volume(create_req("pvc-restart", 512 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let (staging, target) = (d.staging("r"), d.target("r"));
    std::fs::create_dir_all(&staging).unwrap();
    for _ in 0..2 {
        d.client
            .node
            .node_stage_volume(stage_req(&id, &staging))
            .await
            .expect("stage (again)");
        d.client
            .node
            .node_publish_volume(publish_req(&id, &staging, &target, false))
            .await
            .expect("publish (again)");
    }
    std::fs::write(target.join("hello"), b"kept").unwrap();
    // Publishing the same target read-only is incompatible with what is there.
    assert_eq!(
        code(
            d.client
                .node
                .node_publish_volume(publish_req(&id, &staging, &target, true))
                .await
        ),
        Code::AlreadyExists
    );
    let ro_target = d.target("r-ro");
    d.client
        .node
        .node_publish_volume(publish_req(&id, &staging, &ro_target, true))
        .await
        .expect("read-only publish");
    assert!(
        std::fs::write(ro_target.join("nope"), b"x").is_err(),
        "read-only publish is writable"
    );

    // A crash of the driver loses nothing.
    d.crash_and_restart().await;
    let stats = d
        .client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats after restart")
        .into_inner();
    // A path where the volume is not (csi-sanity's "some/path") is NOT_FOUND.
    for path in [
        "some/path".to_string(),
        d.kubelet.join("nowhere").display().to_string(),
    ] {
        let req = NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: path,
            ..Default::default()
        };
        assert_eq!(
            code(d.client.node.node_get_volume_stats(req).await),
            Code::NotFound
        );
    }
    assert!(stats.usage[0].total > 0);
    for t in [&target, &ro_target] {
        d.unpublish(&id, t).await.expect("unpublish");
    }
    d.unstage(&id, &staging).await.expect("unstage");
    assert!(d.loop_devices().is_empty(), "unstage leaves no loop device");

    // A node reboot: loop devices are gone; staging re-attaches the image
    // and the data is still there. Expansion while unstaged (offline) works too.
    d.crash_and_restart().await;
    let grown = d
        .client
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: range(GIB),
            ..Default::default()
        })
        .await;
    // Offline growth is allowed to be deferred to the next stage.
    if let Err(s) = &grown {
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    }
    d.client
        .node
        .node_stage_volume(stage_req(&id, &staging))
        .await
        .expect("stage after reboot");
    d.client
        .node
        .node_publish_volume(publish_req(&id, &staging, &target, false))
        .await
        .expect("publish after reboot");
    assert_eq!(std::fs::read(target.join("hello")).unwrap(), b"kept");
    if grown.is_ok() {
        // The offline expansion finished when the volume was staged again.
        let total = nix::sys::statvfs::statvfs(&target).unwrap();
        let bytes = total.blocks() * total.fragment_size();
        assert!(bytes > 900 * MIB, "filesystem not grown at stage: {bytes}");
    }

    // Unpublish/unstage twice are fine.
    for _ in 0..2 {
        d.unpublish(&id, &target).await.expect("unpublish twice");
        d.unstage(&id, &staging).await.expect("unstage twice");
    }
    d.delete(&id).await.expect("delete");
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
    // SIGTERM ends the driver cleanly and removes its socket.
    let status = d.terminate().expect("driver was running");
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(d.endpoint.trim_start_matches("unix://")).exists());
}

#[tokio::test]
async fn bad_config_fails_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        "driver:\n  name: local.wasmcsi.io\n  nodeId: n\n  endpoint: unix:///tmp/x.sock\nplugins:\n  - name: BAD\n    path: /x.wasm\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugins[0]") && err.contains("name"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("NODE_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let mut d = TestDriver::start(Options::default()).await;
    let mut req = create_req("pvc-secret", 400 * MIB, &[]);
    req.secrets = [("password".to_string(), "S3cr3t-in-secrets".to_string())].into();
    let id = d
        .client
        .controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    // A refused request with a secret-looking parameter: the error is
    // logged, the value must not be.
    let refused = create_req(
        "pvc-secret-2",
        400 * MIB,
        &[("password", "S3cr3t-in-params")],
    );
    assert_eq!(
        code(d.client.controller.create_volume(refused).await),
        Code::InvalidArgument
    );
    d.client
        .controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id,
            secrets: [("password".to_string(), "S3cr3t-on-delete".to_string())].into(),
        })
        .await
        .unwrap();
    d.terminate();
    let log = d.logs();
    assert!(log.contains("CreateVolume"), "the log has the calls: {log}");
    assert!(!log.contains("S3cr3t"), "a secret reached the log:\n{log}");
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut d = TestDriver::start(Options {
        args: vec!["--metrics-address".into(), address.clone()],
        ..Default::default()
    })
    .await;
    let id = d
        .client
        .controller
        .create_volume(create_req("pvc-metrics", 400 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    assert_eq!(
        code(
            d.client
                .controller
                .create_volume(create_req("", GIB, &[]))
                .await
        ),
        Code::InvalidArgument
    );
    d.delete(&id).await.unwrap();
    let ask_with = |method: &str, path: &str, headers: &str| {
        let mut s = std::net::TcpStream::connect(&address).unwrap();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let ask = |method: &str, path: &str| ask_with(method, path, "");
    let get = |path: &str| ask("GET", path);
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(ask("POST", "/metrics").starts_with("HTTP/1.1 405"));
    let m = get("/metrics");
    assert!(
        m.contains(r#"wasmcsi_csi_requests_total{method="CreateVolume",code="OK"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"wasmcsi_csi_requests_total{method="CreateVolume",code="InvalidArgument"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"wasmcsi_csi_request_duration_seconds_count{method="DeleteVolume"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"wasmcsi_plugin_calls_total{plugin="local-dir",op="create-volume",outcome="ok"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"wasmcsi_plugin_load_seconds{plugin="local-dir",source="#),
        "{m}"
    );
    let high_water = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"wasmcsi_plugin_memory_high_water_bytes{plugin="local-dir"} "#)
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("memory high-water mark");
    assert!(
        high_water > 0.0 && high_water <= 64.0 * 1024.0 * 1024.0,
        "{high_water}"
    );
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    // The whole exposition, through Prometheus' own parser and the naming rules.
    let body = m.split_once("\r\n\r\n").expect("an HTTP response").1;
    let checked = check_metrics(body, false);
    assert!(checked.is_empty(), "{checked}\n{body}");
    // The checker itself must be able to fail.
    let broken = body.replace("wasmcsi_csi_requests_total", "wasmcsi_csi_requests");
    assert!(
        !check_metrics(&broken, false).is_empty(),
        "a counter without _total passed"
    );
    // OpenMetrics, as Prometheus asks for it, through its parser too.
    let om = ask_with(
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2\r\n",
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    let body = om.split_once("\r\n\r\n").expect("an HTTP response").1;
    let checked = check_metrics(body, true);
    assert!(checked.is_empty(), "{checked}\n{body}");
    let broken = body.replace("wasmcsi_csi_requests_total", "wasmcsi_csi_requests");
    assert!(
        !check_metrics(&broken, true).is_empty(),
        "an OpenMetrics counter sample without _total passed"
    );
}

/// What `scripts/check-metrics.py` finds wrong in `exposition` (empty:
/// none), read as OpenMetrics or as the Prometheus text format.
fn check_metrics(exposition: &str, openmetrics: bool) -> String {
    use std::io::Write;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-metrics.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args(openmetrics.then_some("--openmetrics"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup.sh installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let found =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => String::new(),
        false if found.trim().is_empty() => format!("check-metrics failed: {}", out.status),
        false => found,
    }
}

/// Volumes of a plugin that is no longer loaded (renamed or removed from the
/// config): deletes must not report a leak as done, and the node must still
/// let pods go.
#[tokio::test]
async fn volumes_of_an_unloaded_plugin() {
    let mut d = TestDriver::start(Options::default()).await;
    for result in [
        d.delete("renamed:v1").await,
        d.client
            .controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: "renamed:s1".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    ] {
        let status = result.expect_err("a delete nothing can carry out");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("renamed"), "{status:?}");
    }
    // Ids not in our form name nothing of ours: already gone.
    for id in ["reallyfakevolumeid", "Not A Plugin:x", "renamed:"] {
        d.delete(id).await.unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }

    // Unpublish/unstage unmount what is there (under the granted prefix)
    // and succeed, so the pod can terminate.
    let (target, staging) = (d.target("orphan"), d.staging("orphan"));
    for dir in [&target, &staging] {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "orphan", &dir.display().to_string()],
        );
    }
    d.unpublish("renamed:v1", &target).await.expect("unpublish");
    assert!(!mounted(&target), "the target is still mounted");
    assert!(!target.exists(), "the target is left behind");
    d.unstage("renamed:v1", &staging).await.expect("unstage");
    assert!(!mounted(&staging), "the staging path is still mounted");
    // Again, and for paths never mounted: nothing to do.
    d.unpublish("renamed:v1", &target)
        .await
        .expect("unpublish again");
    d.unstage("renamed:v1", &staging)
        .await
        .expect("unstage again");
    // Outside the granted prefix nothing is touched.
    let outside = d.base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    run(
        "mount",
        &["-t", "tmpfs", "outside", &outside.display().to_string()],
    );
    d.unpublish("renamed:v1", &outside)
        .await
        .expect("unpublish outside");
    assert!(
        mounted(&outside),
        "a mount outside the prefix was taken down"
    );
    run("umount", &[&outside.display().to_string()]);
    // An id not in our form is still NOT_FOUND on the node.
    assert_eq!(
        code(d.unpublish("reallyfake", &target).await),
        Code::NotFound
    );
}

/// SINGLE_NODE_SINGLE_WRITER: one publication on the node; a second target
/// is FAILED_PRECONDITION, also after a driver restart (the mount table,
/// not memory, tells).
#[tokio::test]
async fn single_node_single_writer_is_published_once() {
    use volume_capability::access_mode::Mode;
    let mut d = TestDriver::start(Options::default()).await;
    let id = d
        .client
        .controller
        .create_volume(create_req("pvc-rwop", 512 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = d.staging("rwop");
    std::fs::create_dir_all(&staging).unwrap();
    let mut stage = stage_req(&id, &staging);
    stage.volume_capability = Some(mount_cap(Mode::SingleNodeSingleWriter));
    d.client.node.node_stage_volume(stage).await.expect("stage");
    let publish = |target: &std::path::Path| {
        let mut r = publish_req(&id, &staging, target, false);
        r.volume_capability = Some(mount_cap(Mode::SingleNodeSingleWriter));
        r
    };
    let (first, second) = (d.target("rwop-1"), d.target("rwop-2"));
    d.client
        .node
        .node_publish_volume(publish(&first))
        .await
        .expect("publish");
    // The same target again is idempotent.
    d.client
        .node
        .node_publish_volume(publish(&first))
        .await
        .expect("publish again");
    for restart in [false, true] {
        if restart {
            d.crash_and_restart().await;
        }
        let status = d
            .client
            .node
            .node_publish_volume(publish(&second))
            .await
            .expect_err("a second single-writer publication");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("rwop-1"), "{status:?}");
        assert!(!mounted(&second), "the refused target is mounted");
    }
    // Once the first is gone, the second may go ahead.
    d.unpublish(&id, &first).await.expect("unpublish");
    d.client
        .node
        .node_publish_volume(publish(&second))
        .await
        .expect("publish elsewhere");
    d.unpublish(&id, &second).await.expect("unpublish");
    d.unstage(&id, &staging).await.expect("unstage");
    d.delete(&id).await.expect("delete");
}

/// gRPC clients that name the socket path as `:authority` (Python's grpcio
/// over `unix://` does) are served like any other: raw HTTP/2 on the real
/// socket, three calls on one connection, the later ones pointing into the
/// HPACK table the first filled.
#[tokio::test]
async fn any_authority_is_served_on_the_unix_socket() {
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, stream]);
        f.extend_from_slice(payload);
        f
    }
    let d = TestDriver::start(Options::default()).await;
    let socket = d.endpoint.trim_start_matches("unix://").to_string();
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let streams = [
        (1u8, socket.as_str()),
        (3, "localhost:0"),
        (5, socket.as_str()),
    ];
    for (stream, authority) in streams {
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/csi.v1.Identity/GetPluginInfo"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]);
        out.extend(frame(0x1, 0x4, stream, &block));
        out.extend(frame(0x0, 0x1, stream, &[0, 0, 0, 0, 0]));
    }
    conn.write_all(&out).await.unwrap();

    // Read until every stream ended (or was reset).
    let mut decoder = loona_hpack::Decoder::new();
    let mut data: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut headers: HashMap<u8, Vec<(String, String)>> = HashMap::new();
    let mut ended = Vec::new();
    let mut input = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while ended.len() < streams.len() {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "the driver hung up; ended: {ended:?}");
        input.extend_from_slice(&chunk[..n]);
        while input.len() >= 9 {
            let len = (input[0] as usize) << 16 | (input[1] as usize) << 8 | input[2] as usize;
            if input.len() < 9 + len {
                break;
            }
            let frame_bytes: Vec<u8> = input.drain(..9 + len).collect();
            let (kind, flags, stream) = (frame_bytes[3], frame_bytes[4], frame_bytes[8]);
            let payload = &frame_bytes[9..];
            match kind {
                0x0 => data.entry(stream).or_default().extend_from_slice(payload),
                0x1 => {
                    let fields = decoder.decode(payload).expect("server headers decode");
                    headers
                        .entry(stream)
                        .or_default()
                        .extend(fields.into_iter().map(|(n, v)| {
                            (
                                String::from_utf8_lossy(&n).into(),
                                String::from_utf8_lossy(&v).into(),
                            )
                        }));
                }
                0x3 => panic!("stream {stream} reset: {payload:?}\n{}", d.logs()),
                0x4 if flags & 1 == 0 => conn.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                0x7 => panic!("GOAWAY: {payload:?}"),
                _ => {}
            }
            if stream != 0 && flags & 0x1 != 0 && (kind == 0x0 || kind == 0x1) {
                ended.push(stream);
            }
        }
    }
    for (stream, authority) in streams {
        let fields = &headers[&stream];
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(":status"), Some("200"), "{authority}: {fields:?}");
        assert_eq!(get("grpc-status"), Some("0"), "{authority}: {fields:?}");
        let body = &data[&stream];
        let info = <GetPluginInfoResponse as prost::Message>::decode(&body[5..]).unwrap();
        assert_eq!(info.name, "local.wasmcsi.io", "{authority}");
    }
}
