//! The emulator's answers to every operation it implements validate
//! against the published swagger (`shared/xms/swagger.yaml`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use xms_emulator::spec::Spec;
use xms_emulator::{Exchange, State, GIB};

/// The swagger under `WASMCSI_SHARED` (default `../shared` beside the repo;
/// a relative value is taken from the repo root). Absent: the check fails in
/// CI (`CI=true`) and is skipped, loudly, elsewhere.
fn spec() -> Option<Spec> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = match std::env::var_os("WASMCSI_SHARED") {
        Some(dir) if !dir.is_empty() => repo.join(dir),
        _ => repo.join("../shared"),
    };
    let path = shared.join("xms/swagger.yaml");
    if !path.exists() {
        let why = format!("{} is missing (set WASMCSI_SHARED)", path.display());
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{why}");
        // Straight to stderr: libtest would swallow eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "NOT CHECKED: the emulator against the swagger: {why}"
        );
        return None;
    }
    Some(Spec::load(&path).expect("the XMS swagger is readable"))
}

fn ex(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    req: Option<Value>,
    reply: (u16, Value),
) -> Exchange {
    Exchange {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        headers: vec!["xms-auth-token".into()],
        request: req,
        status: reply.0,
        response: Some(reply.1),
        injected: false,
    }
}

fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_operation_answers_as_the_swagger_says() {
    let Some(spec) = spec() else { return };
    let mut s = State::default();
    s.settle_after = std::time::Duration::ZERO;
    let login = json!({"auth": {"identity": {"password": {"user": {"name": "admin", "password": "admin"}}}}});
    let add = json!({"fs_folder": {"fs_quota_trees": [{"name": "pvc-1", "size": 5 * GIB}]}});
    let mut all = vec![
        ex(
            "POST",
            "/v1/auth/tokens",
            &[],
            Some(login.clone()),
            s.create_token(&login),
        ),
        ex(
            "GET",
            "/v1/fs-folders/",
            &[("q", "csi-fs")],
            None,
            s.list_folders(&q(&[("q", "csi-fs")])),
        ),
        ex("GET", "/v1/fs-folders/1", &[], None, s.get_folder(1)),
        ex(
            "GET",
            "/v1/fs-nfs-shares/",
            &[("fs_folder_id", "1")],
            None,
            s.list_shares(&q(&[("fs_folder_id", "1")])),
        ),
        ex(
            "GET",
            "/v1/fs-gateway-groups/",
            &[],
            None,
            s.list_gateway_groups(&q(&[])),
        ),
        ex(
            "GET",
            "/v1/fs-client-groups/",
            &[("q", "k8s-nodes")],
            None,
            s.list_client_groups(&q(&[("q", "k8s-nodes")])),
        ),
        ex(
            "PUT",
            "/v1/fs-folders/1/fs-quota-trees",
            &[],
            Some(add.clone()),
            s.add_quota_trees(1, &add),
        ),
        ex(
            "GET",
            "/v1/fs-quota-trees/",
            &[("fs_folder_id", "1")],
            None,
            s.list_quota_trees(&q(&[("fs_folder_id", "1")])),
        ),
    ];
    s.settle();
    let id = s.quota_trees[0].id;
    let grow = json!({"fs_quota_tree": {"size": 10 * GIB}});
    let del = json!({"fs_folder": {"fs_quota_tree_ids": [id]}});
    all.push(ex(
        "GET",
        &format!("/v1/fs-quota-trees/{id}"),
        &[],
        None,
        s.get_quota_tree(id),
    ));
    all.push(ex(
        "PATCH",
        &format!("/v1/fs-quota-trees/{id}"),
        &[],
        Some(grow.clone()),
        s.update_quota_tree(id, &grow),
    ));
    s.settle();
    all.push(ex(
        "DELETE",
        "/v1/fs-folders/1/fs-quota-trees",
        &[],
        Some(del.clone()),
        s.remove_quota_trees(1, &del),
    ));
    s.settle();
    all.push(ex(
        "GET",
        &format!("/v1/fs-quota-trees/{id}"),
        &[],
        None,
        s.get_quota_tree(id),
    ));
    assert_eq!(all.last().unwrap().status, 404);
    // Folder mode: folder, share with a client-group ACL, snapshot, clone.
    let folder = json!({"fs_folder": {"name": "pvc-f", "pool_id": 1, "size": 2 * GIB,
        "description": "wasmcsi:xsky-nfs:0123abcd"}});
    all.push(ex(
        "GET",
        "/v1/pools/",
        &[("q", "data_pool")],
        None,
        s.list_pools(&q(&[("q", "data_pool")])),
    ));
    all.push(ex(
        "POST",
        "/v1/fs-folders/",
        &[],
        Some(folder.clone()),
        s.create_folder(&folder),
    ));
    s.settle();
    let fid = s.folders.last().unwrap().id;
    assert_eq!(
        s.get_folder(fid).1["fs_folder"]["description"],
        "wasmcsi:xsky-nfs:0123abcd",
        "the description is kept"
    );
    all.push(ex(
        "GET",
        "/v1/pools/1/samples",
        &[],
        None,
        s.pool_samples(1),
    ));
    assert_eq!(
        all.last().unwrap().response.as_ref().unwrap()["pool_samples"][0]["used_kbyte"],
        (102 * GIB / 1024),
        "csi-fs and pvc-f count as used"
    );
    let describe = json!({"fs_folder": {"description": "changed"}});
    all.push(ex(
        "PATCH",
        &format!("/v1/fs-folders/{fid}"),
        &[],
        Some(describe.clone()),
        s.update_folder(fid, &describe),
    ));
    assert_eq!(s.get_folder(fid).1["fs_folder"]["description"], "changed");
    assert_eq!(s.folders.last().unwrap().size, 2 * GIB, "size untouched");
    let share = json!({"fs_nfs_share": {"fs_folder_id": fid, "fs_gateway_group_id": 1,
        "fs_nfs_share_acls": [{"type": "client_group", "fs_client_group_id": 1, "permission": "rw", "sync": true, "all_squash": false, "root_squash": false}]}});
    all.push(ex(
        "POST",
        "/v1/fs-nfs-shares/",
        &[],
        Some(share.clone()),
        s.create_share(&share),
    ));
    let grow = json!({"fs_folder": {"size": 3 * GIB}});
    all.push(ex(
        "PATCH",
        &format!("/v1/fs-folders/{fid}"),
        &[],
        Some(grow.clone()),
        s.update_folder(fid, &grow),
    ));
    let snap =
        json!({"fs_snapshot": {"fs_folder_id": fid, "name": "snap-1", "description": "mine"}});
    all.push(ex(
        "POST",
        "/v1/fs-snapshots/",
        &[],
        Some(snap.clone()),
        s.create_snapshot(&snap),
    ));
    s.settle();
    let shid = s.shares.last().unwrap().id;
    let snid = s.snapshots[0].id;
    assert_eq!(
        s.get_snapshot(snid).1["fs_snapshot"]["description"],
        "mine",
        "a snapshot keeps its description"
    );
    all.push(ex(
        "GET",
        &format!("/v1/fs-nfs-shares/{shid}"),
        &[],
        None,
        s.get_share(shid),
    ));
    all.push(ex(
        "GET",
        "/v1/fs-snapshots/",
        &[("fs_folder_id", &fid.to_string())],
        None,
        s.list_snapshots(&q(&[("fs_folder_id", &fid.to_string())])),
    ));
    all.push(ex(
        "GET",
        &format!("/v1/fs-snapshots/{snid}"),
        &[],
        None,
        s.get_snapshot(snid),
    ));
    let clone = json!({"fs_folder": {"name": "pvc-c", "pool_id": 1, "size": 3 * GIB, "fs_snapshot_id": snid}});
    all.push(ex(
        "POST",
        "/v1/fs-folders/",
        &[],
        Some(clone.clone()),
        s.create_folder(&clone),
    ));
    s.settle();
    all.push(ex(
        "GET",
        "/v1/fs-folders/",
        &[],
        None,
        s.list_folders(&q(&[])),
    ));
    assert_eq!(
        s.delete_folder(fid).0,
        409,
        "a shared folder with snapshots cannot go"
    );
    all.push(ex(
        "DELETE",
        &format!("/v1/fs-nfs-shares/{shid}"),
        &[],
        None,
        s.delete_share(shid),
    ));
    all.push(ex(
        "DELETE",
        &format!("/v1/fs-snapshots/{snid}"),
        &[],
        None,
        s.delete_snapshot(snid),
    ));
    s.settle();
    all.push(ex(
        "DELETE",
        &format!("/v1/fs-folders/{fid}"),
        &[],
        None,
        s.delete_folder(fid),
    ));
    s.settle();
    assert_eq!(s.get_folder(fid).0, 404);
    let errors: Vec<String> = all.iter().flat_map(|e| spec.check(e)).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The checker is not blind: a misnamed field fails.
    let mut bad = all[6].clone();
    bad.request = Some(json!({"fs_folder": {"quota_trees": [{"name": "x", "size": 1}]}}));
    assert!(!spec.check(&bad).is_empty());
}
