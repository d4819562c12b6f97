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
    let mut command = Command::new(program);
    command.args(args);
    output_within(program, command).await
}

/// Runs a prepared command (no stdin, killed if dropped) within the tools'
/// time bound.
async fn output_within(
    program: &str,
    mut command: Command,
) -> Result<std::process::Output, CapError> {
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(TOOL_TIMEOUT, command.output()).await {
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

/// The name under which a tool run by [`run_on_fd`] reaches its file.
pub const FD_ARG: &str = "/proc/self/fd/3";

/// Runs a tool on one file the host has open: the descriptor becomes the
/// tool's fd 3, and `args` name it as [`FD_ARG`]. The tool works on that
/// very file; no name is looked up again.
pub async fn run_on_fd(
    program: &str,
    args: &[&str],
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<std::process::Output, CapError> {
    use std::os::fd::AsRawFd;
    tracing::debug!(program, ?args, "running tool on a descriptor");
    let raw = fd.as_raw_fd();
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if raw == 3 {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    output_within(program, command).await
}

/// [`run_on_fd`], and the tool's stdout when it exits 0.
pub async fn run_on_fd_ok(
    program: &str,
    args: &[&str],
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<String, CapError> {
    let output = run_on_fd(program, args, fd).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failure(program, args, &output))
    }
}
