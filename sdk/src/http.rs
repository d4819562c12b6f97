//! Outbound HTTP for plugins over the standard `wasi:http/outgoing-handler`:
//! one blocking request, its body and the whole response in memory. The
//! host sends it only to the plugin's granted origins; any other wasi:http
//! client (`wstd`, `waki`, ...) would reach the network the same way.

use std::time::Duration;

use crate::error::{fail, Context, Error, ErrorCode, Result};

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Absolute: `http://` or `https://`, a host, an optional port and path.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Until the response's head arrives, and between its body's chunks;
    /// the call's own deadline bounds it anyway.
    pub timeout: Option<Duration>,
}

/// The answer, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A URL's parts as wasi:http takes them.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    https: bool,
    authority: &'a str,
    path_with_query: String,
}

fn split_url(url: &str) -> Result<Target<'_>> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!("URL {url:?}: not http:// or https://"),
        ));
    };
    let slash = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() {
        return Err(fail(
            ErrorCode::InvalidArgument,
            format!("URL {url:?}: no host"),
        ));
    }
    Ok(Target {
        https,
        authority,
        path_with_query: match path.strip_prefix('?') {
            Some(_) => format!("/{path}"),
            None if path.is_empty() => "/".into(),
            None => path.into(),
        },
    })
}

/// Natively (tests) there is no host: use a `Host` fake instead.
pub use wasi_client::send;

mod wasi_client {
    use super::*;
    use crate::bindings::wasi::clocks::monotonic_clock;
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types::{
        http_error_code, ErrorCode as HttpError, Fields, IncomingBody, Method, OutgoingBody,
        OutgoingRequest, Scheme,
    };
    use crate::bindings::wasi::io::poll::{poll, Pollable};
    use crate::bindings::wasi::io::streams::StreamError;

    /// Largest write the output stream takes at once.
    const WRITE_CHUNK: usize = 4096;
    const READ_CHUNK: u64 = 64 << 10;

    /// Sends `req` and waits for the whole response.
    ///
    /// Every handle the request makes is gone when this returns: each
    /// resource is owned here and dropped (children before parents) or
    /// handed to the host, which deletes it. No `request-options` is
    /// passed: the host's `outgoing-handler.handle` only reads that
    /// resource and never deletes it, so each request would leave one
    /// handle held until the call ends (a long poll ran out of
    /// `limits.maxOpenHandles`). The timeout is kept here instead, with a
    /// clock pollable beside the response's.
    pub fn send(req: &Request) -> Result<Response> {
        let target = split_url(&req.url)?;
        let what = || format!("{} {}", req.method, req.url);
        let fields: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        let headers = Fields::from_list(&fields).map_err(|e| {
            fail(
                ErrorCode::InvalidArgument,
                format!("{}: headers: {e:?}", what()),
            )
        })?;
        let request = OutgoingRequest::new(headers);
        let refused = |part: &str| fail(ErrorCode::InvalidArgument, format!("{}: {part}", what()));
        request
            .set_method(&method(&req.method))
            .map_err(|_| refused("method"))?;
        let scheme = if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| refused("scheme"))?;
        request
            .set_authority(Some(target.authority))
            .map_err(|_| refused("host"))?;
        request
            .set_path_with_query(Some(&target.path_with_query))
            .map_err(|_| refused("path"))?;
        let body = request.body().map_err(|_| refused("body"))?;
        // Sent first, then the body streamed to it: the host reads the
        // body as the plugin writes it, so a body bigger than the stream's
        // buffer cannot wait for a send that has not started.
        let pending =
            outgoing_handler::handle(request, None).map_err(|e| http_error(&what(), e))?;
        let written = write_body(&body, &req.body);
        let finished = OutgoingBody::finish(body, None);
        let arrived = ready_within(&pending.subscribe(), req.timeout);
        if !arrived {
            // Dropping the future ends the host's request.
            drop(pending);
            return Err(timed_out(&what(), req.timeout));
        }
        let response = match pending.get() {
            Some(Ok(Ok(response))) => {
                written.context(what)?;
                finished.map_err(|e| http_error(&what(), e))?;
                response
            }
            // The host's refusal says more than the broken body stream.
            Some(Ok(Err(e))) => return Err(http_error(&what(), e)),
            Some(Err(())) | None => {
                return Err(fail(
                    ErrorCode::Internal,
                    format!("{}: no response", what()),
                ))
            }
        };
        let status = response.status();
        let headers = {
            let fields = response.headers();
            fields
                .entries()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        };
        let incoming = response
            .consume()
            .map_err(|_| fail(ErrorCode::Internal, format!("{}: no body", what())))?;
        let body = read_body(&incoming, req.timeout).context(what)?;
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Waits until `ready` is, at most `timeout`; whether it is. The
    /// clock's pollable is dropped before this returns.
    fn ready_within(ready: &Pollable, timeout: Option<Duration>) -> bool {
        let Some(timeout) = timeout else {
            ready.block();
            return true;
        };
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let timer = monotonic_clock::subscribe_duration(nanos);
        poll(&[ready, &timer]);
        ready.ready()
    }

    fn timed_out(what: &str, timeout: Option<Duration>) -> Error {
        let after = timeout.map(|t| format!(" ({t:?})")).unwrap_or_default();
        fail(
            ErrorCode::DeadlineExceeded,
            format!("{what}: no answer in time{after}"),
        )
    }

    fn method(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other(name.to_string()),
        }
    }

    fn write_body(body: &OutgoingBody, data: &[u8]) -> Result<()> {
        let stream = body
            .write()
            .map_err(|_| fail(ErrorCode::Internal, "request body stream"))?;
        for chunk in data.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).map_err(|e| {
                fail(
                    ErrorCode::Unavailable,
                    format!("writing the request body: {e:?}"),
                )
            })?;
        }
        Ok(())
    }

    /// The whole body; `timeout` bounds each wait for more of it.
    fn read_body(incoming: &IncomingBody, timeout: Option<Duration>) -> Result<Vec<u8>> {
        let stream = incoming
            .stream()
            .map_err(|_| fail(ErrorCode::Internal, "response body stream"))?;
        let mut body = Vec::new();
        loop {
            if !ready_within(&stream.subscribe(), timeout) {
                return Err(timed_out("reading the response body", timeout));
            }
            match stream.read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(body),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(match http_error_code(&e) {
                        Some(code) => http_error("reading the response body", code),
                        None => fail(
                            ErrorCode::Unavailable,
                            format!("reading the response body: {}", e.to_debug_string()),
                        ),
                    })
                }
            }
        }
    }

    fn http_error(what: &str, e: HttpError) -> Error {
        let why = match e {
            // The host says no more (its log names the origin).
            HttpError::HttpRequestDenied => {
                "refused by the host: not an allowed origin of this plugin \
                 (capabilities.http.origins)"
                    .to_string()
            }
            HttpError::TlsCertificateError => {
                "the server's TLS certificate was refused: an unknown CA (see \
                 capabilities.http.caFile) or not valid for the server's name; the \
                 driver's log says which"
                    .to_string()
            }
            HttpError::ConnectionRefused => "connection refused".to_string(),
            HttpError::ConnectionTerminated => "the server closed the connection".to_string(),
            HttpError::HttpResponseTimeout => "no answer in time".to_string(),
            ref other => format!("{other:?}"),
        };
        fail(code_of(&e), format!("{what}: {why}"))
    }

    /// The CSI code of a wasi:http failure: refused by the host's grant,
    /// out of time, unreachable, too big, or else internal.
    fn code_of(e: &HttpError) -> ErrorCode {
        match e {
            HttpError::HttpRequestDenied => ErrorCode::PermissionDenied,
            HttpError::DnsTimeout
            | HttpError::ConnectionTimeout
            | HttpError::ConnectionReadTimeout
            | HttpError::ConnectionWriteTimeout
            | HttpError::HttpResponseTimeout => ErrorCode::DeadlineExceeded,
            HttpError::DnsError(_)
            | HttpError::DestinationNotFound
            | HttpError::DestinationUnavailable
            | HttpError::DestinationIpUnroutable
            | HttpError::ConnectionRefused
            | HttpError::ConnectionTerminated
            | HttpError::ConnectionLimitReached
            | HttpError::TlsProtocolError
            | HttpError::TlsCertificateError
            | HttpError::TlsAlertReceived(_)
            | HttpError::HttpResponseIncomplete => ErrorCode::Unavailable,
            HttpError::HttpRequestBodySize(_) | HttpError::HttpResponseBodySize(_) => {
                ErrorCode::ResourceExhausted
            }
            HttpError::HttpRequestUriInvalid | HttpError::HttpRequestMethodInvalid => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_wasi_http_takes() {
        let t = split_url("https://xms.example:8056/v1/pools?limit=5").unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                authority: "xms.example:8056",
                path_with_query: "/v1/pools?limit=5".into()
            }
        );
        let t = split_url("http://127.0.0.1:1").unwrap();
        assert_eq!((t.https, t.authority), (false, "127.0.0.1:1"));
        assert_eq!(t.path_with_query, "/");
        let t = split_url("http://h?x=1").unwrap();
        assert_eq!((t.authority, t.path_with_query.as_str()), ("h", "/?x=1"));
        assert!(split_url("ftp://h/").is_err());
        assert!(split_url("http:///path").is_err());
    }
}
