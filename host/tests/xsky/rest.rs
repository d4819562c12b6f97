//! The XMS REST API as a user (or another tool) drives it: objects the
//! driver did not make, made through the emulator's `/v1` API with its
//! own login, so that every request is checked against the swagger too.

use std::time::Duration;

use serde_json::{json, Value};

pub struct Xms {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Xms {
    /// Logs in as the emulator's `admin`.
    pub async fn login(base: &str) -> Xms {
        let http = reqwest::Client::new();
        let body = json!({ "auth": { "identity": { "password": { "user": {
            "name": "admin", "password": "admin",
        }}}}});
        let mut xms = Xms {
            base: base.to_string(),
            token: String::new(),
            http,
        };
        let (status, answer) = xms.send("POST", "/v1/auth/tokens", Some(body)).await;
        assert_eq!(status, 201, "login: {answer}");
        xms.token = answer["token"]["uuid"].as_str().unwrap().to_string();
        xms
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "application/json")
            .header("Xms-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("the emulator answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn accepted(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.send(method, path, Some(body)).await;
        assert!(
            status == 202 || status == 200,
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// GETs `path` until its object under `key` is active.
    async fn settled(&self, path: &str, key: &str) -> Value {
        for _ in 0..200 {
            let (status, answer) = self.send("GET", path, None).await;
            if status == 200 && answer[key]["status"] == "active" {
                return answer[key].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{path} never settled");
    }

    /// CreateFolder in pool 1 (`data_pool`), settled; its id.
    pub async fn folder(&self, name: &str, bytes: u64, description: &str) -> i64 {
        let body = json!({ "fs_folder": {
            "name": name, "pool_id": 1, "size": bytes, "description": description,
        }});
        let made = self.accepted("POST", "/v1/fs-folders/", body).await;
        let id = made["fs_folder"]["id"].as_i64().unwrap();
        self.settled(&format!("/v1/fs-folders/{id}"), "fs_folder")
            .await;
        id
    }

    /// CreateFSNFSShare of a whole folder on gateway group 1, settled.
    pub async fn share(&self, folder_id: i64) -> i64 {
        let body = json!({ "fs_nfs_share": {
            "fs_folder_id": folder_id, "fs_gateway_group_id": 1,
        }});
        let made = self.accepted("POST", "/v1/fs-nfs-shares/", body).await;
        let id = made["fs_nfs_share"]["id"].as_i64().unwrap();
        self.settled(&format!("/v1/fs-nfs-shares/{id}"), "fs_nfs_share")
            .await;
        id
    }

    /// CreateFSSnapshot, settled.
    pub async fn snapshot(&self, folder_id: i64, name: &str) -> i64 {
        let body = json!({ "fs_snapshot": { "fs_folder_id": folder_id, "name": name } });
        let made = self.accepted("POST", "/v1/fs-snapshots/", body).await;
        let id = made["fs_snapshot"]["id"].as_i64().unwrap();
        self.settled(&format!("/v1/fs-snapshots/{id}"), "fs_snapshot")
            .await;
        id
    }

    /// AddFSQuotaTrees (one), settled; its id.
    pub async fn tree(&self, folder_id: i64, name: &str, bytes: u64) -> i64 {
        let body = json!({ "fs_folder": { "fs_quota_trees": [{ "name": name, "size": bytes }] } });
        self.accepted(
            "PUT",
            &format!("/v1/fs-folders/{folder_id}/fs-quota-trees"),
            body,
        )
        .await;
        let (status, list) = self
            .send(
                "GET",
                &format!("/v1/fs-quota-trees/?fs_folder_id={folder_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{list}");
        let id = list["fs_quota_trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["id"].as_i64())
            .expect("the new tree is listed");
        self.settled(&format!("/v1/fs-quota-trees/{id}"), "fs_quota_tree")
            .await;
        id
    }
}
