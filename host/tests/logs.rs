//! The driver's text log, as a container runtime stores it (stderr to a
//! file), carries no terminal colour codes.

mod common;

use common::*;
use wasmcsi::proto::*;

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let d = TestDriver::start(Options::default()).await;
    d.client
        .clone()
        .identity
        .probe(ProbeRequest {})
        .await
        .expect("probe");
    let logs = d.logs();
    assert!(logs.contains("local-dir"), "the log says nothing: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in a log written to a file: {:?}",
        logs.lines().find(|l| l.contains('\u{1b}'))
    );
}
