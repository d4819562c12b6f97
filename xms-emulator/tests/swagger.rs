//! The emulator's answers to every operation it implements validate
//! against the published swagger (`shared/xms/swagger.yaml`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};
use xms_emulator::spec::Spec;
use xms_emulator::{Exchange, State, GIB};

fn spec() -> Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/xms/swagger.yaml");
    Spec::load(&path).expect("the XMS swagger is readable")
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
    let spec = spec();
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
    let errors: Vec<String> = all.iter().flat_map(|e| spec.check(e)).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The checker is not blind: a misnamed field fails.
    let mut bad = all[6].clone();
    bad.request = Some(json!({"fs_folder": {"quota_trees": [{"name": "x", "size": 1}]}}));
    assert!(!spec.check(&bad).is_empty());
}
