//! The sandbox: a hostile plugin loaded next to local-dir in one real
//! driver. Every misdeed costs its own request an error with the right
//! code, naming the plugin, while the driver keeps answering other calls.

mod common;

mod hostile;

use std::time::{Duration, Instant};

use common::*;
use hostile::*;
use tonic::Code;

async fn expect_failure(s: &Sandbox, misdeed: &str, url: Option<&str>, want: Code, says: &str) {
    let started = Instant::now();
    let err =
        s.d.client
            .clone()
            .controller
            .create_volume(hostile_req(misdeed, url))
            .await
            .expect_err(misdeed);
    let msg = err.message();
    eprintln!("{misdeed}: {:?}: {msg}", err.code());
    assert_eq!(err.code(), want, "{misdeed}: {err:?}");
    assert!(
        msg.contains("hostile"),
        "{misdeed}: message names no plugin: {msg}"
    );
    assert!(
        msg.contains(says),
        "{misdeed}: {msg:?} does not say {says:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{misdeed} took {:?}",
        started.elapsed()
    );
    still_serving(&s.d, misdeed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_misdeed_costs_one_request() {
    let s = start(2).await;
    // A well-behaved call first: the plugin itself works.
    let vol =
        s.d.client
            .clone()
            .controller
            .create_volume(hostile_req("null", None))
            .await
            .expect("null call")
            .into_inner()
            .volume
            .unwrap();
    assert_eq!(vol.volume_id, "hostile:null");

    expect_failure(&s, "loop", None, Code::DeadlineExceeded, "within").await;
    expect_failure(&s, "memory", None, Code::ResourceExhausted, "memory limit").await;
    // Rust's stack lives in linear memory: overflowing it is an out of
    // bounds access below address 0 (or wasmtime's own stack limit).
    expect_failure(&s, "recursion", None, Code::Internal, "wasm trap").await;
    expect_failure(&s, "panic", None, Code::Internal, "panics on purpose").await;
    let outside = "http://127.0.0.1:9/";
    expect_failure(
        &s,
        "http",
        Some(outside),
        Code::PermissionDenied,
        "not an allowed origin",
    )
    .await;
    let big = format!("{}/big", s.origin);
    expect_failure(
        &s,
        "big-response",
        Some(&big),
        Code::ResourceExhausted,
        "exceeds",
    )
    .await;
    expect_failure(
        &s,
        "mount",
        None,
        Code::PermissionDenied,
        "outside the allowed",
    )
    .await;
    let mnt = s.hostile_root.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::os::unix::fs::symlink("/etc", mnt.join("escape")).unwrap();
    expect_failure(
        &s,
        "symlink",
        None,
        Code::PermissionDenied,
        "outside the allowed",
    )
    .await;
    expect_failure(&s, "dotdot", None, Code::InvalidArgument, "..").await;
    expect_failure(&s, "passwd", None, Code::PermissionDenied, "/etc/passwd").await;
    assert!(
        !std::path::Path::new("/etc/wasmcsi-hostile").exists(),
        "the mount misdeed left a target behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_answers_during_an_endless_loop() {
    // Long enough for a local-dir create (mkfs) to finish inside it.
    let s = start(8).await;
    let mut looping = s.d.client.clone();
    let started = Instant::now();
    let stuck = tokio::spawn(async move {
        looping
            .controller
            .create_volume(hostile_req("loop", None))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other calls, to both plugins, finish while the loop still spins.
    still_serving(&s.d, "during-loop").await;
    let mut other = s.d.client.clone();
    other
        .controller
        .create_volume(hostile_req("null", None))
        .await
        .expect("a second hostile call runs beside the looping one");
    assert!(
        !stuck.is_finished(),
        "the looping call ended before the other calls were done ({:?})",
        started.elapsed()
    );
    let result = stuck.await.unwrap();
    assert_eq!(code(result), Code::DeadlineExceeded);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(12),
        "the loop was stopped after {took:?}, not the 8 s limit"
    );
}

/// What the hostile plugin's "leftovers" call reports, from its volume.
async fn leftovers(mut client: wasmcsi::client::CsiClient) -> String {
    let vol = client
        .controller
        .create_volume(hostile_req("leftovers", None))
        .await
        .expect("leftovers call")
        .into_inner()
        .volume
        .unwrap();
    vol.volume_context["detail"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_call_sees_what_an_earlier_call_left_in_memory() {
    let s = start(2).await;
    // Memory slots are reused and reset in place; a trap must not leave a
    // dirty slot behind either.
    expect_failure(&s, "panic", None, Code::Internal, "panics on purpose").await;
    for run in 1..=3 {
        assert_eq!(
            leftovers(s.d.client.clone()).await,
            format!("calls=1 previous=None runs={run}"),
            "call {run} saw another call's memory (or lost the file under its root)"
        );
    }
    let mut concurrent = tokio::task::JoinSet::new();
    for _ in 0..8 {
        concurrent.spawn(leftovers(s.d.client.clone()));
    }
    while let Some(detail) = concurrent.join_next().await {
        let detail = detail.unwrap();
        assert!(
            detail.starts_with("calls=1 previous=None runs="),
            "a concurrent call saw another call's memory: {detail}"
        );
    }
}
