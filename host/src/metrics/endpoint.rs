//! The `/metrics` and `/healthz` HTTP endpoint, served by hyper (HTTP/1.1,
//! keep-alive as scrapers use it): GET and HEAD only (405 otherwise), 404
//! for any other path, the exposition format the scraper accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Format;

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics address, so that a taken port fails the start.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics: listening on {address}"))?;
    tracing::info!(%address, "serving /metrics and /healthz");
    Ok(listener)
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(respond(&req)) });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

/// The answer to one request (hyper leaves the body out for HEAD).
fn respond<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let format = negotiate(req.headers().get(ACCEPT));
    let mut r = Response::new(Full::new(Bytes::from(super::render(format))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// OpenMetrics when the scraper lists it (Prometheus does, first), else
/// the Prometheus text format that every scraper reads.
fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let wants_openmetrics = accept.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    });
    if wants_openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one raw request and reads the whole answer (the request
    /// closes the connection).
    async fn ask(address: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .expect("the server answers and closes")
            .unwrap();
        answer
    }

    async fn server() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        address
    }

    fn request(method: &str, path: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn methods_paths_and_formats() {
        super::super::http_request("endpoint-test", "200");
        let address = server().await;

        let health = ask(address, &request("GET", "/healthz", "")).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

        let m = ask(address, &request("GET", "/metrics", "")).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(
            m.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{m}"
        );
        assert!(m.contains("wasmcsi_http_requests_total{"), "{m}");

        let accept =
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
        let om = ask(address, &request("GET", "/metrics", accept)).await;
        assert!(
            om.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");

        let head = ask(address, &request("HEAD", "/metrics", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

        for method in ["POST", "PUT", "DELETE"] {
            let r = ask(
                address,
                &request(method, "/metrics", "Content-Length: 0\r\n"),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 405"), "{method}: {r}");
            assert!(r.contains("allow: GET, HEAD"), "{method}: {r}");
        }
        let r = ask(address, &request("GET", "/metrics/extra", "")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = ask(address, &request("GET", "/", "")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }

    #[tokio::test]
    async fn a_request_sent_in_pieces_is_answered() {
        let address = server().await;
        let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
        for piece in [
            "GET /hea",
            "lthz HTTP/1.1\r\nHo",
            "st: x\r\nConnection: close\r\n\r\n",
        ] {
            s.write_all(piece.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[test]
    fn openmetrics_only_when_accepted() {
        let f = |v: &'static str| negotiate(Some(&HeaderValue::from_static(v)));
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(f("*/*"), Format::Prometheus);
        assert_eq!(f("text/plain;version=0.0.4"), Format::Prometheus);
        assert_eq!(
            f("application/openmetrics-text;version=1.0.0;q=0.9,*/*;q=0.1"),
            Format::OpenMetrics
        );
        assert_eq!(f("application/openmetrics-text;q=0"), Format::Prometheus);
    }
}
