//! The `http` capability: a plugin's outbound HTTP(S) is standard
//! `wasi:http/outgoing-handler`, and every request it makes reaches the
//! network only through `send_request` below, the host's send hook (as
//! Spin enforces `allowed_outbound_hosts`): only to granted origins, with
//! the grant's TLS settings, bounded in time by the call's deadline and in
//! size both ways. Bodies are whole in the host's memory (8 MiB at most)
//! before they move on: a plugin sees a complete answer or an error code. Redirects are not followed by the host: the plugin sees
//! the 3xx and any request it makes to the new location is checked like
//! every other.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub mod origin;

use std::path::PathBuf;

use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime_wasi_http::WasiHttpView;

pub use self::origin::Origin;
use crate::config::env;

/// The config's `capabilities.http`: the origins a plugin may reach.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGrant {
    /// Allowed origins (`scheme://host[:port]`); an entry may hold several
    /// separated by commas, as an environment variable often does.
    pub origins: Vec<String>,
    /// PEM file of CA certificates trusted for https origins, in addition
    /// to the public web roots (arrays often have a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. For labs only; logged at every start.
    #[serde(default, deserialize_with = "env::scalar")]
    pub insecure_skip_tls_verify: bool,
}

impl HttpGrant {
    /// Checks the grant as the config is loaded.
    pub fn validate(&self) -> Result<()> {
        for origin in &self.origins {
            Origin::parse(origin)
                .with_context(|| format!("capabilities.http.origins entry {origin:?}"))?;
        }
        Ok(())
    }
}

/// Links wasi:http (wasmtime's), every request sent through the embedder's
/// hooks: a `CallHttp` of this unit.
pub fn add_to_linker<T: WasiHttpView + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// A request body larger than this is refused before anything is sent.
const MAX_REQUEST_BYTES: usize = 8 << 20;
/// A response body larger than this fails the request.
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// A request's whole exchange, unless the call ends sooner.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one call may have in flight at once (wasi:http lets a plugin
/// start many before waiting for any); more wait their turn.
const IN_FLIGHT_PER_CALL: usize = 4;
/// Body bytes, both ways, one call may make the host hold in all: a
/// response stays in the host until the plugin reads it, so without this
/// a call could park many full bodies.
const BODY_BYTES_PER_CALL: usize = 32 << 20;
/// Failed requests of one call the host logs; a plugin retrying in a loop
/// must not flood the driver's log past its own log budget.
const LOGGED_FAILURES_PER_CALL: usize = 8;

/// What a plugin's `http` grant allows, built once per plugin.
pub struct HttpCap {
    origins: Vec<Origin>,
    client: reqwest::Client,
}

impl HttpCap {
    pub fn new(grant: &HttpGrant) -> Result<HttpCap> {
        let origins = grant
            .origins
            .iter()
            .map(|o| Origin::parse(o).with_context(|| format!("origin {o:?}")))
            .collect::<Result<_>>()?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = &grant.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading caFile {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("caFile {} is not a PEM certificate bundle", path.display())
            })?;
            if certs.is_empty() {
                bail!("caFile {} holds no certificate", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if grant.insecure_skip_tls_verify {
            tracing::warn!("http: insecureSkipTlsVerify is on: TLS certificates are not checked");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(HttpCap { origins, client })
    }

    /// The request's URL when its origin is granted.
    fn check(&self, uri: &http::Uri) -> Result<reqwest::Url, Refused> {
        let url = reqwest::Url::parse(&uri.to_string())
            .map_err(|e| Refused(HttpError::HttpRequestUriInvalid, format!("URL {uri}: {e}")))?;
        let origin = Origin::of(&url)
            .map_err(|e| Refused(HttpError::HttpRequestUriInvalid, format!("URL {uri}: {e}")))?;
        if self.origins.contains(&origin) {
            Ok(url)
        } else {
            Err(Refused(
                HttpError::HttpRequestDenied,
                format!("{origin} is not an allowed origin"),
            ))
        }
    }

    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        call: &CallBounds,
    ) -> Result<http::Response<WasiBody>, Refused> {
        let ends = call.ends;
        let url = self.check(request.uri())?;
        let left = ends.saturating_duration_since(Instant::now());
        let whole = DEFAULT_TIMEOUT.min(left);
        if whole.is_zero() {
            return Err(Refused(
                HttpError::ConnectionTimeout,
                "the call has no time left".into(),
            ));
        }
        let options = options.unwrap_or_default();
        let (parts, body) = request.into_parts();
        let body = collect_limited(body, &call.body_bytes).await?;
        let mut headers = parts.headers;
        // reqwest names the host from the URL; a plugin cannot say another.
        headers.remove(http::header::HOST);
        let sending = self
            .client
            .request(parts.method, url)
            .headers(headers)
            .timeout(whole)
            .body(body)
            .send();
        // Until the response's head, counted from now (connecting
        // included): the plugin's first-byte timeout, else its connect
        // timeout, within the whole.
        let head_timeout = options
            .first_byte_timeout
            .or(options.connect_timeout)
            .unwrap_or(whole)
            .min(whole);
        let resp = tokio::time::timeout(head_timeout, sending)
            .await
            .map_err(|_| {
                Refused(
                    HttpError::HttpResponseTimeout,
                    format!("no response within {head_timeout:?}"),
                )
            })?
            .map_err(transport_error)?;
        // The whole body is read before the plugin sees the head, so a body
        // too big or too slow fails with its code: a failure inside the body
        // stream would reach the guest without one.
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(Refused(
                HttpError::HttpResponseBodySize(resp.content_length()),
                format!("response body exceeds {MAX_RESPONSE_BYTES} bytes"),
            ));
        }
        let mut builder = http::Response::builder().status(resp.status());
        if let Some(h) = builder.headers_mut() {
            *h = resp.headers().clone();
        }
        let between = options.between_bytes_timeout.unwrap_or(whole);
        let body = read_limited(resp, between, &call.body_bytes).await?;
        builder
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| Refused(HttpError::InternalError(Some(e.to_string())), e.to_string()))
    }
}

/// Why a request was not sent or answered: the code the plugin sees, and
/// the reason the host logs (wasi:http's error codes carry none).
struct Refused(HttpError, String);

async fn collect_limited(mut body: WasiBody, budget: &ByteBudget) -> Result<Bytes, Refused> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refused(e, "reading the request body".into()))?;
        if let Ok(data) = frame.into_data() {
            let too_big = || HttpError::HttpRequestBodySize(None);
            append(
                &mut buf,
                &data,
                MAX_REQUEST_BYTES,
                too_big,
                budget,
                "request",
            )?;
        }
    }
    Ok(buf.into())
}

/// The response body, failing past `MAX_RESPONSE_BYTES` or when the
/// server pauses longer than `between`.
async fn read_limited(
    mut resp: reqwest::Response,
    between: Duration,
    budget: &ByteBudget,
) -> Result<Bytes, Refused> {
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(between, resp.chunk())
            .await
            .map_err(|_| {
                Refused(
                    HttpError::HttpResponseTimeout,
                    format!("the response body paused over {between:?}"),
                )
            })?
            .map_err(transport_error)?;
        let Some(chunk) = chunk else {
            return Ok(body.into());
        };
        let too_big = || HttpError::HttpResponseBodySize(None);
        append(
            &mut body,
            &chunk,
            MAX_RESPONSE_BYTES,
            too_big,
            budget,
            "response",
        )?;
    }
}

/// Adds a chunk to a body, within the body's own limit and the call's
/// budget; `too_big` is the code either refusal carries.
fn append(
    body: &mut Vec<u8>,
    chunk: &[u8],
    limit: usize,
    too_big: fn() -> HttpError,
    budget: &ByteBudget,
    which: &str,
) -> Result<(), Refused> {
    if body.len() + chunk.len() > limit {
        return Err(Refused(
            too_big(),
            format!("{which} body exceeds {limit} bytes"),
        ));
    }
    budget.take(chunk.len(), too_big())?;
    body.extend_from_slice(chunk);
    Ok(())
}

fn transport_error(e: reqwest::Error) -> Refused {
    // reqwest's Display omits the cause; the chain says why.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    let code = if e.is_timeout() {
        HttpError::HttpResponseTimeout
    } else if e.is_connect() && message.contains("certificate") {
        HttpError::TlsCertificateError
    } else if e.is_connect() {
        HttpError::ConnectionRefused
    } else if e.is_request() {
        // Sent, but the server hung up before answering.
        HttpError::ConnectionTerminated
    } else if e.is_body() {
        HttpError::HttpResponseIncomplete
    } else {
        HttpError::InternalError(Some(message.clone()))
    };
    Refused(code, message)
}

/// Body bytes a call may still make the host hold; taken, never given
/// back (a call is short).
struct ByteBudget(AtomicUsize);

impl ByteBudget {
    fn take(&self, n: usize, code: HttpError) -> Result<(), Refused> {
        let taken = self.0.fetch_add(n, Ordering::Relaxed) + n;
        if taken > BODY_BYTES_PER_CALL {
            return Err(Refused(
                code,
                format!("the call's HTTP bodies exceed {BODY_BYTES_PER_CALL} bytes in all"),
            ));
        }
        Ok(())
    }
}

/// What bounds one call's requests together.
struct CallBounds {
    ends: Instant,
    in_flight: Arc<Semaphore>,
    body_bytes: ByteBudget,
    failures: AtomicUsize,
}

/// The wasi:http hooks of one call.
pub struct CallHttp {
    plugin: Arc<str>,
    cap: Option<Arc<HttpCap>>,
    bounds: Arc<CallBounds>,
}

impl CallHttp {
    pub fn new(plugin: &str, cap: Option<Arc<HttpCap>>, ends: Instant) -> CallHttp {
        CallHttp {
            plugin: plugin.into(),
            cap,
            bounds: Arc::new(CallBounds {
                ends,
                in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_CALL)),
                body_bytes: ByteBudget(AtomicUsize::new(0)),
                failures: AtomicUsize::new(0),
            }),
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for CallHttp {
    /// The host names the `Host` from the URL itself (see `send`).
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let plugin = self.plugin.clone();
        let cap = self.cap.clone();
        let bounds = self.bounds.clone();
        let uri = request.uri().clone();
        Box::new(async move {
            let result = match cap {
                Some(cap) => {
                    // Closed never: the semaphore lives as long as `bounds`.
                    let _turn = bounds.in_flight.clone().acquire_owned().await;
                    cap.send(request, options, &bounds).await
                }
                None => Err(Refused(
                    HttpError::HttpRequestDenied,
                    format!("capability http is not granted to plugin {plugin}"),
                )),
            };
            let label = match &result {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(Refused(code, _)) => failure_label(code),
            };
            crate::metrics::http_request(&plugin, &label);
            match result {
                Ok(resp) => {
                    let done: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async { Ok(()) });
                    Ok((resp, Box::new(done) as Box<dyn Future<Output = _> + Send>))
                }
                Err(Refused(code, reason)) => {
                    let n = bounds.failures.fetch_add(1, Ordering::Relaxed);
                    if n < LOGGED_FAILURES_PER_CALL {
                        tracing::warn!(plugin = %plugin, url = %uri, %reason, "http: request failed");
                    } else if n == LOGGED_FAILURES_PER_CALL {
                        tracing::warn!(plugin = %plugin, "http: more requests of this call failed; not logged");
                    }
                    Err(code)
                }
            }
        })
    }
}

/// The metrics label of a request that got no response: wasi:http's code.
fn failure_label(code: &HttpError) -> String {
    let debug = format!("{code:?}");
    let name = debug.split(['(', ' ', '{']).next().unwrap_or("error");
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(origins: &[&str]) -> HttpGrant {
        HttpGrant {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            insecure_skip_tls_verify: false,
        }
    }

    fn cap(origins: &[&str]) -> HttpCap {
        HttpCap::new(&grant(origins)).unwrap()
    }

    fn allowed(c: &HttpCap, url: &str) -> bool {
        match url.parse::<http::Uri>() {
            Ok(uri) => c.check(&uri).is_ok(),
            Err(_) => false,
        }
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        for path in [bad, dir.path().join("missing.pem")] {
            let mut g = grant(&["https://xms.example"]);
            g.ca_file = Some(path.clone());
            let err = format!("{:#}", HttpCap::new(&g).err().expect("refused"));
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn only_granted_origins_pass() {
        let c = cap(&["http://127.0.0.1:8056", "https://xms.example"]);
        assert!(allowed(&c, "http://127.0.0.1:8056/v1/auth/tokens"));
        assert!(allowed(&c, "https://XMS.example:443/v1"));
        assert!(!allowed(&c, "http://127.0.0.1:8057/v1"));
        assert!(!allowed(&c, "https://127.0.0.1:8056/v1"));
        assert!(!allowed(&c, "http://xms.example/v1"));
        assert!(!allowed(&c, "file:///etc/passwd"));
        assert!(!allowed(&c, "http://127.0.0.1:8056@evil.example/"));
    }

    #[test]
    fn origins_have_no_path() {
        assert!(Origin::parse("http://h:1/").is_ok());
        assert!(Origin::parse("http://h:1/v1").is_err());
        assert!(Origin::parse("ftp://h").is_err());
    }

    #[test]
    fn a_calls_bodies_share_one_budget() {
        let budget = ByteBudget(AtomicUsize::new(0));
        for _ in 0..4 {
            assert!(budget
                .take(MAX_RESPONSE_BYTES, HttpError::HttpRequestDenied)
                .is_ok());
        }
        let Err(Refused(code, why)) = budget.take(1, HttpError::HttpResponseBodySize(None)) else {
            panic!("a fifth full body fitted");
        };
        assert!(
            matches!(code, HttpError::HttpResponseBodySize(None)),
            "{code:?}"
        );
        assert!(why.contains("in all"), "{why}");
    }

    #[test]
    fn failures_are_labelled_by_code() {
        assert_eq!(
            failure_label(&HttpError::HttpRequestDenied),
            "httprequestdenied"
        );
        assert_eq!(
            failure_label(&HttpError::HttpRequestBodySize(None)),
            "httprequestbodysize"
        );
    }
}
