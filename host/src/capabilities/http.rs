//! The `http` capability: outbound HTTP(S) only to granted origins.
//! Redirects are not followed by the host: the plugin sees the 3xx and any
//! request it makes to the new location is checked like every other.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{CallCaps, CapError, CapResult};
use crate::config::{HttpGrant, Origin};
use crate::wit::wasmcsi::plugin::http::{Host, Request, Response};
use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// Response bodies larger than this fail the request.
const MAX_RESPONSE_BYTES: usize = 8 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
            .connect_timeout(Duration::from_secs(5));
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

    fn check(&self, url: &str) -> Result<reqwest::Url, CapError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| CapError::invalid(format!("URL {url:?}: {e}")))?;
        let origin =
            Origin::of(&parsed).map_err(|e| CapError::invalid(format!("URL {url:?}: {e}")))?;
        if self.origins.contains(&origin) {
            Ok(parsed)
        } else {
            Err(CapError::denied(format!(
                "{origin} is not an allowed origin"
            )))
        }
    }

    async fn send(&self, req: Request) -> Result<Response, CapError> {
        let url = self.check(&req.url)?;
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| CapError::invalid(format!("HTTP method {:?}", req.method)))?;
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(DEFAULT_TIMEOUT);
        let mut builder = self
            .client
            .request(method, url)
            .timeout(timeout)
            .body(req.body);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut resp = builder.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(CapError::new(
                    ErrorCode::ResourceExhausted,
                    format!("response body exceeds {MAX_RESPONSE_BYTES} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn transport_error(e: reqwest::Error) -> CapError {
    let code = if e.is_timeout() {
        ErrorCode::DeadlineExceeded
    } else if e.is_connect() || e.is_request() {
        ErrorCode::Unavailable
    } else {
        ErrorCode::Internal
    };
    // reqwest's Display omits the cause; the chain says why.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    CapError::new(code, message)
}

impl Host for CallCaps {
    async fn send(&mut self, req: Request) -> CapResult<Response> {
        let http = self
            .grants
            .http
            .as_ref()
            .ok_or_else(|| CapError::not_granted("http", &self.grants.plugin))?;
        let result = http.send(req).await;
        let status = match &result {
            Ok(r) => r.status.to_string(),
            Err(e) => format!("{:?}", e.code).to_lowercase(),
        };
        crate::metrics::http_request(&self.grants.plugin, &status);
        Ok(result?)
    }
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
        assert!(c.check("http://127.0.0.1:8056/v1/auth/tokens").is_ok());
        assert!(c.check("https://XMS.example:443/v1").is_ok());
        assert!(c.check("http://127.0.0.1:8057/v1").is_err());
        assert!(c.check("https://127.0.0.1:8056/v1").is_err());
        assert!(c.check("http://xms.example/v1").is_err());
        assert!(c.check("file:///etc/passwd").is_err());
        assert!(c.check("http://127.0.0.1:8056@evil.example/").is_err());
    }

    #[test]
    fn origins_have_no_path() {
        assert!(Origin::parse("http://h:1/").is_ok());
        assert!(Origin::parse("http://h:1/v1").is_err());
        assert!(Origin::parse("ftp://h").is_err());
    }
}
