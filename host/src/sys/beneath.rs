//! Confinement by file descriptor. Every directory granted to a plugin (its
//! fs root, its mount-target prefixes) is opened once, at load; every path a
//! plugin names is resolved *beneath that descriptor* with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! and missing directories are made with `mkdirat` on the descriptor of
//! their parent. The host then acts on the descriptor it got — never on the
//! path string again — so a plugin that swaps a directory for a symlink in
//! the middle of a call (from a second, concurrent call) changes nothing:
//! the lookup that counts has already happened.
//!
//! Symlinks are never followed below a grant, whether they point in or out:
//! nothing the host is asked to do needs them, and a rule with no
//! exceptions is one that can be checked.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::CapError;
use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// Every lookup below a grant: no escape upwards, no symlink of any kind.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Longest path a plugin may name (PATH_MAX).
const MAX_PATH: usize = 4096;

/// A directory granted to a plugin, opened once.
pub struct GrantedDir {
    /// Canonical, as opened: for messages and to tell which grant a plugin
    /// path names. Never used to reach a file.
    path: PathBuf,
    fd: OwnedFd,
}

impl GrantedDir {
    /// Opens a granted directory at load, creating it if missing.
    pub fn open(dir: &Path) -> anyhow::Result<GrantedDir> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let fd = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", path.display()))?;
        Ok(GrantedDir { path, fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A plugin path located in one of its grants: the grant and the part
/// below it (only normal components; empty for the grant itself).
#[derive(Clone, Copy)]
pub struct Located<'g, 'p> {
    pub grant: &'g GrantedDir,
    pub rel: &'p Path,
    /// The path as the plugin named it, for messages.
    pub named: &'p str,
}

impl<'g, 'p> Located<'g, 'p> {
    /// Refuses the grant itself where only something below it makes sense
    /// (a mount target, a volume's subvolume).
    pub fn below(self, what: &str) -> Result<Self, CapError> {
        if self.rel.as_os_str().is_empty() {
            Err(CapError::denied(format!(
                "{what} {:?} is the granted directory itself, not something below it",
                self.named
            )))
        } else {
            Ok(self)
        }
    }

    /// The parent (located) and the last component's name.
    pub fn split(self) -> Result<(Self, &'p std::ffi::OsStr), CapError> {
        let name = self
            .rel
            .file_name()
            .ok_or_else(|| CapError::invalid(format!("{:?} has no last component", self.named)))?;
        let parent = self.rel.parent().unwrap_or(Path::new(""));
        Ok((
            Located {
                grant: self.grant,
                rel: parent,
                named: self.named,
            },
            name,
        ))
    }
}

/// Checks the syntax of a plugin path: absolute, no NUL, no `.` or `..`,
/// bounded. Interpreting `..` is never needed and is how escapes start.
pub fn check_syntax(path: &str) -> Result<&Path, CapError> {
    if path.len() > MAX_PATH {
        return Err(CapError::invalid(format!(
            "path of {} bytes is longer than {MAX_PATH}",
            path.len()
        )));
    }
    if !path.starts_with('/') {
        return Err(CapError::invalid(format!("path {path:?} must be absolute")));
    }
    if path.contains('\0') {
        return Err(CapError::invalid("path contains a NUL byte"));
    }
    let p = Path::new(path);
    // By string: `Path::components` drops inner `.` components silently.
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(CapError::invalid(format!(
            "path {path:?} must not contain . or .. components"
        )));
    }
    Ok(p)
}

/// Finds the grant a plugin path names (the longest that is a prefix of
/// it, component-wise). Which grant is chosen decides nothing about safety:
/// the rest is resolved beneath that grant's descriptor.
pub fn locate<'g, 'p>(
    grants: &[&'g GrantedDir],
    path: &'p str,
    what: &str,
) -> Result<Located<'g, 'p>, CapError> {
    let p = check_syntax(path)?;
    grants
        .iter()
        .filter_map(|g| p.strip_prefix(&g.path).ok().map(|rel| (*g, rel)))
        .max_by_key(|(g, _)| g.path.as_os_str().len())
        .map(|(grant, rel)| Located {
            grant,
            rel,
            named: path,
        })
        .ok_or_else(|| {
            CapError::denied(format!(
                "{what} {path:?} is outside the allowed directories ({})",
                grants
                    .iter()
                    .map(|g| g.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The error for a failed lookup below a grant, in the plugin's terms.
pub fn lookup_error(named: &str, errno: Errno) -> CapError {
    match errno {
        Errno::NOENT => CapError::not_found(format!("{named:?} does not exist")),
        Errno::LOOP => CapError::denied(format!(
            "{named:?} goes through a symlink; the host follows none below a grant"
        )),
        Errno::XDEV => CapError::denied(format!("{named:?} escapes its granted directory")),
        Errno::NOTDIR => CapError::invalid(format!("a component of {named:?} is not a directory")),
        Errno::ISDIR => CapError::invalid(format!("{named:?} is a directory")),
        Errno::ACCESS | Errno::PERM => CapError::denied(format!("{named:?}: permission denied")),
        other => CapError::internal(format!("{named:?}: {other}")),
    }
}

fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Opens what `at` names, beneath its grant.
pub fn open(at: Located, flags: OFlags) -> Result<OwnedFd, CapError> {
    open_in(at.grant.fd(), rel_or_dot(at.rel), flags, at.named)
}

/// `openat2` of `rel` beneath `dir`, with the confinement flags.
fn open_in(dir: BorrowedFd, rel: &Path, flags: OFlags, named: &str) -> Result<OwnedFd, CapError> {
    // openat2 refuses a mode unless a file may be created.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o640)
    } else {
        Mode::empty()
    };
    rustix::fs::openat2(dir, rel, flags | OFlags::CLOEXEC, mode, RESOLVE)
        .map_err(|e| lookup_error(named, e))
}

/// Opens the directory `at` names as an `O_PATH` descriptor, making each
/// missing component with `mkdirat` on its parent's descriptor (`mkdir -p`
/// that never follows a link).
pub fn open_dir_creating(at: Located) -> Result<OwnedFd, CapError> {
    let mut dir = rustix::io::fcntl_dupfd_cloexec(at.grant.fd(), 0)
        .map_err(|e| CapError::internal(format!("dup: {e}")))?;
    for part in at.rel.components() {
        let Component::Normal(name) = part else {
            return Err(CapError::invalid(format!("{:?}: bad component", at.named)));
        };
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        let next = match open_in(dir.as_fd(), Path::new(name), flags, at.named) {
            Err(e) if e.code == ErrorCode::NotFound => {
                match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o750)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(lookup_error(at.named, e)),
                }
                open_in(dir.as_fd(), Path::new(name), flags, at.named)?
            }
            other => other?,
        };
        dir = next;
    }
    Ok(dir)
}

/// Opens the regular file `at` names as an `O_PATH` descriptor, creating it
/// (empty, exclusively, never through a link) when missing; its parent
/// directories are made as by [`open_dir_creating`].
pub fn open_file_creating(at: Located) -> Result<OwnedFd, CapError> {
    let (parent, name) = at.split()?;
    let dir = open_dir_creating(parent)?;
    let name = Path::new(name);
    for _ in 0..3 {
        match open_in(dir.as_fd(), name, OFlags::PATH, at.named) {
            Ok(fd) => {
                require_type(&fd, FileType::RegularFile, at.named)?;
                return Ok(fd);
            }
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDONLY | OFlags::NOFOLLOW;
        match open_in(dir.as_fd(), name, flags, at.named) {
            Ok(fd) => return Ok(fd),
            // Made by someone else in between: look again.
            Err(_) if exists_in(dir.as_fd(), name) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CapError::new(
        ErrorCode::Aborted,
        format!("{:?} keeps changing; try again", at.named),
    ))
}

fn exists_in(dir: BorrowedFd, name: &Path) -> bool {
    rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Checks the type of what a descriptor refers to.
pub fn require_type(fd: &OwnedFd, want: FileType, named: &str) -> Result<(), CapError> {
    let st = rustix::fs::fstat(fd).map_err(|e| CapError::internal(format!("{named:?}: {e}")))?;
    let is = FileType::from_raw_mode(st.st_mode);
    if is == want {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "{named:?} is a {}, not a {}",
            type_word(is),
            type_word(want)
        )))
    }
}

fn type_word(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        _ => "file of unknown type",
    }
}

/// The `/proc/self/fd/N` name of a descriptor: how the kernel (and a tool
/// that inherited it) reaches exactly that file without a lookup by name.
pub fn fd_path(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `(st_dev, st_ino)` of a descriptor.
pub fn identity(fd: BorrowedFd) -> Result<(u64, u64), CapError> {
    let st = rustix::fs::fstat(fd).map_err(|e| CapError::internal(format!("fstat: {e}")))?;
    Ok((st.st_dev, st.st_ino))
}

/// Where a descriptor's file is, as the kernel names it now (for tools
/// that compare names, and for messages).
pub fn current_path(fd: BorrowedFd) -> Result<PathBuf, CapError> {
    std::fs::read_link(fd_path(fd))
        .map_err(|e| CapError::internal(format!("reading {}: {e}", fd_path(fd))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn grant() -> (tempfile::TempDir, GrantedDir) {
        let tmp = tempfile::tempdir().unwrap();
        let g = GrantedDir::open(&tmp.path().join("grant")).unwrap();
        (tmp, g)
    }

    fn at<'g, 'p>(g: &'g GrantedDir, p: &'p str) -> Result<Located<'g, 'p>, CapError> {
        locate(&[g], p, "path")
    }

    #[test]
    fn syntax_and_grant_matching() {
        let (_tmp, g) = grant();
        let base = g.path().display().to_string();
        assert!(at(&g, "relative/x").is_err());
        assert!(at(&g, &format!("{base}/a/../b")).is_err());
        assert!(at(&g, &format!("{base}/./b")).is_err());
        assert!(
            at(&g, &format!("{base}x/b")).is_err(),
            "a sibling with a longer name"
        );
        let inside = format!("{base}/a/b");
        let l = at(&g, &inside).unwrap();
        assert_eq!(l.rel, Path::new("a/b"));
        assert!(at(&g, &base).unwrap().below("target").is_err());
    }

    #[test]
    fn no_symlink_is_followed_in_or_out() {
        let (tmp, g) = grant();
        let base = g.path().to_path_buf();
        std::fs::create_dir(base.join("real")).unwrap();
        symlink("/etc", base.join("out")).unwrap();
        symlink("real", base.join("in")).unwrap();
        // Dangling, relative, climbing: what a plugin can make through WASI.
        symlink(
            "../../../../../../tmp/wasmcsi-canary",
            base.join("dangling"),
        )
        .unwrap();
        for name in ["out/passwd", "in", "in/x", "dangling"] {
            let path = format!("{}/{name}", base.display());
            let e = open(at(&g, &path).unwrap(), OFlags::PATH).unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{name}: {}", e.message);
            let e = open_dir_creating(at(&g, &format!("{path}/deeper")).unwrap()).unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{name}: {}", e.message);
        }
        let dangling = format!("{}/dangling", base.display());
        let e = open_file_creating(at(&g, &dangling).unwrap()).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{}", e.message);
        assert!(!Path::new("/tmp/wasmcsi-canary").exists());
        drop(tmp);
    }

    #[test]
    fn creates_directories_and_files_beneath() {
        let (_tmp, g) = grant();
        let base = g.path().display().to_string();
        let dir = format!("{base}/a/b/c");
        let fd = open_dir_creating(at(&g, &dir).unwrap()).unwrap();
        require_type(&fd, FileType::Directory, &dir).unwrap();
        assert_eq!(current_path(fd.as_fd()).unwrap(), g.path().join("a/b/c"));
        let file = format!("{base}/a/f/dev");
        let fd = open_file_creating(at(&g, &file).unwrap()).unwrap();
        require_type(&fd, FileType::RegularFile, &file).unwrap();
        // Again: the same file, not an error.
        open_file_creating(at(&g, &file).unwrap()).unwrap();
        // A directory where a file is wanted is refused, not replaced.
        assert!(open_file_creating(at(&g, &dir).unwrap()).is_err());
    }
}
