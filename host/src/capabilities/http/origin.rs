//! An HTTP origin — scheme, host and port — as the `http` capability's
//! allow-list names it; parsed with the config, checked per request.

use anyhow::{bail, Context, Result};

/// scheme, host and port: what an allow-list entry and a request must share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Origin> {
        let url = reqwest::Url::parse(text).context("not a URL")?;
        if !url.path().trim_matches('/').is_empty() || url.query().is_some() {
            bail!("an origin is scheme://host[:port], without a path");
        }
        Origin::of(&url)
    }

    pub fn of(url: &reqwest::Url) -> Result<Origin> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            bail!("scheme must be http or https");
        }
        Ok(Origin {
            scheme: scheme.to_string(),
            host: url.host_str().context("no host")?.to_ascii_lowercase(),
            port: url.port_or_known_default().context("no port")?,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}
