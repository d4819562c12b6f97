//! One conversation with XMS for one CSI call: log in, send requests with
//! the token, move to the next server when one cannot be reached, log in
//! again once when the token expired (401), retry 5xx/429 a bounded number
//! of times with backoff, and never run past the call's budget.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{fail, Error, ErrorCode, Result};
use crate::host::{log, Host};
use crate::model::{decode, Token};
use crate::params::{Credentials, Timing};
use crate::wasmcsi::plugin::log::Level;
use wasmcsi_plugin_sdk::http::Request;

pub struct Client<'h> {
    host: &'h dyn Host,
    servers: Vec<String>,
    /// The server that answered last; tried first.
    current: usize,
    credentials: Credentials,
    token: Option<String>,
    pub timing: Timing,
    started: Instant,
    /// The host's time left for the call when it started.
    host_left: Duration,
}

/// An XMS answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The error message XMS gave, if any.
    pub fn message(&self) -> String {
        match self.body.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => self.body.to_string(),
        }
    }
}

fn is_transport(e: &Error) -> bool {
    matches!(e.code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
}

/// What a failed call is given past its budget to undo what it made.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(5);

impl<'h> Client<'h> {
    /// `timing.call_budget` is bounded by the time the host leaves the
    /// call, less room to undo a failure (a third of it, at most the
    /// grace): past the host's deadline the call is ended, not answered.
    pub fn new(
        host: &'h dyn Host,
        servers: Vec<String>,
        credentials: Credentials,
        mut timing: Timing,
    ) -> Client<'h> {
        let host_left = host.time_left();
        let undo = (host_left / 3).min(CLEANUP_GRACE);
        timing.call_budget = timing.call_budget.min(host_left.saturating_sub(undo));
        Client {
            host_left,
            started: host.now(),
            host,
            servers,
            current: 0,
            credentials,
            token: None,
            timing,
        }
    }

    /// Time left of the call's budget.
    pub fn remaining(&self) -> Duration {
        self.timing
            .call_budget
            .saturating_sub(self.host.now().duration_since(self.started))
    }

    pub fn out_of_time(&self, doing: &str) -> Error {
        fail(
            ErrorCode::DeadlineExceeded,
            format!(
                "{doing}: XMS did not finish within the call budget of {:?} (setting \
                 callBudgetSeconds, bounded by the call's deadline)",
                self.timing.call_budget
            ),
        )
    }

    /// Extends the budget by `extra` so that a failed call can still undo
    /// what it made, never past the host's end of the call.
    pub fn grace(&mut self, extra: Duration) {
        let spent = self.host.now().duration_since(self.started);
        self.timing.call_budget = (self.timing.call_budget.max(spent) + extra).min(self.host_left);
    }

    /// Sleeps `d` unless that would run past the budget.
    pub fn pause(&self, d: Duration, doing: &str) -> Result<()> {
        if self.remaining() <= d {
            return Err(self.out_of_time(doing));
        }
        self.host.sleep(d);
        Ok(())
    }

    /// One request, tried on each server in turn until one answers.
    fn send_anywhere(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let mut failures = vec![];
        for i in 0..self.servers.len() {
            let idx = (self.current + i) % self.servers.len();
            let url = format!("{}{path}", self.servers[idx]);
            let mut headers = vec![("accept".to_string(), "application/json".to_string())];
            if body.is_some() {
                headers.push(("content-type".into(), "application/json".into()));
            }
            if let Some(t) = &self.token {
                headers.push(("Xms-Auth-Token".into(), t.clone()));
            }
            let remaining = self.remaining();
            if remaining.is_zero() {
                return Err(self.out_of_time(&format!("{method} {path}")));
            }
            let timeout = self.timing.request_timeout.min(remaining);
            let req = Request {
                method: method.to_string(),
                url,
                headers,
                body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
                timeout: Some(timeout),
            };
            match self.host.send(req) {
                Ok(resp) => {
                    if idx != self.current {
                        log(
                            self.host,
                            Level::Warn,
                            "XMS server failed over",
                            &[("server", &self.servers[idx])],
                        );
                    }
                    self.current = idx;
                    let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                    return Ok(Answer {
                        status: resp.status,
                        body,
                    });
                }
                // A request cut short by the budget itself is the call out
                // of time, not the server out of reach.
                Err(e) if is_transport(&e) && self.remaining().is_zero() => {
                    return Err(self.out_of_time(&format!("{method} {path}")));
                }
                Err(e) if is_transport(&e) => {
                    log(
                        self.host,
                        Level::Warn,
                        "XMS server unreachable, trying the next",
                        &[("server", &self.servers[idx]), ("error", &e.message)],
                    );
                    failures.push(format!("{}: {}", self.servers[idx], e.message));
                }
                Err(e) => return Err(e),
            }
        }
        Err(fail(
            ErrorCode::Unavailable,
            format!(
                "no XMS server answered {method} {path}: {}",
                failures.join("; ")
            ),
        ))
    }

    /// POST /v1/auth/tokens (CreateToken).
    fn login(&mut self) -> Result<()> {
        self.token = None;
        let body = serde_json::json!({ "auth": { "identity": { "password": { "user": {
            "name": self.credentials.user, "password": self.credentials.password,
        }}}}});
        for attempt in 1..=self.timing.attempts {
            let a = self.send_anywhere("POST", "/v1/auth/tokens", Some(&body))?;
            match a.status {
                200 | 201 => {
                    let mut body = a.body;
                    let token: Token = decode(&mut body, "token", "logging in to XMS")?;
                    if token.uuid.is_empty() {
                        return Err(fail(
                            ErrorCode::Internal,
                            "XMS CreateToken answered with an empty token.uuid",
                        ));
                    }
                    self.token = Some(token.uuid);
                    return Ok(());
                }
                401 | 403 => {
                    return Err(fail(
                        ErrorCode::PermissionDenied,
                        format!(
                            "XMS refused the credentials of user {:?}: {}",
                            self.credentials.user,
                            a.message()
                        ),
                    ))
                }
                s if retryable(s) && attempt < self.timing.attempts => {
                    self.backoff(attempt, "logging in to XMS")?
                }
                s => return Err(status_error(s, &a, "logging in to XMS")),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn backoff(&self, attempt: u32, doing: &str) -> Result<()> {
        let d = self.timing.backoff * 2u32.saturating_pow(attempt - 1);
        self.pause(d.min(Duration::from_secs(5)), doing)
    }

    /// A request with the token: re-login once on 401, retries on 5xx/429.
    /// Any other status is the caller's to judge.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        if self.token.is_none() {
            self.login()?;
        }
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let a = self.send_anywhere(method, path, body)?;
            match a.status {
                401 if !relogged => {
                    log(
                        self.host,
                        Level::Info,
                        "XMS token expired, logging in again",
                        &[],
                    );
                    relogged = true;
                    attempt -= 1;
                    self.login()?;
                }
                401 => {
                    return Err(fail(
                        ErrorCode::PermissionDenied,
                        format!("{method} {path}: XMS keeps answering 401"),
                    ))
                }
                s if retryable(s) && attempt < self.timing.attempts => {
                    log(
                        self.host,
                        Level::Warn,
                        "XMS failed, retrying",
                        &[
                            ("request", &format!("{method} {path}")),
                            ("status", &s.to_string()),
                        ],
                    );
                    self.backoff(attempt, &format!("{method} {path}"))?;
                }
                _ => return Ok(a),
            }
        }
    }
}

fn retryable(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// An unexpected XMS status as a CSI error.
pub fn status_error(status: u16, a: &Answer, doing: &str) -> Error {
    let code = match status {
        400 => ErrorCode::InvalidArgument,
        401 | 403 => ErrorCode::PermissionDenied,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Aborted,
        429 => ErrorCode::Unavailable,
        s if s >= 500 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    fail(
        code,
        format!("{doing}: XMS answered {status}: {}", a.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcsi_plugin_sdk::fake::Fake;

    fn timing(call_budget: Duration) -> Timing {
        Timing {
            poll_interval: Duration::from_millis(500),
            call_budget,
            request_timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }

    fn credentials() -> Credentials {
        Credentials {
            user: "admin".into(),
            password: "admin".into(),
        }
    }

    /// What one request to a single server answers, through the fake's
    /// network, within a call budget of 2 s.
    fn one_request(fake: &Fake) -> Error {
        let mut client = Client::new(
            fake,
            vec!["http://127.0.0.1:1".into()],
            credentials(),
            timing(Duration::from_secs(2)),
        );
        client.send_anywhere("GET", "/v1/pools", None).unwrap_err()
    }

    /// A request whose timeout the budget cut, timing out: the call is out
    /// of time (DEADLINE_EXCEEDED), not the array out of reach.
    #[test]
    fn a_request_cut_short_by_the_budget_is_out_of_time() {
        let fake = Fake::new("/nonexistent", "xfs");
        fake.st().clock = Some(Instant::now());
        fake.st().http = Some(Box::new(|req| {
            let took = req.timeout.expect("every request has a timeout");
            (
                took,
                Err(fail(ErrorCode::DeadlineExceeded, "no answer in time")),
            )
        }));
        let err = one_request(&fake);
        assert_eq!(err.code, ErrorCode::DeadlineExceeded, "{err:?}");
        assert!(err.message.contains("call budget"), "{err:?}");
        // The array really out of reach, with time left: UNAVAILABLE.
        fake.st().http = Some(Box::new(|_| {
            (
                Duration::from_millis(5),
                Err(fail(ErrorCode::Unavailable, "connection refused")),
            )
        }));
        let err = one_request(&fake);
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    }
}
