//! Which version of the WIT contract a plugin was built against, checked
//! before linking: a plugin of another version is refused with a message
//! naming both versions, not with the linker's first missing name.

use anyhow::{bail, Result};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The package every plugin import and export belongs to.
pub const PACKAGE: &str = "wasmcsi:plugin";
/// The version of `wit/plugin.wit` this host is built from.
pub const VERSION: &str = "0.2.0";

/// Refuses a component whose `wasmcsi:plugin` interfaces are of a version
/// this host does not speak: another major version, or for 0.x another
/// minor (semver's rule: 0.x minors are breaking).
pub fn check(component: &Component, engine: &Engine) -> Result<()> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .chain(ty.exports(engine).map(|(name, _)| name.to_string()))
        .collect();
    for name in &names {
        let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !compatible(version, VERSION) {
            let built = if version.is_empty() {
                "no version".to_string()
            } else {
                format!("{PACKAGE}@{version}")
            };
            bail!(
                "the plugin is built for {built} (its {name}), but this host speaks \
                 {PACKAGE}@{VERSION}: rebuild the plugin against this host's WIT (or its \
                 SDK), or run a host that speaks {built}"
            );
        }
    }
    Ok(())
}

/// Whether `found` can link against `ours`: the same major, and for 0.x
/// the same minor.
fn compatible(found: &str, ours: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(found), parts(ours)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_wit_files() {
        let wit =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/plugin.wit"))
                .unwrap();
        assert!(
            wit.lines()
                .any(|l| l.trim() == format!("package {PACKAGE}@{VERSION};")),
            "wit/plugin.wit does not declare package {PACKAGE}@{VERSION}"
        );
    }

    #[test]
    fn semver_for_0x() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.9.0"));
        assert!(!compatible("", "0.1.0"));
        assert!(!compatible("x.y", "0.1.0"));
    }

    fn component(wat: &str) -> (Component, Engine) {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let bytes = wat::parse_str(wat).unwrap();
        (Component::new(&engine, &bytes).unwrap(), engine)
    }

    #[test]
    fn a_plugin_of_another_version_is_refused_naming_both() {
        let (c, engine) = component(
            r#"(component
                (import "wasmcsi:plugin/environment@0.1.0" (instance
                    (export "time-left-ms" (func (result u64))))))"#,
        );
        let e = check(&c, &engine).unwrap_err().to_string();
        assert!(e.contains("wasmcsi:plugin@0.1.0"), "{e}");
        assert!(e.contains(&format!("wasmcsi:plugin@{VERSION}")), "{e}");

        let (c, engine) = component(&format!(
            r#"(component
                (import "wasmcsi:plugin/environment@{VERSION}" (instance
                    (export "time-left-ms" (func (result u64)))))
                (import "wasi:cli/stderr@0.2.0" (instance))
                (import "wasi:http/outgoing-handler@0.2.12" (instance)))"#
        ));
        check(&c, &engine).unwrap();
    }
}
