//! The sandbox: a hostile plugin loaded next to local-dir in one real
//! driver. Every misdeed costs its own request an error with the right
//! code, naming the plugin, while the driver keeps answering other calls.

mod common;

mod hostile;

use std::time::{Duration, Instant};

use common::*;
use hostile::*;
use tonic::Code;
use wasmcsi::proto::*;

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
    expect_failure(
        &s,
        "memory",
        None,
        Code::ResourceExhausted,
        "limits.memoryBytes",
    )
    .await;
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
        "HttpResponseBodySize",
    )
    .await;
    // The same body, unannounced: cut off by the host as it grows.
    expect_failure(
        &s,
        "big-response",
        Some(&format!("{}/unannounced", s.origin)),
        Code::ResourceExhausted,
        "HttpResponseBodySize",
    )
    .await;
    // 9 MiB to a granted origin: refused by the host before it is sent.
    expect_failure(
        &s,
        "big-request",
        Some(&format!("{}/", s.origin)),
        Code::ResourceExhausted,
        "HttpRequestBodySize",
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
    // A controller call has no mount authority at all: the link is not even
    // looked at (node calls that name a path through one: tests/escapes.rs).
    expect_failure(
        &s,
        "symlink",
        None,
        Code::PermissionDenied,
        "no mount authority",
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
async fn leftovers(mut client: wasmcsi_testkit::client::CsiClient) -> String {
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

/// The hostile plugin's CreateVolume `misdeed` as the CO sees it.
async fn create(s: &Sandbox, misdeed: &str) -> Result<Volume, tonic::Status> {
    s.d.client
        .clone()
        .controller
        .create_volume(hostile_req(misdeed, None))
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

/// A refusal of a plugin's answer: INTERNAL, naming the plugin, short,
/// saying `says`, with no raw control character or invisible one.
fn assert_garbage_refused<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, tonic::Status>,
    says: &str,
) {
    let err = result.expect_err(case);
    let msg = err.message();
    eprintln!("{case}: {:?}: {msg}", err.code());
    assert_eq!(err.code(), Code::Internal, "{case}: {msg}");
    assert!(
        msg.contains("plugin hostile"),
        "{case}: names no plugin: {msg}"
    );
    assert!(msg.contains(says), "{case}: {msg:?} does not say {says:?}");
    assert!(msg.len() < 400, "{case}: a {} byte message", msg.len());
    assert!(
        !msg.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{case}: raw control characters in {msg:?}"
    );
}

/// After a case the driver holds what it held before (a few descriptors of
/// slack for connections), its RSS is sane, and the log grew by at most
/// `log_budget` bytes.
fn assert_back_to(case: &str, s: &Sandbox, pid: u32, before: Footprint, log_budget: u64) {
    let after = footprint(pid, &s.d);
    eprintln!(
        "{case}: fds {} -> {}, rss {} -> {} KiB, log +{} bytes",
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib,
        after.log_bytes - before.log_bytes
    );
    assert!(
        after.fds <= before.fds + 8,
        "{case}: the driver holds {} descriptors, {} before",
        after.fds,
        before.fds
    );
    assert!(
        after.rss_kib < 1 << 20,
        "{case}: the driver's RSS is {} KiB",
        after.rss_kib
    );
    let grew = after.log_bytes - before.log_bytes;
    assert!(
        grew <= log_budget,
        "{case}: the log grew by {grew} bytes (budget {log_budget})"
    );
}

/// The lines the log gained since `from` bytes.
fn log_since(s: &Sandbox, from: u64) -> String {
    let all = std::fs::read(&s.d.log).unwrap();
    String::from_utf8_lossy(&all[from as usize..]).into_owned()
}

/// A plugin using an ordinary wasi:http client (waki, built against
/// wasi:http 0.2.2, linked to the host's 0.2.12 by semver) reaches its
/// granted origin and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn an_ordinary_wasi_http_client_works_within_the_grant() {
    let s = start(10).await;
    let url = format!("{}/bytes/1000", s.origin);
    let vol =
        s.d.client
            .clone()
            .controller
            .create_volume(hostile_req("waki", Some(&url)))
            .await
            .expect("waki to the granted origin")
            .into_inner()
            .volume
            .unwrap();
    assert_eq!(vol.volume_context["detail"], "status 200 with 1000 bytes");
    expect_failure(
        &s,
        "waki",
        Some("http://127.0.0.1:9/"),
        Code::Unavailable,
        "HttpRequestDenied",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_are_bounded_per_call_and_cost_only_their_call() {
    let s = start(10).await;
    let pid = driver_pid(&s.d);
    // Warm up (first calls compile nothing, but open the loop-control
    // device, connections, ...), then measure.
    good_round(&s.d, "pvc-warm").await.unwrap();
    let base = footprint(pid, &s.d);
    let sampler = Sampler::start(pid);

    // Descriptors: each call may hold HANDLES WASI handles; two floods at
    // once, five times over, with good calls running throughout.
    let before = footprint(pid, &s.d);
    let floods = async {
        let mut results = Vec::new();
        for _ in 0..5 {
            let (a, b) = tokio::join!(create(&s, "fd-flood"), create(&s, "fd-flood"));
            results.extend([a, b]);
        }
        results
    };
    let (results, rounds) = during(&s.d, "fd-flood", floods).await;
    for r in results {
        let err = r.expect_err("an fd flood succeeded");
        eprintln!("fd-flood: {:?}: {}", err.code(), err.message());
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("hostile"), "{err:?}");
        assert!(
            err.message().contains(&format!("{HANDLES} WASI handles")),
            "{err:?}"
        );
    }
    let (peak_fds, _) = sampler.peak();
    eprintln!(
        "fd-flood: {rounds} good rounds, peak {peak_fds} fds (base {})",
        base.fds
    );
    // Two floods and one good hostile call at HANDLES each, plus what
    // local-dir and gRPC use meanwhile.
    assert!(
        peak_fds <= base.fds + 3 * HANDLES + 64,
        "the driver held {peak_fds} descriptors during the flood (base {})",
        base.fds
    );
    assert_back_to("fd-flood", &s, pid, before, 64 << 10);

    // Log: two floods of hundreds of 64 KiB lines with 64 KiB fields; each
    // call writes its budget (64 KiB and 256 lines, plus line prefixes),
    // then one line saying how many were dropped.
    let before = footprint(pid, &s.d);
    let (results, rounds) = during(&s.d, "log-flood", async {
        tokio::join!(create(&s, "log-flood"), create(&s, "log-flood"))
    })
    .await;
    for r in [results.0, results.1] {
        assert_eq!(
            r.expect("a log flood is no error").volume_id,
            "hostile:log-flood"
        );
    }
    eprintln!("log-flood: {rounds} good rounds");
    assert_back_to(
        "log-flood",
        &s,
        pid,
        before,
        2 * (64 << 10) + 2 * 256 * 400 + (64 << 10),
    );
    let log = log_since(&s, before.log_bytes);
    assert_eq!(
        log.matches("plugin log lines dropped").count(),
        2,
        "one dropped-lines line per flooding call"
    );
    assert!(
        log.contains("log-flood") && log.contains("forged"),
        "the first lines are kept"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01") && !line.contains("\u{1b}[2J"),
            "a plugin forged a log line: {line:?}"
        );
        assert!(line.len() < 16 << 10, "a {} byte log line", line.len());
    }

    // A 16 MiB error message: cut before it is a status or a log line.
    let before = footprint(pid, &s.d);
    let (result, _) = during(&s.d, "big-error", create(&s, "big-error")).await;
    let err = result.expect_err("big-error");
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message()
            .starts_with("hostile: big error\\nFORGED-ERROR EEE"),
        "{}",
        &err.message()[..80]
    );
    assert!(err.message().contains("more bytes cut"));
    assert!(
        err.message().len() < 1200,
        "a {} byte status message",
        err.message().len()
    );
    assert_back_to("big-error", &s, pid, before, 64 << 10);

    // HTTP: two calls each start 12 requests for 7 MiB at once over raw
    // wasi:http and read none: the host keeps at most 32 MiB of bodies per
    // call (4 whole answers), refuses the rest, and frees all at the end.
    let url = format!("{}/bytes/{}", s.origin, 7 << 20);
    let before = footprint(pid, &s.d);
    let flood = || {
        let mut client = s.d.client.clone();
        let req = hostile_req("http-flood", Some(&url));
        async move { client.controller.create_volume(req).await }
    };
    let (results, _) = during(&s.d, "http-flood", async { tokio::join!(flood(), flood()) }).await;
    for r in [results.0, results.1] {
        let vol = r
            .expect("an http flood answers")
            .into_inner()
            .volume
            .unwrap();
        let detail = &vol.volume_context["detail"];
        eprintln!("http-flood: {detail}");
        let whole: usize = detail.split(' ').next().unwrap().parse().unwrap();
        assert!(
            (1..=4).contains(&whole),
            "{detail}: a call held more than 32 MiB"
        );
        assert!(
            detail.ends_with(&format!("{} refused", 12 - whole)),
            "{detail}"
        );
    }
    assert_back_to("http-flood", &s, pid, before, 64 << 10);

    // 500 requests the host refuses, one after the other: the driver's log
    // takes a few lines of them, not 500.
    let before = footprint(pid, &s.d);
    let spam = create(&s, "http-spam").await.expect("refusals are answers");
    assert_eq!(spam.volume_context["detail"], "0 whole, 500 refused");
    assert_back_to("http-spam", &s, pid, before, 8 << 10);

    let (peak_fds, peak_rss) = sampler.peak();
    eprintln!(
        "floods: peak {peak_fds} fds, peak RSS {peak_rss} KiB (base {} fds, {} KiB)",
        base.fds, base.rss_kib
    );
    // The largest flood is the two HTTP calls' 64 MiB of bodies.
    assert!(
        peak_rss < base.rss_kib + (64 + 48) * 1024,
        "peak RSS {peak_rss} KiB over base {} KiB",
        base.rss_kib
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_answers_are_internal_errors_naming_the_plugin() {
    let settings = "    settings: { reportCapacity: true }\n";
    let s = start_with(10, &hostile_wasm(), settings, "").await;
    let pid = driver_pid(&s.d);
    good_round(&s.d, "pvc-warm").await.unwrap();
    let sampler = Sampler::start(pid);
    let before = footprint(pid, &s.d);

    let creates = [
        ("huge-id", "16777216 bytes long"),
        ("control-id", "\\u{0}"),
        ("empty-id", "empty"),
        ("max-capacity", "over 2^63-1"),
        ("small-capacity", "1 bytes when 1048576 were required"),
        ("big-context", "100000 entries"),
        ("big-context-value", "over CSI's 4096"),
        ("control-context", "\\u{1b}"),
        ("bad-source", "content source volume id"),
    ];
    let (results, rounds) = during(&s.d, "garbage", async {
        let mut out = Vec::new();
        for (misdeed, says) in creates {
            out.push((misdeed, says, create(&s, misdeed).await));
        }
        out
    })
    .await;
    for (misdeed, says, result) in results {
        assert_garbage_refused(misdeed, result, says);
    }
    eprintln!("garbage creates: {rounds} good rounds");

    let mut client = s.d.client.clone();
    let snapshot = |name: &str| CreateSnapshotRequest {
        source_volume_id: "hostile:null".into(),
        name: name.into(),
        ..Default::default()
    };
    for (name, says) in [
        ("snap-max-size", "over 2^63-1"),
        ("snap-far-future", "year 9999"),
        ("snap-bad-source", "\\u{202e}"),
        ("snap-huge-id", "bytes long"),
    ] {
        let result = client.controller.create_snapshot(snapshot(name)).await;
        assert_garbage_refused(name, result, says);
    }
    let ok = client
        .controller
        .create_snapshot(snapshot("snap-ok"))
        .await
        .expect("a sane snapshot passes")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(
        (ok.snapshot_id.as_str(), ok.size_bytes),
        ("hostile:sn-snap-ok", 1 << 20)
    );

    // Group snapshots: every member checked, and the group must be the one
    // asked for, with one member per source.
    let group = |name: &str| CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: vec!["hostile:v1".into(), "hostile:v2".into()],
        ..Default::default()
    };
    for (name, says) in [
        ("group-other-group", "naming another group"),
        ("group-member-missing", "1 volumes for 2 asked"),
        ("group-unready-member", "not"),
    ] {
        let result = client
            .group_controller
            .create_volume_group_snapshot(group(name))
            .await;
        assert_garbage_refused(name, result, says);
    }
    let sane = client
        .group_controller
        .create_volume_group_snapshot(group("group-ok"))
        .await
        .expect("a sane group passes")
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(sane.group_snapshot_id, "hostile:gs-group-ok");
    assert!(sane
        .snapshots
        .iter()
        .all(|s| s.group_snapshot_id == "hostile:gs-group-ok"
            && s.snapshot_id.starts_with("hostile:")));
    let other = client
        .group_controller
        .get_volume_group_snapshot(GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "hostile:gs-group-ok".into(),
            ..Default::default()
        })
        .await;
    assert_garbage_refused("get answering another group", other, "another group");

    let list = |token: &str, max: i32| ListVolumesRequest {
        starting_token: token.into(),
        max_entries: max,
    };
    for (token, max, says) in [
        ("hostile:too-many", 5, "15 volumes when at most 5"),
        // No limit from the CO: the host still asks a bounded page.
        ("hostile:too-many", 0, "510 volumes when at most 500"),
        ("hostile:huge-token", 0, "next-page token"),
        ("hostile:control-token", 0, "\\u{a}"),
    ] {
        let result = client.controller.list_volumes(list(token, max)).await;
        assert_garbage_refused(token, result, says);
    }

    let mut capacity = GetCapacityRequest::default();
    capacity
        .parameters
        .insert("plugin".into(), "hostile".into());
    capacity.parameters.insert("answer".into(), "max".into());
    let result = client.controller.get_capacity(capacity).await;
    assert_garbage_refused("capacity", result, "over 2^63-1");

    let stats = |id: &str| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: s.hostile_root.path().display().to_string(),
        ..Default::default()
    };
    let result = client
        .node
        .node_get_volume_stats(stats("hostile:stats-max"))
        .await;
    assert_garbage_refused("stats-max", result, "used bytes");
    let sick = client
        .node
        .node_get_volume_stats(stats("hostile:stats-big-message"))
        .await
        .expect("a long condition message is cut, not refused")
        .into_inner()
        .volume_condition
        .unwrap();
    assert!(sick.abnormal);
    assert!(
        sick.message.starts_with("sick\\nFORGED sss"),
        "{}",
        &sick.message[..40]
    );
    assert!(
        sick.message.len() < 1200,
        "a {} byte condition message",
        sick.message.len()
    );

    assert_back_to("garbage", &s, pid, before, 256 << 10);
    still_serving(&s.d, "garbage").await;
    let (peak_fds, peak_rss) = sampler.peak();
    eprintln!("garbage: peak {peak_fds} fds, peak RSS {peak_rss} KiB");
}
