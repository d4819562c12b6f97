//! GetCapacity as csi-provisioner's capacity tracking asks it on a node: per
//! StorageClass parameters and the node's topology segment (the one
//! NodeGetInfo reported). A node-local plugin answers for its own node and
//! 0 for another's, whose room it cannot know.

mod common;

use std::collections::HashMap;

use common::*;
use wasmcsi::proto::*;

const KEY: &str = "topology.wasmcsi.io/node";

async fn capacity(d: &mut TestDriver, node: Option<&str>, params: &[(&str, &str)]) -> i64 {
    let req = GetCapacityRequest {
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        accessible_topology: node.map(|n| Topology {
            segments: HashMap::from([(KEY.to_string(), n.to_string())]),
        }),
        volume_capabilities: vec![rw()],
    };
    d.client
        .controller
        .get_capacity(req)
        .await
        .unwrap_or_else(|e| panic!("GetCapacity {node:?} {params:?}: {e}\n{}", d.logs()))
        .into_inner()
        .available_capacity
}

#[tokio::test]
async fn get_capacity_answers_for_this_node_and_zero_for_another() {
    for (mode, params) in [
        (
            "image",
            &[("mode", "image"), ("csi.storage.k8s.io/fstype", "xfs")][..],
        ),
        ("subvolume", &[("mode", "subvolume")][..]),
    ] {
        let mut d = TestDriver::start(Options {
            btrfs_root: mode == "subvolume",
            // A root of its own: the machine's disk changes between two calls.
            ext4_root: mode == "image",
            mode,
            ..Default::default()
        })
        .await;
        let info = d
            .client
            .node
            .node_get_info(NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let own = info
            .accessible_topology
            .expect("a node-local plugin has topology");
        let node = own.segments.get(KEY).expect("the topology key").clone();

        let here = capacity(&mut d, Some(&node), params).await;
        let anywhere = capacity(&mut d, None, params).await;
        assert!(here > 0, "{mode}: no room reported on an empty root");
        assert_eq!(
            here, anywhere,
            "{mode}: this node's topology changes the answer"
        );
        assert_eq!(
            capacity(&mut d, Some("another-node"), params).await,
            0,
            "{mode}: room claimed on another node"
        );
        eprintln!("GetCapacity {mode} on {node}: {here} bytes; on another node: 0");
    }
}
