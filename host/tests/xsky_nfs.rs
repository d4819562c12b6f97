//! xsky-nfs end to end: the real host and the real plugin against the XMS
//! emulator over 127.0.0.1. Every scenario ends with `finish`: no stray
//! quota tree or share on the array, no credential in the driver log, and
//! every exchange valid against shared/xms/swagger.yaml.

mod xsky;

use std::time::Duration;

use tonic::Code;
use wasmcsi::proto::*;
use xms_emulator::Faults;
use xsky::*;

fn tree_size(emu: &xms_emulator::Emulator, name: &str) -> Option<u64> {
    tree_of(emu, name).map(|t| t.size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_expand_publish_delete() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;

    let vol = d
        .create("pvc-life", 5 * GIB, &[("mountOptions", "hard,timeo=600")])
        .await
        .expect("create");
    assert_eq!(vol.capacity_bytes as u64, 5 * GIB);
    assert!(
        vol.volume_id.starts_with("xsky-nfs:qt-"),
        "{}",
        vol.volume_id
    );
    let ctx = &vol.volume_context;
    assert_eq!(ctx["server"], "127.0.0.1");
    let tree = tree_of(&emu, "pvc-life").expect("a marked quota tree");
    assert_eq!(ctx["share"], format!("/sdsfs/csi-fs/{}", tree.name));
    assert_eq!(tree.size, 5 * GIB);

    // Idempotent: the same request is the same volume; another size is not.
    let again = d
        .create("pvc-life", 5 * GIB, &[("mountOptions", "hard,timeo=600")])
        .await
        .expect("create again");
    assert_eq!(again.volume_id, vol.volume_id);
    let err = d.create("pvc-life", 10 * GIB, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(emu.quota_trees().len(), 1);

    // Expand on the array: 5Gi -> 10Gi, no node step.
    let grown = d.expand(&vol.volume_id, 10 * GIB).await.expect("expand");
    assert_eq!(grown.capacity_bytes as u64, 10 * GIB);
    assert!(!grown.node_expansion_required);
    assert_eq!(tree_size(&emu, "pvc-life"), Some(10 * GIB));
    // Smaller or equal targets answer the current size.
    let same = d
        .expand(&vol.volume_id, 8 * GIB)
        .await
        .expect("expand smaller");
    assert_eq!(same.capacity_bytes as u64, 10 * GIB);
    assert_eq!(tree_size(&emu, "pvc-life"), Some(10 * GIB));
    // Beyond the folder (100 GiB): refused, nothing changed.
    let err = d.expand(&vol.volume_id, 200 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(tree_size(&emu, "pvc-life"), Some(10 * GIB));

    // Node: the exact NFS mount, read-only when asked.
    let target = d.target("life");
    d.client
        .node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.display().to_string(),
            volume_capability: Some(rw()),
            readonly: true,
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("publish");
    let mounts = d.recorded_mounts();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let source = format!("127.0.0.1:/sdsfs/csi-fs/{}", tree.name);
    assert_eq!(mounts[0]["source"], source.as_str());
    assert_eq!(mounts[0]["fsType"], "nfs");
    assert_eq!(mounts[0]["target"], target.display().to_string());
    assert_eq!(
        mounts[0]["options"],
        serde_json::json!(["vers=4", "hard", "timeo=600", "ro"])
    );
    // Stats only of the volume's mount: the export (recorded; a tmpfs
    // named like it stands in for NFS) answers, with a condition that was
    // checked; another mount elsewhere is not the volume.
    let other = d.target("other");
    stand_in_mount(&source, &other);
    let err = stats(&mut d, &vol.volume_id, &other).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let out = std::process::Command::new("umount")
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = stats(&mut d, &vol.volume_id, &target).await.expect("stats");
    assert!(st.usage[0].total > 0, "{st:?}");
    let condition = st.volume_condition.expect("a volume condition");
    assert!(!condition.abnormal, "{condition:?}");
    assert!(condition.message.contains(&source), "{condition:?}");
    for _ in 0..2 {
        d.client
            .node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .expect("unpublish (twice)");
    }
    assert!(!target.exists());

    // Delete; gone already is success.
    d.delete(&vol.volume_id).await.expect("delete");
    assert_eq!(tree_size(&emu, "pvc-life"), None);
    d.delete(&vol.volume_id).await.expect("delete again");
    let err = d.expand(&vol.volume_id, 20 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    finish(&emu, &d);
}

/// An array serving HTTPS with a private CA: trusted through the http
/// grant's caFile; refused with the public roots only, saying why; taken
/// unverified only when insecureSkipTlsVerify says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_arrays_private_ca() {
    let emu = tls_emulator().await;
    let server = emu.url();
    assert!(server.starts_with("https://"), "{server}");
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), emu.ca_pem().unwrap()).unwrap();

    let trusted = format!(", caFile: \"{}\"", ca.path().display());
    let mut d = XskyDriver::start_with(std::slice::from_ref(&server), "", &trusted).await;
    let vol = d
        .create("pvc-tls", 5 * GIB, &[])
        .await
        .expect("create over https");
    d.expand(&vol.volume_id, 10 * GIB)
        .await
        .expect("expand over https");
    assert_eq!(tree_size(&emu, "pvc-tls"), Some(10 * GIB));
    d.delete(&vol.volume_id).await.expect("delete over https");
    finish(&emu, &d);
    drop(d);

    let mut d = XskyDriver::start(std::slice::from_ref(&server), "").await;
    refused(&mut d, "pvc-untrusted", "UnknownIssuer").await;
    assert!(emu.quota_trees().is_empty());
    drop(d);

    let mut d = XskyDriver::start_with(&[server], "", ", insecureSkipTlsVerify: true").await;
    let vol = d
        .create("pvc-unverified", 5 * GIB, &[])
        .await
        .expect("create, certificate unchecked");
    d.delete(&vol.volume_id).await.expect("delete");
    finish(&emu, &d);
    drop(d);

    // A trusted CA, but a certificate for other names (127.0.0.1 and
    // localhost, while this array answers on 127.0.0.2).
    let elsewhere = prepared(
        xms_emulator::Emulator::start_tls("127.0.0.2:0", xms_emulator::State::default()).await,
    );
    std::fs::write(ca.path(), elsewhere.ca_pem().unwrap()).unwrap();
    let mut d = XskyDriver::start_with(&[elsewhere.url()], "", &trusted).await;
    refused(&mut d, "pvc-misnamed", "not valid for name").await;
}

/// A create the array's TLS refuses: UNAVAILABLE, saying it was the
/// certificate; the driver's log says why (wasi:http's error codes carry
/// no text, so the host keeps the reason).
async fn refused(d: &mut XskyDriver, name: &str, why: &str) {
    let err = d.create(name, 5 * GIB, &[]).await.unwrap_err();
    eprintln!("{name}: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("TLS certificate"),
        "{name}: the error does not say it was the certificate: {}",
        err.message()
    );
    let logs = d.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request failed") && l.contains(why)),
        "{name}: the driver's log does not say {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_second_server() {
    let emu = emulator().await;
    let (_, second) = emu.add_listener("127.0.0.1:0").await.unwrap();
    let first = emu.addr();
    emu.stop_listener(0); // the first XMS node is dead: connection refused
    let mut d = XskyDriver::start(&[first.to_string(), second.to_string()], "").await;
    let vol = d
        .create("pvc-failover", 5 * GIB, &[])
        .await
        .expect("create via the second server");
    assert_eq!(tree_size(&emu, "pvc-failover"), Some(5 * GIB));
    let grown = d.expand(&vol.volume_id, 10 * GIB).await.expect("expand");
    assert_eq!(grown.capacity_bytes as u64, 10 * GIB);
    d.delete(&vol.volume_id).await.expect("delete");
    assert!(d.logs().contains("trying the next"), "no failover logged");
    // Both dead: UNAVAILABLE, nothing made.
    emu.stop_listener(1);
    let err = d.create("pvc-nowhere", GIB, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    finish(&emu, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_again_when_the_token_expires() {
    let emu = emulator().await;
    // Tokens live 1 s, the array takes 2.5 s: the token expires mid-wait.
    emu.with_state(|s| {
        s.token_ttl = Duration::from_secs(1);
        s.settle_after = Duration::from_millis(2500);
    });
    let mut d = XskyDriver::start(&[emu.addr().to_string()], ", pollIntervalMs: 300").await;
    let vol = d
        .create("pvc-token", 5 * GIB, &[])
        .await
        .expect("create across an expiry");
    let ex = emu.exchanges();
    let first_401 = ex
        .iter()
        .position(|e| e.status == 401)
        .expect("the token expired during the call");
    assert!(
        ex[first_401 + 1..]
            .iter()
            .any(|e| e.path == "/v1/auth/tokens" && e.status == 201),
        "no new login after the 401"
    );
    // A 401 out of the blue (a revoked token) is survived too.
    emu.with_state(|s| s.settle_after = Duration::from_millis(100));
    emu.set_faults(Faults {
        unauthorized_next: 1,
        ..Faults::default()
    });
    let logins = |emu: &xms_emulator::Emulator| {
        emu.exchanges()
            .iter()
            .filter(|e| e.path == "/v1/auth/tokens")
            .count()
    };
    let before = logins(&emu);
    d.delete(&vol.volume_id).await.expect("delete");
    assert_eq!(emu.faults().unauthorized_next, 0, "the fault was not used");
    assert_eq!(
        logins(&emu),
        before + 2,
        "expected a login and one re-login"
    );
    finish(&emu, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_within_bounds() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], ", requestTimeoutMs: 700").await;
    emu.set_faults(Faults {
        fail_next: 2,
        fail_status: 503,
        ..Faults::default()
    });
    let vol = d
        .create("pvc-5xx", 5 * GIB, &[])
        .await
        .expect("create despite two 503s");
    let injected = emu
        .exchanges()
        .iter()
        .filter(|e| e.injected && e.status == 503)
        .count();
    assert_eq!(injected, 2);
    // A server that keeps failing: UNAVAILABLE after the bounded attempts.
    emu.set_faults(Faults {
        fail_next: 1000,
        fail_status: 500,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let err = d.expand(&vol.volume_id, 10 * GIB).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let attempts = 1000 - emu.faults().fail_next;
    assert!((2..=8).contains(&attempts), "{attempts} attempts");
    // A server that hangs up, or answers too slowly: UNAVAILABLE, quickly.
    for fault in [
        Faults {
            down: true,
            ..Faults::default()
        },
        Faults {
            delay_ms: 1500,
            ..Faults::default()
        },
    ] {
        emu.set_faults(fault.clone());
        let started = std::time::Instant::now();
        let err = d.create("pvc-sick", GIB, &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{fault:?}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{fault:?}");
    }
    emu.set_faults(Faults::default());
    assert_eq!(tree_size(&emu, "pvc-5xx"), Some(5 * GIB));
    d.delete(&vol.volume_id).await.expect("delete");
    finish(&emu, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_never_settles_ends_in_deadline_exceeded() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], ", callBudgetSeconds: 3").await;
    emu.set_faults(Faults {
        never_settle: true,
        ..Faults::default()
    });

    // The CO's deadline (2 s) is shorter than the plugin's budget (3 s):
    // the plugin sees the time the host leaves it, stops its XMS work in
    // time to undo it, and answers DEADLINE_EXCEEDED itself, before the
    // host would end the call.
    let started = std::time::Instant::now();
    let err = d
        .client
        .controller
        .create_volume(with_timeout(
            create_req("pvc-stuck", 5 * GIB, &[]),
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("call budget"),
        "answered by the host, not the plugin: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let stuck_tree = emu
        .quota_trees()
        .into_iter()
        .find(|t| t.name.starts_with("pvc-stuck_w"));
    assert_eq!(
        stuck_tree.map(|t| t.status()),
        Some("deleting"),
        "the create cut short by the CO's deadline was not undone"
    );

    // The plugin's budget (3 s) is shorter than the CO's deadline (10 s):
    // the plugin answers DEADLINE_EXCEEDED itself, in time, and removes
    // the quota tree it made.
    let started = std::time::Instant::now();
    let err = d
        .client
        .controller
        .create_volume(with_timeout(
            create_req("pvc-budget", 5 * GIB, &[]),
            Duration::from_secs(10),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "took {:?}",
        started.elapsed()
    );
    let budget_tree = emu
        .quota_trees()
        .into_iter()
        .find(|t| t.name.starts_with("pvc-budget_w"));
    assert_eq!(
        budget_tree.map(|t| t.status()),
        Some("deleting"),
        "the failed create was not undone"
    );

    // The array recovers: the CO's retries make the volume (ABORTED while
    // the undone tree is still going away), then delete it.
    emu.set_faults(Faults::default());
    let mut retried = d.create("pvc-stuck", 5 * GIB, &[]).await;
    for _ in 0..3 {
        match &retried {
            Err(e) if e.code() == Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                retried = d.create("pvc-stuck", 5 * GIB, &[]).await;
            }
            _ => break,
        }
    }
    let vol = retried.expect("retried create");
    assert_eq!(tree_size(&emu, "pvc-stuck"), Some(5 * GIB));
    d.delete(&vol.volume_id).await.expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish(&emu, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_space_accounting() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let params: std::collections::HashMap<String, String> = [
        ("shares".to_string(), SHARE.to_string()),
        ("user".to_string(), USER.to_string()),
        ("password".to_string(), PASSWORD.to_string()),
    ]
    .into();
    let cap = |d: &mut XskyDriver| {
        let mut c = d.client.controller.clone();
        let params = params.clone();
        async move {
            c.get_capacity(GetCapacityRequest {
                parameters: params,
                ..Default::default()
            })
            .await
            .expect("capacity")
            .into_inner()
            .available_capacity as u64
        }
    };
    assert_eq!(cap(&mut d).await, 100 * GIB);
    let vol = d.create("pvc-cap", 30 * GIB, &[]).await.expect("create");
    assert_eq!(cap(&mut d).await, 70 * GIB);
    let err = d.create("pvc-too-big", 80 * GIB, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    d.delete(&vol.volume_id).await.expect("delete");
    assert_eq!(cap(&mut d).await, 100 * GIB);
    assert!(
        d.logs().contains("deprecated"),
        "deprecated parameters not logged"
    );
    // Unknown folder behind a share: FAILED_PRECONDITION.
    let err = d
        .create("pvc-x", GIB, &[("shares", "127.0.0.1:/sdsfs/nope/")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    finish(&emu, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_mode_snapshot_and_restore() {
    use wasmcsi::proto::volume_content_source::{SnapshotSource, Type};
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let params = [
        ("mode", "folder"),
        ("pool", "data_pool"),
        ("gatewayGroup", "gw1"),
        ("clientGroupName", "k8s-nodes"),
    ];
    let vol = d
        .create("pvc-folder", 5 * GIB, &params)
        .await
        .expect("create");
    assert!(
        vol.volume_id.starts_with("xsky-nfs:fd-"),
        "{}",
        vol.volume_id
    );
    assert_eq!(vol.volume_context["share"], "/sdsfs/pvc-folder");
    assert_eq!(vol.volume_context["server"], "127.0.0.1");
    let (size, acl) = emu.with_state(|s| {
        let f = s
            .folders
            .iter()
            .find(|f| f.name == "pvc-folder")
            .expect("the folder");
        let share = s
            .shares
            .iter()
            .find(|sh| sh.folder_id == f.id)
            .expect("its share");
        (f.size, share.acls.clone())
    });
    assert_eq!(size, 5 * GIB);
    assert_eq!(acl.len(), 1, "{acl:?}");
    assert_eq!(acl[0]["fs_client_group_id"], 1);
    let again = d
        .create("pvc-folder", 5 * GIB, &params)
        .await
        .expect("create again");
    assert_eq!(again.volume_id, vol.volume_id);

    let grown = d.expand(&vol.volume_id, 10 * GIB).await.expect("expand");
    assert_eq!(grown.capacity_bytes as u64, 10 * GIB);
    assert!(!grown.node_expansion_required);
    let size = emu.with_state(|s| {
        s.folders
            .iter()
            .find(|f| f.name == "pvc-folder")
            .map(|f| f.size)
    });
    assert_eq!(size, Some(10 * GIB));

    let snap_req = CreateSnapshotRequest {
        source_volume_id: vol.volume_id.clone(),
        name: "snap-1".into(),
        secrets: secrets(),
        ..Default::default()
    };
    let snap = d
        .client
        .controller
        .create_snapshot(snap_req.clone())
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        snap.snapshot_id.starts_with("xsky-nfs:sn-"),
        "{}",
        snap.snapshot_id
    );
    assert_eq!(snap.source_volume_id, vol.volume_id);
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes as u64, 10 * GIB);
    assert!(snap
        .creation_time
        .is_some_and(|t| t.seconds > 1_700_000_000));
    let again = d
        .client
        .controller
        .create_snapshot(snap_req)
        .await
        .expect("snapshot again")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let listed = d
        .client
        .controller
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: vol.volume_id.clone(),
            secrets: secrets(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        snap.snapshot_id
    );

    // A volume with a snapshot cannot go yet, and is left intact.
    let err = d.delete(&vol.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(emu.with_state(|s| s.shares.len()), 2);

    // Restore: a folder cloned from the snapshot.
    let mut req = create_req("pvc-restore", 5 * GIB, &params);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    // A slow array: while the restore runs, the snapshot cannot be deleted
    // from under it (the host holds the source's lock: ABORTED, retry later).
    emu.with_state(|s| s.settle_after = Duration::from_millis(1500));
    let mut restoring = d.client.controller.clone();
    let restore = tokio::spawn(async move { restoring.create_volume(req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut delete_snapshot = tonic::Request::new(DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id.clone(),
        secrets: secrets(),
    });
    delete_snapshot.set_timeout(Duration::from_millis(500));
    let busy = d
        .client
        .controller
        .delete_snapshot(delete_snapshot)
        .await
        .expect_err("deleting a snapshot being restored");
    assert_eq!(busy.code(), Code::Aborted, "{busy:?}");
    assert!(
        !restore.is_finished(),
        "the restore was not slow enough to test"
    );
    let restored = restore
        .await
        .unwrap()
        .expect("restore")
        .into_inner()
        .volume
        .unwrap();
    emu.with_state(|s| s.settle_after = Duration::from_millis(150));
    assert_eq!(
        restored.capacity_bytes as u64,
        10 * GIB,
        "at least the snapshot's size"
    );
    let clone_of = emu.with_state(|s| {
        s.folders
            .iter()
            .find(|f| f.name == "pvc-restore")
            .and_then(|f| f.snapshot_id)
    });
    assert_eq!(
        Some(format!("xsky-nfs:sn-{}", clone_of.unwrap())),
        Some(snap.snapshot_id.clone())
    );

    d.delete(&restored.volume_id)
        .await
        .expect("delete the restored volume");
    for _ in 0..2 {
        d.client
            .controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                secrets: secrets(),
            })
            .await
            .expect("delete snapshot (twice)");
    }
    d.delete(&vol.volume_id).await.expect("delete");
    d.delete(&vol.volume_id).await.expect("delete again");
    finish(&emu, &d);
}

/// GetCapacity carries no parameters from csi-sanity and never secrets:
/// the plugin settings give the defaults (shares, or mode and pool) and
/// the credentials (in deploy/, from a Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_without_parameters_uses_the_settings() {
    let emu = emulator().await;
    let server = [emu.addr().to_string()];
    let creds = format!(", user: \"{USER}\", password: \"{PASSWORD}\"");
    let bare = |d: &mut XskyDriver| {
        let mut c = d.client.controller.clone();
        async move {
            c.get_capacity(GetCapacityRequest::default())
                .await
                .map(|r| r.into_inner().available_capacity as u64)
        }
    };

    // Nothing in the settings: says which setting is missing.
    let mut d = XskyDriver::start(&server, "").await;
    let err = bare(&mut d).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("setting shares"), "{err:?}");
    drop(d);

    // Quota-tree mode: the settings' home shares and credentials.
    let settings = format!(", shares: \"{SHARE}\"{creds}");
    let mut d = XskyDriver::start(&server, &settings).await;
    assert_eq!(bare(&mut d).await.expect("capacity"), 100 * GIB);
    let vol = d
        .create("pvc-capless", 30 * GIB, &[])
        .await
        .expect("create");
    assert_eq!(bare(&mut d).await.expect("capacity"), 70 * GIB);
    d.delete(&vol.volume_id).await.expect("delete");
    assert!(
        !d.logs().contains("deprecated"),
        "settings credentials are not the deprecated parameters"
    );
    finish(&emu, &d);
    drop(d);

    // Folder mode: the settings' pool (1 TiB, of which csi-fs has 100 GiB).
    let settings = format!(", mode: folder, pool: data_pool{creds}");
    let mut d = XskyDriver::start(&server, &settings).await;
    assert_eq!(bare(&mut d).await.expect("capacity"), 924 * GIB);
    // Parameters still win over the settings.
    let mut c = d.client.controller.clone();
    let err = c
        .get_capacity(GetCapacityRequest {
            parameters: [("pool".to_string(), "nope".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    finish(&emu, &d);
}

/// A create whose smallest possible size is past limit_bytes is refused
/// before anything is made, every time; the same name with other
/// parameters is ALREADY_EXISTS, not the old volume; cloning a volume is
/// refused saying what does work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_are_checked_before_anything_is_made() {
    use wasmcsi::proto::volume_content_source::{Type, VolumeSource};
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;

    // 512 KiB at most, but a volume is at least 1 MiB: OUT_OF_RANGE, and a
    // retry says the same (no quota tree was left to be ALREADY_EXISTS).
    let mut tiny = create_req("pvc-tiny", 0, &[]);
    tiny.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: 512 << 10,
    });
    for _ in 0..2 {
        let err = d
            .client
            .controller
            .create_volume(tiny.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(emu.quota_trees().is_empty(), "{:?}", emu.quota_trees());
    }

    // Same name, other parameters: ALREADY_EXISTS, in both modes.
    let vol = d
        .create("pvc-params", 5 * GIB, &[("mountOptions", "hard")])
        .await
        .expect("create");
    for other in [
        vec![("mountOptions", "soft")],
        vec![("mountOptions", "hard"), ("clientGroupName", "k8s-nodes")],
        vec![("mountOptions", "hard"), ("nfsVersion", "3")],
    ] {
        let err = d.create("pvc-params", 5 * GIB, &other).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{other:?}: {err:?}");
    }
    let again = d
        .create("pvc-params", 5 * GIB, &[("mountOptions", "hard")])
        .await
        .expect("the same request again");
    assert_eq!(again.volume_id, vol.volume_id);
    assert_eq!(emu.quota_trees().len(), 1);

    let folder = [("mode", "folder"), ("pool", "data_pool")];
    let fvol = d.create("pvc-fparams", GIB, &folder).await.expect("create");
    let mut other = folder.to_vec();
    other.push(("clientGroupName", "k8s-nodes"));
    let err = d.create("pvc-fparams", GIB, &other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = d
        .create(
            "pvc-fparams",
            GIB,
            &[
                ("mode", "folder"),
                ("pool", "data_pool"),
                ("mountOptions", "soft"),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Clone from a volume: refused in both modes, saying what works, and
    // nothing made.
    for (params, source) in [(&[][..], &vol), (&folder[..], &fvol)] {
        let mut req = create_req("pvc-clone", GIB, params);
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(Type::Volume(VolumeSource {
                volume_id: source.volume_id.clone(),
            })),
        });
        let err = d.client.controller.create_volume(req).await.unwrap_err();
        eprintln!("clone: {:?}: {}", err.code(), err.message());
        assert!(
            matches!(err.code(), Code::Unimplemented | Code::InvalidArgument),
            "{err:?}"
        );
        assert!(
            !err.message().contains("quota-tree mode only"),
            "an untrue message: {err:?}"
        );
    }
    assert_eq!(emu.quota_trees().len(), 1);
    assert_eq!(emu.with_state(|s| s.folders.len()), 2);

    d.delete(&vol.volume_id).await.expect("delete");
    d.delete(&fvol.volume_id).await.expect("delete");
    finish(&emu, &d);
}

/// Folder mode takes only folders xsky-nfs made: a volume named like the
/// home share's folder is not that folder, and a delete of a folder that
/// is not ours, or holds what ours never do, touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_mode_touches_only_its_own_folders() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let folder = [("mode", "folder"), ("pool", "data_pool")];

    let err = d.create("csi-fs", GIB, &folder).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("did not make"), "{err:?}");
    // The home share's folder by id: refused before any share is touched.
    let err = d.delete("xsky-nfs:fd-1").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let home = emu.with_state(|s| (s.shares.len(), s.shares[0].pending.is_none()));
    assert_eq!(home, (1, true), "the home share was touched");
    // Quota-tree volumes still work.
    let vol = d.create("pvc-after", GIB, &[]).await.expect("create");
    d.delete(&vol.volume_id).await.expect("delete");

    // A folder of ours in which someone made a quota tree: the delete
    // says so and leaves its share in place.
    let fvol = d.create("pvc-own", GIB, &folder).await.expect("create");
    let fid: i64 = fvol
        .volume_id
        .trim_start_matches("xsky-nfs:fd-")
        .parse()
        .unwrap();
    let racer = emu.with_state(|s| s.race_claim_tree(fid, GIB));
    let err = d.delete(&fvol.volume_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("quota tree"), "{err:?}");
    let shared = emu.with_state(|s| {
        s.shares
            .iter()
            .any(|sh| sh.folder_id == fid && sh.pending.is_none())
    });
    assert!(shared, "the folder's share was removed: {}", emu.summary());
    emu.with_state(|s| s.quota_trees.retain(|t| t.id != racer));
    d.delete(&fvol.volume_id).await.expect("delete");
    finish(&emu, &d);
}

/// Space taken by another client between the plugin's look and its
/// request: XMS answers 400, the plugin RESOURCE_EXHAUSTED (which the
/// provisioner retries), and the retry succeeds once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_races_are_not_final() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let folder = [("mode", "folder"), ("pool", "data_pool")];
    for (name, params, bytes) in [
        ("pvc-race", &[][..], 90 * GIB),
        ("pvc-frace", &folder[..], 920 * GIB),
    ] {
        emu.set_faults(Faults {
            race_claim_bytes: bytes,
            ..Faults::default()
        });
        let err = d.create(name, 20 * GIB, params).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{name}: {err:?}");
        assert_eq!(emu.faults().race_claim_bytes, 0, "the race did not run");
        let refused = emu
            .exchanges()
            .iter()
            .any(|e| e.status == 400 && !e.injected);
        assert!(refused, "XMS never refused: the race was not tested");
        // The other client gives the space back; the retry succeeds.
        emu.with_state(|s| {
            s.quota_trees.retain(|t| !t.name.starts_with("racer-"));
            s.folders.retain(|f| !f.name.starts_with("racer-"));
        });
        let vol = d.create(name, 20 * GIB, params).await.expect("retry");
        d.delete(&vol.volume_id).await.expect("delete");
    }
    finish(&emu, &d);
}

/// The object of a CSI id (`xsky-nfs:<kind>-<n>`).
fn xsky_id(kind: &str, n: i64) -> String {
    format!("xsky-nfs:{kind}-{n}")
}

fn snapshot_req(source: &str, name: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        secrets: secrets(),
        ..Default::default()
    }
}

fn restore_req(name: &str, snapshot: &str, params: &[(&str, &str)]) -> CreateVolumeRequest {
    use wasmcsi::proto::volume_content_source::{SnapshotSource, Type};
    let mut req = create_req(name, GIB, params);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snapshot.into(),
        })),
    });
    req
}

/// FAILED_PRECONDITION naming the object.
fn refused_naming(what: &str, result: Result<(), tonic::Status>, names: &str) {
    let err = result.expect_err(what);
    eprintln!("{what}: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
    assert!(err.message().contains(names), "{what}: {err:?}");
}

/// Objects someone else made on the array (through the XMS API, as a user
/// would): a quota tree in the home share's folder, a folder with a share
/// and a snapshot, a folder named like a PVC, the home share's folder
/// itself. Every mutating call, in both modes, aimed at each, is
/// FAILED_PRECONDITION (or ALREADY_EXISTS for a create of that name)
/// naming it; the array's whole state is the same afterwards and the
/// plugin sent no request that mutates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_driver_did_not_make_are_never_touched() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let xms = rest::Xms::login(&emu.url()).await;
    let home = 1;
    let data = xms.tree(home, "data", 2 * GIB).await;
    let team = xms.folder("team-a", 10 * GIB, "").await;
    xms.share(team).await;
    let nightly = xms.snapshot(team, "nightly").await;
    let pvc_like = xms.folder("pvc-foreign", 3 * GIB, "made by hand").await;
    xms.share(pvc_like).await;
    let pvc_snap = xms.snapshot(pvc_like, "snapshot-1").await;
    let before = emu.summary();
    let sent = emu.exchanges().len();
    let folder = [("mode", "folder"), ("pool", "data_pool")];

    let targets = [
        (xsky_id("qt", data), "data"),
        (xsky_id("fd", home), "csi-fs"),
        (xsky_id("fd", team), "team-a"),
        (xsky_id("fd", pvc_like), "pvc-foreign"),
    ];
    for (id, name) in &targets {
        refused_naming(&format!("delete {id}"), d.delete(id).await, name);
        let grown = d.expand(id, 200 * GIB).await.map(drop);
        refused_naming(&format!("expand {id}"), grown, name);
    }
    for (id, name) in &targets[1..] {
        let snap = d
            .client
            .controller
            .create_snapshot(snapshot_req(id, "snap-of-foreign"))
            .await
            .map(drop);
        refused_naming(&format!("snapshot {id}"), snap, name);
    }
    for (snap, name) in [(nightly, "nightly"), (pvc_snap, "snapshot-1")] {
        let id = xsky_id("sn", snap);
        let deleted = d
            .client
            .controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                secrets: secrets(),
            })
            .await
            .map(drop);
        refused_naming(&format!("delete snapshot {id}"), deleted, name);
        let restored = d
            .client
            .controller
            .create_volume(restore_req("pvc-restored", &id, &folder))
            .await
            .map(drop);
        refused_naming(&format!("restore {id}"), restored, name);
    }
    // A folder volume named like someone's folder is not that folder.
    for name in ["csi-fs", "team-a", "pvc-foreign"] {
        let err = d.create(name, GIB, &folder).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{name}: {err:?}");
    }

    assert_eq!(emu.summary(), before, "the array changed");
    let mutating: Vec<String> = emu.exchanges()[sent..]
        .iter()
        .filter(|e| e.method != "GET" && e.path != "/v1/auth/tokens")
        .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
        .collect();
    assert!(mutating.is_empty(), "requests that mutate: {mutating:#?}");

    // The driver's own volumes still go through the same checks.
    let vol = d.create("pvc-own-tree", GIB, &[]).await.expect("create");
    d.expand(&vol.volume_id, 2 * GIB).await.expect("expand");
    d.delete(&vol.volume_id).await.expect("delete");
    let fvol = d
        .create("pvc-own-folder", GIB, &folder)
        .await
        .expect("create");
    d.expand(&fvol.volume_id, 2 * GIB).await.expect("expand");
    let snap = d
        .client
        .controller
        .create_snapshot(snapshot_req(&fvol.volume_id, "snap-own"))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let restored = d
        .client
        .controller
        .create_volume(restore_req("pvc-own-restored", &snap.snapshot_id, &folder))
        .await
        .expect("restore")
        .into_inner()
        .volume
        .unwrap();
    d.delete(&restored.volume_id)
        .await
        .expect("delete restored");
    d.client
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: secrets(),
        })
        .await
        .expect("delete snapshot");
    d.delete(&fvol.volume_id).await.expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emu.summary(),
        before,
        "the driver's own volumes left something"
    );

    // Someone's objects go the way they came (finish checks the rest).
    emu.with_state(|s| {
        s.snapshots.clear();
        s.quota_trees.clear();
        s.shares.retain(|sh| sh.folder_id == home);
        s.folders.retain(|f| f.id == home);
    });
    finish(&emu, &d);
}

/// The table, the rest of it: a name taken in the other mode, a
/// name spelled like another's hashed form, a limit below the size, block
/// capacity, a misspelt parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_parameters_are_checked() {
    let emu = emulator().await;
    let mut d = XskyDriver::start(&[emu.addr().to_string()], "").await;
    let folder = [("mode", "folder"), ("pool", "data_pool")];

    // The same name in the other mode: ALREADY_EXISTS, nothing made.
    let tree_vol = d.create("pvc-both", GIB, &[]).await.expect("create");
    let err = d.create("pvc-both", GIB, &folder).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let folder_vol = d.create("pvc-both-f", GIB, &folder).await.expect("create");
    let err = d.create("pvc-both-f", GIB, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(emu.quota_trees().len(), 1);
    assert_eq!(emu.with_state(|s| s.folders.len()), 2);

    // `x/y` is cleaned into `x-y-<hash>`; a volume named that is another.
    let odd = d.create("x/y", GIB, &[]).await.expect("create x/y");
    let tree = emu
        .quota_trees()
        .into_iter()
        .find(|t| t.name.starts_with("x-y-"))
        .expect("the tree of x/y");
    let cleaned = &tree.name[..tree.name.len() - "_w12345678".len()];
    let twin = d.create(cleaned, GIB, &[]).await.expect("create the twin");
    assert_ne!(twin.volume_id, odd.volume_id, "{cleaned} is x/y");
    assert_eq!(emu.quota_trees().len(), 3);

    // A limit below the current size: OUT_OF_RANGE, nothing changed.
    for id in [&tree_vol.volume_id, &folder_vol.volume_id] {
        let err = d
            .client
            .controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 0,
                    limit_bytes: (GIB / 2) as i64,
                }),
                secrets: secrets(),
                volume_capability: Some(rw()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{id}: {err:?}");
    }
    assert_eq!(tree_size(&emu, "pvc-both"), Some(GIB));

    // GetCapacity for block volumes, which xsky-nfs never makes: 0.
    let params: std::collections::HashMap<String, String> = [
        ("shares".to_string(), SHARE.to_string()),
        ("user".to_string(), USER.to_string()),
        ("password".to_string(), PASSWORD.to_string()),
    ]
    .into();
    let capacity = |caps: Vec<VolumeCapability>| {
        let mut c = d.client.controller.clone();
        let parameters = params.clone();
        async move {
            c.get_capacity(GetCapacityRequest {
                volume_capabilities: caps,
                parameters,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().available_capacity)
        }
    };
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        ..rw()
    };
    assert_eq!(capacity(vec![block]).await.expect("capacity"), 0);
    assert!(capacity(vec![rw()]).await.expect("capacity") > 0);

    // A misspelt parameter: INVALID_ARGUMENT naming it and the known ones;
    // the CO's own keys pass.
    let err = d
        .create("pvc-typo", GIB, &[("mountOption", "hard")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"mountOption\""), "{err:?}");
    assert!(err.message().contains("mountOptions"), "{err:?}");
    let vol = d
        .create(
            "pvc-co-keys",
            GIB,
            &[("csi.storage.k8s.io/pvc/name", "data")],
        )
        .await
        .expect("the CO's keys are not the plugin's");

    for v in [&tree_vol, &folder_vol, &odd, &twin, &vol] {
        d.delete(&v.volume_id).await.expect("delete");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish(&emu, &d);
}

/// 1,000 XMS requests in one plugin call (a CreateVolume polling a quota
/// tree that does not settle until then), with the plugin allowed 32 WASI
/// handles: every request's handles are dropped when its answer is read.
/// (Before, one handle stayed per request: the call failed with
/// RESOURCE_EXHAUSTED after about 30 requests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_in_one_call_hold_no_more_handles() {
    let emu = emulator().await;
    let mut d = XskyDriver::start_limited(
        &[emu.addr().to_string()],
        ", pollIntervalMs: 10, callBudgetSeconds: 55",
        ", maxOpenHandles: 32",
    )
    .await;
    emu.set_faults(Faults {
        never_settle: true,
        ..Faults::default()
    });
    let sent = emu.exchanges().len();
    let mut controller = d.client.controller.clone();
    let create = tokio::spawn(async move {
        controller
            .create_volume(create_req("pvc-long-wait", GIB, &[]))
            .await
    });
    while emu.exchanges().len() - sent < 1000 && !create.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emu.with_state(|s| s.settle_after = Duration::ZERO);
    emu.set_faults(Faults::default());
    let vol = create
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.logs()))
        .into_inner()
        .volume
        .unwrap();
    let requests = emu.exchanges().len() - sent;
    eprintln!("one CreateVolume made {requests} XMS requests");
    assert!(requests >= 1000, "only {requests} requests");
    emu.with_state(|s| s.settle_after = Duration::from_millis(150));
    d.delete(&vol.volume_id).await.expect("delete");
    finish(&emu, &d);
}

/// Work that never settles, polled every 20 ms with 32 handles: each call
/// runs to its budget (3 s) and answers DEADLINE_EXCEEDED itself (never
/// RESOURCE_EXHAUSTED); what the creates made is undone, so once the array
/// finishes its work its state is what it was before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_settling_calls_use_their_budget_and_leave_nothing() {
    let emu = emulator().await;
    let mut d = XskyDriver::start_limited(
        &[emu.addr().to_string()],
        ", pollIntervalMs: 20, callBudgetSeconds: 3",
        ", maxOpenHandles: 32",
    )
    .await;
    let folder = [("mode", "folder"), ("pool", "data_pool")];
    let tree_vol = d.create("pvc-ns-tree", GIB, &[]).await.expect("create");
    let folder_vol = d
        .create("pvc-ns-folder", GIB, &folder)
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = emu.summary();
    emu.set_faults(Faults {
        never_settle: true,
        ..Faults::default()
    });
    let mut calls: Vec<(&str, Result<(), tonic::Status>, Duration)> = vec![];
    let started = std::time::Instant::now();
    let r = d.create("pvc-ns-new-tree", GIB, &[]).await.map(drop);
    calls.push(("create (quota tree)", r, started.elapsed()));
    let started = std::time::Instant::now();
    let r = d.create("pvc-ns-new-folder", GIB, &folder).await.map(drop);
    calls.push(("create (folder)", r, started.elapsed()));
    let started = std::time::Instant::now();
    let r = d
        .client
        .controller
        .create_snapshot(snapshot_req(&folder_vol.volume_id, "snap-ns"))
        .await
        .map(drop);
    calls.push(("create snapshot", r, started.elapsed()));
    for (what, result, took) in calls {
        let err = result.expect_err(what);
        eprintln!("{what}: {:?} after {took:?}: {}", err.code(), err.message());
        assert_eq!(err.code(), Code::DeadlineExceeded, "{what}: {err:?}");
        assert!(err.message().contains("call budget"), "{what}: {err:?}");
        assert!(took >= Duration::from_millis(2900), "{what}: {took:?}");
    }
    // The array finishes its work: the undo leaves nothing.
    emu.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emu.summary(), before, "the failed creates left something");

    // Expansion that never settles: DEADLINE_EXCEEDED too, both modes.
    emu.set_faults(Faults {
        never_settle: true,
        ..Faults::default()
    });
    for id in [&tree_vol.volume_id, &folder_vol.volume_id] {
        let started = std::time::Instant::now();
        let err = d.expand(id, 2 * GIB).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{id}: {err:?}");
        assert!(started.elapsed() >= Duration::from_millis(2900));
    }
    emu.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for v in [&tree_vol, &folder_vol] {
        d.delete(&v.volume_id).await.expect("delete");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish(&emu, &d);
}
