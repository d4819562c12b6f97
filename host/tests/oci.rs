//! Plugins from an OCI registry, against a real one: Debian's
//! `docker-registry` (the CNCF distribution server), started by each test
//! on 127.0.0.1 with its own storage, published to with `wasmcsi plugin
//! push`, pulled by the real `wasmcsi` binary. Without the registry binary
//! the tests say so loudly and pass, except under CI=true, where they fail.

mod common;
mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hostile::*;
use sha2::{Digest, Sha256};

/// The registry binary, or `None` (after saying so) when it is absent.
fn registry_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("WASMCSI_REGISTRY_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/docker-registry")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    let message =
        "docker-registry not found (apt-get install docker-registry, or scripts/setup.sh): \
                   the OCI registry tests did NOT run";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {message} !!!!!!!!\n");
    None
}

/// A `docker-registry` this test started, on 127.0.0.1, killed (by its
/// pid) on drop.
struct Registry {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    child: Option<Child>,
}

impl Registry {
    fn start(bin: &Path, tls: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("wasmcsi-registry")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls_yaml = match tls {
            Some((cert, key)) => {
                std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
                std::fs::write(dir.path().join("key.pem"), key).unwrap();
                format!(
                    "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\n",
                    dir.path().display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}/storage\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_yaml}",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut registry = Registry {
            bin: bin.to_path_buf(),
            dir,
            port,
            tls: tls.is_some(),
            child: None,
        };
        registry.resume();
        registry
    }

    /// Starts it (again, on the same port and storage).
    fn resume(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on 127.0.0.1:{}\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it (an outage); its storage stays.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file the registry serves a blob from.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `wasmcsi plugin push`: the pinned reference it prints.
fn push(file: &Path, target: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["plugin", "push"])
        .arg(file)
        .arg(target)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        printed.starts_with("oci://") && printed.contains("@sha256:"),
        "{printed}"
    );
    printed
}

/// hostile.wasm with a custom section appended: the same plugin, another
/// digest (a "new version" to publish).
fn variant(dir: &Path, tag: &str) -> PathBuf {
    let mut wasm = std::fs::read(hostile_wasm()).unwrap();
    let name = b"wasmcsi-test";
    let payload = tag.as_bytes();
    let len = 1 + name.len() + payload.len();
    assert!(len < 128, "one-byte LEB128 lengths");
    wasm.push(0); // custom section
    wasm.push(len as u8);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(payload);
    let path = dir.join(format!("hostile-{tag}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

/// The hostile plugin's entry, pulled from `source`.
fn plugin_yaml(source: &str) -> String {
    format!(
        "  - name: hostile\n    source: \"{source}\"\n    limits: {{ memoryBytes: {}, maxConcurrentCalls: 4 }}\n    capabilities: {{ log: {{}} }}\n",
        32 * MIB
    )
}

async fn null_volume(d: &TestDriver) -> Result<String, tonic::Status> {
    d.client
        .clone()
        .controller
        .create_volume(hostile_req("null", None))
        .await
        .map(|r| r.into_inner().volume.unwrap().volume_id)
}

/// The last `elapsed_ms` of a log line with `what` about the hostile plugin.
fn elapsed_ms(log: &str, what: &str) -> Option<u64> {
    plain(log)
        .lines()
        .filter(|l| l.contains(what) && l.contains("hostile"))
        .filter_map(|l| l.split("elapsed_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next_back()
}

async fn eventually<F, Fut>(what: &str, d: &TestDriver, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} never happened\n{}", d.logs());
}

/// `wasmcsi validate-config --load-plugins` on a one-plugin config:
/// success, or the message it failed with.
fn load_once(dir: &Path, source: &str, top_yaml: &str) -> Result<(), String> {
    let config = dir.join("load-once.yaml");
    std::fs::write(
        &config,
        format!(
            "driver: {{ name: oci.wasmcsi.io, nodeId: n1, endpoint: \"unix://{}/x.sock\" }}\nplugins:\n{}{top_yaml}",
            dir.display(),
            plugin_yaml(source)
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["validate-config", "--load-plugins", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_by_digest_is_pulled_cached_kept_through_an_outage_and_refreshed() {
    let Some(bin) = registry_binary() else { return };
    let mut registry = Registry::start(&bin, None);
    let scratch = tempfile::tempdir().unwrap();
    let v1 = variant(scratch.path(), "v1");
    let v2 = variant(scratch.path(), "v2");
    let ref1 = push(&v1, &format!("{}/wasmcsi/hostile:v1", registry.host()), &[]);
    let ref2 = push(
        &v2,
        &format!("oci://{}/wasmcsi/hostile:v2", registry.host()),
        &[],
    );
    assert_ne!(ref1, ref2);

    let cache = tempfile::tempdir().unwrap();
    let top = format!(
        "runtime: {{ cacheDir: \"{}/c\", watchIntervalMs: 200 }}\n",
        cache.path().display()
    );
    let started = Instant::now();
    let mut d = TestDriver::start(Options {
        plugin_extra: format!("{}{top}", plugin_yaml(&ref1)),
        ..Default::default()
    })
    .await;
    let cold_ready = started.elapsed();
    assert_eq!(null_volume(&d).await.unwrap(), "hostile:null");
    let log = plain(&d.logs());
    assert!(log.contains("plugin pulled from its registry"), "{log}");
    let cold_pull = elapsed_ms(&log, "plugin pulled").unwrap();
    let cold_load = elapsed_ms(&log, "plugin loaded").unwrap();

    // The registry goes away: a restart loads from the cache.
    registry.stop();
    let started = Instant::now();
    d.crash_and_restart().await;
    let cached_ready = started.elapsed();
    assert_eq!(null_volume(&d).await.unwrap(), "hostile:null");
    let log = plain(&d.logs());
    assert!(log.contains("plugin taken from the OCI cache"), "{log}");
    let cached_load = elapsed_ms(&log, "plugin loaded").unwrap();
    eprintln!(
        "pull-and-load of hostile ({} bytes): cold {cold_load} ms (pull {cold_pull} ms, driver ready after {} ms); \
         from the cache {cached_load} ms (driver ready after {} ms)",
        std::fs::metadata(&v1).unwrap().len(),
        cold_ready.as_millis(),
        cached_ready.as_millis()
    );

    // A new version is configured while the registry is down: refused,
    // the reference named, and v1 keeps serving.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace(&ref1, &ref2)).unwrap();
    eventually("the unreachable version's rejection", &d, || async {
        d.logs().contains("new plugin version rejected")
    })
    .await;
    let log = plain(&d.logs());
    let rejected = log
        .lines()
        .find(|l| l.contains("new plugin version rejected"))
        .unwrap();
    assert!(
        rejected.contains(&ref2) && rejected.contains("unreachable"),
        "{rejected}"
    );
    assert_eq!(null_volume(&d).await.unwrap(), "hostile:null");
    still_serving(&d, "registry-down").await;

    // The registry comes back: the new version is pulled and swapped in.
    registry.resume();
    let layer2 = format!("{:x}", Sha256::digest(std::fs::read(&v2).unwrap()));
    eventually("v2 pulled once the registry is back", &d, || async {
        let log = plain(&d.logs());
        log.lines()
            .any(|l| l.contains("plugin pulled") && l.contains(&layer2))
            && log.matches("plugin reloaded").count() >= 1
    })
    .await;
    assert_eq!(null_volume(&d).await.unwrap(), "hostile:null");

    // The cache holds manifests and layers by digest, and nothing else.
    let blobs: Vec<String> = std::fs::read_dir(cache.path().join("c/oci/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 4, "two manifests and two layers: {blobs:?}");
    assert!(blobs.contains(&layer2), "{blobs:?}");
    assert!(blobs.contains(&ref1.rsplit(':').next().unwrap().to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digests_tags_and_tampered_layers_are_refused() {
    let Some(bin) = registry_binary() else { return };
    let registry = Registry::start(&bin, None);
    let scratch = tempfile::tempdir().unwrap();
    let v1 = variant(scratch.path(), "refuse");
    let good = push(&v1, &format!("{}/wasmcsi/hostile:v1", registry.host()), &[]);
    load_once(scratch.path(), &good, "").expect("the pushed plugin loads");

    // A digest the registry does not have: the start fails naming it.
    let repo = good.split('@').next().unwrap();
    let missing = format!("{repo}@sha256:{}", "0".repeat(64));
    let err = load_once(scratch.path(), &missing, "").unwrap_err();
    assert!(
        err.contains("loading plugin hostile from") && err.contains(&missing),
        "{err}"
    );

    // A tag alone is refused when the config is read.
    let err = load_once(scratch.path(), &format!("{repo}:v1"), "").unwrap_err();
    assert!(err.contains("names a tag, not a digest"), "{err}");

    // The registry serves other bytes for the layer (its storage was
    // tampered with): refused, both digests named, nothing cached.
    let layer = format!("sha256:{:x}", Sha256::digest(std::fs::read(&v1).unwrap()));
    let file = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let served = format!("sha256:{:x}", Sha256::digest(&bytes));
    std::fs::write(&file, &bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let top = format!(
        "runtime: {{ cacheDir: \"{}/c\" }}\n",
        cache.path().display()
    );
    let err = load_once(scratch.path(), &good, &top).unwrap_err();
    assert!(
        err.contains("digest mismatch") && err.contains(&layer) && err.contains(&served),
        "{err}"
    );
    let cached = std::fs::read_dir(cache.path().join("c/oci/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "nothing unverified is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_registry_with_a_private_ca() {
    let Some(bin) = registry_binary() else { return };
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wasmcsi test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let registry = Registry::start(&bin, Some((&cert.pem(), &key.serialize_pem())));
    assert!(registry.tls);

    let scratch = tempfile::tempdir().unwrap();
    let ca_file = scratch.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let v1 = variant(scratch.path(), "tls");
    let pinned = push(
        &v1,
        &format!("{}/wasmcsi/hostile:tls", registry.host()),
        &["--ca-file", ca_file.to_str().unwrap()],
    );

    // Without the CA: neither https (unknown issuer) nor http works.
    let err = load_once(scratch.path(), &pinned, "").unwrap_err();
    assert!(
        err.contains("over https") && err.contains("over http"),
        "{err}"
    );

    // With it, through the real driver, and a CSI call.
    let top = format!(
        "runtime: {{ registries: {{ caFile: \"{}\" }} }}\n",
        ca_file.display()
    );
    let d = TestDriver::start(Options {
        plugin_extra: format!("{}{top}", plugin_yaml(&pinned)),
        ..Default::default()
    })
    .await;
    assert_eq!(null_volume(&d).await.unwrap(), "hostile:null");
    assert!(plain(&d.logs()).contains("plugin pulled from its registry"));
}
