//! Runs the node's storage tools (mkfs, losetup, mount, btrfs, ...) with a
//! bound on time and a readable error carrying the tool's own words.

use std::time::Duration;

use tokio::process::Command;

use super::CapError;

/// How long one tool may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `program args…`; returns stdout on exit 0.
pub async fn run(program: &str, args: &[&str]) -> Result<String, CapError> {
    let output = run_status(program, args).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failure(program, args, &output))
    }
}

/// Runs and returns the raw output whatever the exit status.
pub async fn run_status(program: &str, args: &[&str]) -> Result<std::process::Output, CapError> {
    tracing::debug!(program, ?args, "running tool");
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_TIMEOUT, child).await {
        Err(_) => Err(CapError::new(
            super::ErrorCode::DeadlineExceeded,
            format!("{program} did not finish within {TOOL_TIMEOUT:?}"),
        )),
        Ok(Err(e)) => Err(CapError::internal(format!(
            "cannot run {program}: {e} (is it installed on the node?)"
        ))),
        Ok(Ok(output)) => Ok(output),
    }
}

/// The error for a tool that exited non-zero.
pub fn failure(program: &str, args: &[&str], output: &std::process::Output) -> CapError {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    CapError::internal(format!(
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        said.trim().chars().take(600).collect::<String>()
    ))
}
