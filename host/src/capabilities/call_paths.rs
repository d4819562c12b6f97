//! Mount authority of one call: the paths the CO named in it. A granted
//! prefix (the kubelet directory) holds every pod's volumes, so "beneath
//! the prefix" cannot be what lets a plugin mount: NodeStageVolume may
//! mount, bind onto, reconfigure and unmount exactly its staging path,
//! NodePublishVolume exactly its target path (binding from beneath its
//! staging path), NodeUnstage/NodeUnpublish exactly the path they undo,
//! NodeExpandVolume reconfigure its volume or staging path, and
//! NodeGetVolumeStats only look at them. Every other call (controller,
//! identity, a plugin's load) gets no mount authority at all.
//!
//! Paths compare component by component (`/a//b/` is `/a/b`); a plugin
//! path has no `.` or `..` (see `beneath::check_syntax`). The comparison
//! only picks what may be asked; the path is then resolved beneath the
//! granted prefix's descriptor as before, never followed through a link.

use std::path::{Path, PathBuf};

use super::CapError;

/// What a call may do at one of its paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// Mount onto, bind onto, reconfigure, unmount, look at: exactly here.
    Target,
    /// Reconfigure and look at exactly here (a node expansion).
    Resize,
    /// Bind from here or beneath, look at exactly here (a publish's
    /// staging path).
    Source,
    /// Look at exactly here (stats).
    Look,
}

/// What a plugin asks to do at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// mount, bind onto, unmount.
    Mount,
    Reconfigure,
    /// mounted-at.
    Look,
}

impl Action {
    fn allowed_by(self, how: Use) -> bool {
        match self {
            Action::Mount => how == Use::Target,
            Action::Reconfigure => matches!(how, Use::Target | Use::Resize),
            Action::Look => true,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Mount => "mount on or unmount",
            Action::Reconfigure => "reconfigure",
            Action::Look => "look at",
        }
    }
}

/// The paths one call was given, and what it may do there.
#[derive(Clone, Debug, Default)]
pub struct CallPaths {
    /// The node call, for messages; empty: not a node call.
    call: &'static str,
    paths: Vec<(PathBuf, Use)>,
}

impl CallPaths {
    /// No mount authority: controller, identity and load calls.
    pub fn none() -> CallPaths {
        CallPaths::default()
    }

    pub fn stage(staging: &str) -> CallPaths {
        CallPaths::of("stage-volume", [(Some(staging), Use::Target)])
    }

    pub fn unstage(staging: &str) -> CallPaths {
        CallPaths::of("unstage-volume", [(Some(staging), Use::Target)])
    }

    pub fn publish(target: &str, staging: Option<&str>) -> CallPaths {
        CallPaths::of(
            "publish-volume",
            [(Some(target), Use::Target), (staging, Use::Source)],
        )
    }

    pub fn unpublish(target: &str) -> CallPaths {
        CallPaths::of("unpublish-volume", [(Some(target), Use::Target)])
    }

    pub fn expand(volume_path: &str, staging: Option<&str>) -> CallPaths {
        CallPaths::of(
            "expand-volume",
            [(Some(volume_path), Use::Resize), (staging, Use::Resize)],
        )
    }

    pub fn stats(volume_path: &str, staging: Option<&str>) -> CallPaths {
        CallPaths::of(
            "get-volume-stats",
            [(Some(volume_path), Use::Look), (staging, Use::Look)],
        )
    }

    fn of<const N: usize>(call: &'static str, paths: [(Option<&str>, Use); N]) -> CallPaths {
        CallPaths {
            call,
            paths: paths
                .into_iter()
                .filter_map(|(p, how)| p.filter(|p| !p.is_empty()).map(|p| (p.into(), how)))
                .collect(),
        }
    }

    /// Whether this call may do `action` at `path` (exactly that path).
    pub fn allows(&self, action: Action, path: &str) -> Result<(), CapError> {
        let path = Path::new(path);
        if self
            .paths
            .iter()
            .any(|(p, how)| p == path && action.allowed_by(*how))
        {
            return Ok(());
        }
        Err(self.refusal(action, path))
    }

    /// Whether a bind source lies at or beneath a path the call may bind
    /// from (a publish's staging path).
    pub fn may_bind_from(&self, source: &str) -> bool {
        let source = Path::new(source);
        self.paths
            .iter()
            .any(|(p, how)| *how == Use::Source && source.starts_with(p))
    }

    fn refusal(&self, action: Action, path: &Path) -> CapError {
        if self.call.is_empty() {
            return CapError::denied(format!(
                "this call has no mount authority: only node calls mount, and only on the \
                 paths the CO gave them (asked to {} {})",
                action.verb(),
                path.display()
            ));
        }
        let allowed: Vec<String> = self
            .paths
            .iter()
            .filter(|(_, how)| action.allowed_by(*how))
            .map(|(p, _)| p.display().to_string())
            .collect();
        let allowed = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.join(", ")
        };
        CapError::denied(format!(
            "{} is not a path this {} call may {} (the paths its request gave: {allowed})",
            path.display(),
            self.call,
            action.verb(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_paths_of_the_call() {
        let p = CallPaths::publish("/k/pods/a/vol/mount", Some("/k/plugins/x/globalmount"));
        assert!(p.allows(Action::Mount, "/k/pods/a/vol/mount").is_ok());
        assert!(p.allows(Action::Mount, "/k/pods/a/vol/mount/").is_ok());
        assert!(p.allows(Action::Mount, "/k//pods/a/vol/mount").is_ok());
        for other in [
            "/k/pods/a/vol/mount/sub",
            "/k/pods/a/vol",
            "/k/pods/b/vol/mount",
            "/k/plugins/x/globalmount",
        ] {
            let e = p.allows(Action::Mount, other).unwrap_err();
            assert!(e.message.contains("publish-volume"), "{}", e.message);
        }
        assert!(p.allows(Action::Look, "/k/plugins/x/globalmount").is_ok());
        assert!(p.may_bind_from("/k/plugins/x/globalmount"));
        assert!(p.may_bind_from("/k/plugins/x/globalmount/sub"));
        assert!(!p.may_bind_from("/k/plugins/x/globalmountx"));
        assert!(!p.may_bind_from("/k/pods/b/vol/mount"));
        assert!(!p.may_bind_from("/k/pods/a/vol/mount"));
    }

    #[test]
    fn what_each_call_may_do() {
        let e = CallPaths::expand("/k/v", Some("/k/s"));
        assert!(e.allows(Action::Reconfigure, "/k/s").is_ok());
        assert!(e.allows(Action::Reconfigure, "/k/v").is_ok());
        assert!(e.allows(Action::Mount, "/k/v").is_err());
        let s = CallPaths::stats("/k/v", None);
        assert!(s.allows(Action::Look, "/k/v").is_ok());
        assert!(s.allows(Action::Reconfigure, "/k/v").is_err());
        assert!(s.allows(Action::Mount, "/k/v").is_err());
        let u = CallPaths::unstage("/k/s");
        assert!(u.allows(Action::Mount, "/k/s").is_ok());
        assert!(!u.may_bind_from("/k/s"));
        let none = CallPaths::none();
        let e = none.allows(Action::Look, "/k/v").unwrap_err();
        assert!(e.message.contains("no mount authority"), "{}", e.message);
        assert!(!none.may_bind_from("/k/v"));
        // An empty staging path gives nothing.
        assert!(!CallPaths::publish("/k/t", Some("")).may_bind_from("/k"));
    }
}
