//! StorageClass parameters, plugin settings and CSI secrets, parsed once
//! per call. Parameters win over settings of the same name; credentials
//! come from the secrets `user`/`password` (the deprecated parameters of
//! the same names still work and are logged as deprecated).

use std::time::Duration;

use crate::error::{invalid, precondition, Result};

pub const DEFAULT_PORT: u16 = 8056;

/// A value, trimmed; empty counts as absent.
pub use wasmcsi_plugin_sdk::get;

/// One XMS address as a base URL without a trailing slash:
/// `host`, `host:port` or a URL (default scheme http, default port 8056).
pub fn server_url(entry: &str) -> Result<String> {
    let entry = entry.trim().trim_end_matches('/');
    let (scheme, rest) = match entry.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((s, _)) => {
            return Err(invalid(format!(
                "xmsServers entry {entry:?}: scheme {s} is not http or https"
            )))
        }
        None => ("http", entry),
    };
    if rest.is_empty()
        || rest.contains('/')
        || rest.contains('@')
        || rest.contains(char::is_whitespace)
    {
        return Err(invalid(format!(
            "xmsServers entry {entry:?} must be host, host:port or scheme://host[:port]"
        )));
    }
    let has_port = match rest.rsplit_once(':') {
        Some((_, port)) if !rest.ends_with(']') => {
            port.parse::<u16>()
                .map_err(|_| invalid(format!("xmsServers entry {entry:?}: bad port {port:?}")))?;
            true
        }
        _ => false,
    };
    Ok(if has_port {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}:{DEFAULT_PORT}")
    })
}

/// The StorageClass parameters xsky-nfs reads (`user`/`password`: the
/// deprecated credentials).
pub const KNOWN: &[&str] = &[
    "mode",
    "shares",
    "xmsServers",
    "pool",
    "gatewayGroup",
    "clientGroupName",
    "mountOptions",
    "nfsVersion",
    "user",
    "password",
];

/// Keys the CO owns (`csi.storage.k8s.io/...`), never the plugin's.
const CO_PREFIX: &str = "csi.storage.k8s.io/";

/// A parameter xsky-nfs does not know (a typo, most likely) is
/// INVALID_ARGUMENT naming it, rather than silently ignored.
pub fn check_known(parameters: &[(String, String)]) -> Result<()> {
    let mut unknown: Vec<&str> = parameters
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !KNOWN.contains(k) && !k.starts_with(CO_PREFIX))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(invalid(format!(
        "unknown StorageClass parameter(s) {}: xsky-nfs knows {} (and the CO's {CO_PREFIX}*)",
        unknown
            .iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        KNOWN.join(", ")
    )))
}

pub fn servers(list: &str) -> Result<Vec<String>> {
    let out: Vec<String> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(server_url)
        .collect::<Result<_>>()?;
    if out.is_empty() {
        return Err(invalid("xmsServers lists no server"));
    }
    Ok(out)
}

/// A home share `VIP:/sdsfs/<folder>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct HomeShare {
    pub host: String,
    pub folder: String,
}

pub fn shares(list: &str) -> Result<Vec<HomeShare>> {
    let mut out = vec![];
    for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            invalid(format!(
                "shares entry {entry:?} must look like VIP:/sdsfs/<folder>/"
            ))
        };
        let (host, path) = entry.split_once(":/").ok_or_else(bad)?;
        let folder = path
            .strip_prefix("sdsfs/")
            .ok_or_else(bad)?
            .trim_end_matches('/');
        if host.is_empty() || folder.is_empty() || folder.contains('/') {
            return Err(bad());
        }
        out.push(HomeShare {
            host: host.to_string(),
            folder: folder.to_string(),
        });
    }
    if out.is_empty() {
        return Err(invalid(
            "the parameter shares is required (comma-separated VIP:/sdsfs/<folder>/)",
        ));
    }
    Ok(out)
}

#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Where the credentials came from, for the deprecation warning.
#[derive(Debug, PartialEq)]
pub enum CredentialSource {
    Secrets,
    DeprecatedParameters,
    Settings,
}

pub fn credentials(
    secrets: &[(String, String)],
    parameters: &[(String, String)],
    settings: &[(String, String)],
) -> Result<(Credentials, CredentialSource)> {
    let pick = |pairs: &[(String, String)]| match (get(pairs, "user"), get(pairs, "password")) {
        (Some(u), Some(p)) => Some(Credentials {
            user: u.to_string(),
            password: p.to_string(),
        }),
        _ => None,
    };
    if let Some(c) = pick(secrets) {
        return Ok((c, CredentialSource::Secrets));
    }
    if let Some(c) = pick(parameters) {
        return Ok((c, CredentialSource::DeprecatedParameters));
    }
    if let Some(c) = pick(settings) {
        return Ok((c, CredentialSource::Settings));
    }
    Err(precondition(
        "no XMS credentials: pass the CSI secrets user and password \
         (csi.storage.k8s.io/provisioner-secret-name and friends), and set the \
         plugin settings user and password for the calls that carry no secrets \
         (GetCapacity)",
    ))
}

/// How XMS conversations behave; from the plugin settings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Between two looks at work the array does after a 202.
    pub poll_interval: Duration,
    /// Bound of all XMS work in one call (waits, retries); keep it below
    /// the CO's timeout so the call can clean up and answer itself.
    pub call_budget: Duration,
    /// Per HTTP request.
    pub request_timeout: Duration,
    /// Attempts of one request on 5xx/429.
    pub attempts: u32,
    pub backoff: Duration,
}

impl Timing {
    pub fn from_settings(settings: &[(String, String)]) -> Result<Timing> {
        let num = |key: &str, default: u64| -> Result<u64> {
            match get(settings, key) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| invalid(format!("setting {key}={v:?} is not a number"))),
            }
        };
        Ok(Timing {
            poll_interval: Duration::from_millis(num("pollIntervalMs", 500)?.max(10)),
            call_budget: Duration::from_secs(num("callBudgetSeconds", 100)?.max(1)),
            request_timeout: Duration::from_millis(num("requestTimeoutMs", 10_000)?.max(100)),
            attempts: num("attempts", 4)?.clamp(1, 10) as u32,
            backoff: Duration::from_millis(num("backoffMs", 200)?),
        })
    }
}

/// NFS mount options for the volume context: `mountOptions` (comma
/// separated) plus `vers=<nfsVersion>` unless the options name a version.
pub fn mount_options(
    parameters: &[(String, String)],
    settings: &[(String, String)],
) -> Result<Vec<String>> {
    let pick = |k: &str| get(parameters, k).or_else(|| get(settings, k));
    let mut options: Vec<String> = pick("mountOptions")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    for o in &options {
        if o.starts_with('-') || o.contains(char::is_whitespace) {
            return Err(invalid(format!("mount option {o:?} is not valid")));
        }
    }
    let names_version = options
        .iter()
        .any(|o| o.starts_with("vers=") || o.starts_with("nfsvers="));
    if !names_version {
        let v = pick("nfsVersion").unwrap_or("4");
        if !matches!(v, "3" | "4" | "4.0" | "4.1" | "4.2") {
            return Err(invalid(format!(
                "nfsVersion {v:?} must be 3, 4, 4.0, 4.1 or 4.2"
            )));
        }
        options.insert(0, format!("vers={v}"));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_parameters_are_named() {
        let ok = kv(&[
            ("shares", "h:/sdsfs/a/"),
            ("mode", "folder"),
            ("csi.storage.k8s.io/fstype", "nfs"),
        ]);
        assert!(check_known(&ok).is_ok());
        let e =
            check_known(&kv(&[("mode", "folder"), ("shraes", "x"), ("Pool", "p")])).unwrap_err();
        assert!(e.message.contains("\"Pool\", \"shraes\""), "{}", e.message);
        assert!(e.message.contains("gatewayGroup"), "{}", e.message);
    }

    #[test]
    fn server_forms() {
        assert_eq!(server_url("10.0.0.1").unwrap(), "http://10.0.0.1:8056");
        assert_eq!(server_url("10.0.0.1:9000").unwrap(), "http://10.0.0.1:9000");
        assert_eq!(
            server_url("https://xms.example/").unwrap(),
            "https://xms.example:8056"
        );
        assert_eq!(
            server_url("https://xms.example:443").unwrap(),
            "https://xms.example:443"
        );
        assert!(server_url("ftp://x").is_err());
        assert!(server_url("a:b").is_err());
        assert!(server_url("h/path").is_err());
        assert_eq!(
            servers(" a, b:1 ,").unwrap(),
            vec!["http://a:8056", "http://b:1"]
        );
        assert!(servers(" , ").is_err());
    }

    #[test]
    fn share_forms() {
        let s = shares("10.0.0.9:/sdsfs/fs1/, 10.0.0.9:/sdsfs/fs2").unwrap();
        assert_eq!(
            s[0],
            HomeShare {
                host: "10.0.0.9".into(),
                folder: "fs1".into()
            }
        );
        assert_eq!(s[1].folder, "fs2");
        assert!(shares("10.0.0.9:/other/fs1/").is_err());
        assert!(shares("10.0.0.9:/sdsfs/a/b/").is_err());
        assert!(shares("").is_err());
    }

    #[test]
    fn credentials_prefer_secrets() {
        let s = kv(&[("user", "u1"), ("password", "p1")]);
        let p = kv(&[("user", "u2"), ("password", "p2")]);
        let (c, src) = credentials(&s, &p, &[]).unwrap();
        assert_eq!((c.user.as_str(), src), ("u1", CredentialSource::Secrets));
        let (c, src) = credentials(&[], &p, &[]).unwrap();
        assert_eq!(
            (c.user.as_str(), src),
            ("u2", CredentialSource::DeprecatedParameters)
        );
        assert!(credentials(&[], &kv(&[("user", "u")]), &[]).is_err());
        // No secrets (GetCapacity): the settings'.
        let settings = kv(&[("user", "u3"), ("password", "p3")]);
        let (c, src) = credentials(&[], &[], &settings).unwrap();
        assert_eq!((c.user.as_str(), src), ("u3", CredentialSource::Settings));
        // Settings left empty (an unset ${XMS_PASSWORD:-}) are no credentials.
        let empty = kv(&[("user", "u3"), ("password", "")]);
        assert!(credentials(&[], &[], &empty).is_err());
    }

    #[test]
    fn mount_options_get_a_version() {
        assert_eq!(mount_options(&[], &[]).unwrap(), vec!["vers=4"]);
        let p = kv(&[("mountOptions", "hard, timeo=600"), ("nfsVersion", "3")]);
        assert_eq!(
            mount_options(&p, &[]).unwrap(),
            vec!["vers=3", "hard", "timeo=600"]
        );
        let p = kv(&[("mountOptions", "nfsvers=4.1")]);
        assert_eq!(mount_options(&p, &[]).unwrap(), vec!["nfsvers=4.1"]);
        assert!(mount_options(&kv(&[("nfsVersion", "5")]), &[]).is_err());
        assert!(mount_options(&kv(&[("mountOptions", "-o x")]), &[]).is_err());
    }
}
