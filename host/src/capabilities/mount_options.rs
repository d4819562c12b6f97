//! Mount options by allow-list, per filesystem type. An option is allowed
//! only when it is listed here for its type, with a value of the listed
//! shape; none may name a path or a device (XFS `logdev=`, ext4
//! `journal_path=` would let the kernel write outside the plugin's grants),
//! and none may let a plugin take the node down (`errors=panic`) or undo
//! the host's own `nosuid,nodev`. Anything else is PERMISSION_DENIED naming
//! the option. The table is documented in docs/security.md.

use rustix::mount::MountAttrFlags;

use super::CapError;

/// The shape a value must have.
#[derive(Clone, Copy)]
enum Value {
    /// A flag: no `=value`.
    None,
    /// Decimal digits.
    Number,
    /// Digits with an optional k/m/g suffix (or `%` where tmpfs allows).
    Size,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// An IPv4 or IPv6 address.
    Address,
    /// Octal digits (tmpfs `mode=`).
    Octal,
    /// A number as the kernel's `memparse` reads it (tmpfs sizes): only
    /// its characters here; its value is checked, and bounded, by `tmpfs`.
    Memparse,
}

type Table = &'static [(&'static str, Value)];

/// Per-mount attributes every filesystem type accepts; they become mount
/// attributes, not filesystem parameters.
const VFS: Table = &[
    ("ro", Value::None),
    ("rw", Value::None),
    ("noatime", Value::None),
    ("nodiratime", Value::None),
    ("relatime", Value::None),
    ("strictatime", Value::None),
    ("lazytime", Value::None),
    ("sync", Value::None),
    ("dirsync", Value::None),
    ("nosuid", Value::None),
    ("nodev", Value::None),
    ("noexec", Value::None),
    ("defaults", Value::None),
];

const XFS: Table = &[
    ("nouuid", Value::None),
    ("discard", Value::None),
    ("nodiscard", Value::None),
    ("inode64", Value::None),
    ("inode32", Value::None),
    ("largeio", Value::None),
    ("nolargeio", Value::None),
    ("allocsize", Value::Size),
    ("logbufs", Value::Number),
    ("logbsize", Value::Size),
    ("noalign", Value::None),
    ("swalloc", Value::None),
    ("wsync", Value::None),
    ("filestreams", Value::None),
    ("grpid", Value::None),
    ("nogrpid", Value::None),
    ("bsdgroups", Value::None),
    ("sysvgroups", Value::None),
    ("sunit", Value::Number),
    ("swidth", Value::Number),
    ("uquota", Value::None),
    ("gquota", Value::None),
    ("pquota", Value::None),
    ("prjquota", Value::None),
    ("noquota", Value::None),
];

const EXT4: Table = &[
    ("discard", Value::None),
    ("nodiscard", Value::None),
    ("data", Value::OneOf(&["ordered", "writeback", "journal"])),
    ("commit", Value::Number),
    // Not `panic`: a plugin that corrupts its own image must not be able
    // to take the node's kernel down with it.
    ("errors", Value::OneOf(&["continue", "remount-ro"])),
    ("delalloc", Value::None),
    ("nodelalloc", Value::None),
    ("stripe", Value::Number),
    ("journal_checksum", Value::None),
    ("nojournal_checksum", Value::None),
    ("grpid", Value::None),
    ("nogrpid", Value::None),
    ("bsdgroups", Value::None),
    ("sysvgroups", Value::None),
    ("user_xattr", Value::None),
    ("acl", Value::None),
    ("noacl", Value::None),
    ("auto_da_alloc", Value::None),
    ("noauto_da_alloc", Value::None),
    ("inode_readahead_blks", Value::Number),
    ("max_batch_time", Value::Number),
    ("min_batch_time", Value::Number),
    ("init_itable", Value::Number),
    ("noinit_itable", Value::None),
    ("dioread_nolock", Value::None),
    ("dioread_lock", Value::None),
    ("block_validity", Value::None),
    ("noblock_validity", Value::None),
    ("quota", Value::None),
    ("noquota", Value::None),
    ("usrquota", Value::None),
    ("grpquota", Value::None),
    ("prjquota", Value::None),
];

const NFS: Table = &[
    ("vers", Value::OneOf(&["3", "4", "4.0", "4.1", "4.2"])),
    ("nfsvers", Value::OneOf(&["3", "4", "4.0", "4.1", "4.2"])),
    ("minorversion", Value::Number),
    ("proto", Value::OneOf(&["tcp", "tcp6", "rdma", "rdma6"])),
    ("port", Value::Number),
    ("rsize", Value::Number),
    ("wsize", Value::Number),
    ("timeo", Value::Number),
    ("retrans", Value::Number),
    ("retry", Value::Number),
    ("hard", Value::None),
    ("soft", Value::None),
    ("softreval", Value::None),
    ("nosoftreval", Value::None),
    ("intr", Value::None),
    ("nointr", Value::None),
    ("lock", Value::None),
    ("nolock", Value::None),
    ("ac", Value::None),
    ("noac", Value::None),
    ("actimeo", Value::Number),
    ("acregmin", Value::Number),
    ("acregmax", Value::Number),
    ("acdirmin", Value::Number),
    ("acdirmax", Value::Number),
    ("cto", Value::None),
    ("nocto", Value::None),
    (
        "sec",
        Value::OneOf(&["sys", "krb5", "krb5i", "krb5p", "none"]),
    ),
    ("nconnect", Value::Number),
    ("resvport", Value::None),
    ("noresvport", Value::None),
    (
        "lookupcache",
        Value::OneOf(&["all", "none", "pos", "positive"]),
    ),
    (
        "local_lock",
        Value::OneOf(&["none", "all", "flock", "posix"]),
    ),
    ("clientaddr", Value::Address),
    ("mountport", Value::Number),
    ("mountproto", Value::OneOf(&["tcp", "udp", "tcp6", "udp6"])),
    ("mountvers", Value::Number),
    ("namlen", Value::Number),
];

const TMPFS: Table = &[
    ("size", Value::Memparse),
    ("nr_blocks", Value::Memparse),
    ("nr_inodes", Value::Memparse),
    ("mode", Value::Octal),
    ("uid", Value::Number),
    ("gid", Value::Number),
    (
        "huge",
        Value::OneOf(&["never", "always", "within_size", "advise"]),
    ),
    ("noswap", Value::None),
];

fn table(fs_type: &str) -> Table {
    match fs_type {
        "xfs" => XFS,
        "ext4" | "ext3" | "ext2" => EXT4,
        "nfs" | "nfs4" => NFS,
        "tmpfs" => TMPFS,
        _ => &[],
    }
}

fn fits(value: Option<&str>, shape: Value) -> bool {
    let digits = |s: &str, radix: u32| {
        !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_digit(radix))
    };
    match (shape, value) {
        (Value::None, None) => true,
        (Value::None, Some(_)) | (_, None) => false,
        (Value::Number, Some(v)) => digits(v, 10),
        (Value::Octal, Some(v)) => digits(v, 8),
        (Value::Size, Some(v)) => {
            let n = v
                .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G', '%'])
                .unwrap_or(v);
            digits(n, 10)
        }
        (Value::Memparse, Some(v)) => {
            !v.is_empty()
                && v.len() <= 32
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '%')
        }
        (Value::OneOf(words), Some(v)) => words.contains(&v),
        (Value::Address, Some(v)) => v.parse::<std::net::IpAddr>().is_ok(),
    }
}

/// A checked set of mount options, split as the new mount API wants them.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    /// Read-only mount (the `ro` flag, for the superblock and the mount).
    pub read_only: bool,
    /// Per-mount attributes (atime handling); nosuid/nodev are added by the
    /// caller, always.
    pub attrs: MountAttrFlags,
    /// Filesystem parameters for `fsconfig`: `(key, value)`.
    pub params: Vec<(String, Option<String>)>,
    /// The options as given, for tools (mount(8) for network filesystems).
    pub text: Vec<String>,
}

/// Checks every option against `fs_type`'s allow-list.
pub fn check(fs_type: &str, options: &[String]) -> Result<MountOptions, CapError> {
    let mut out = MountOptions {
        read_only: false,
        attrs: MountAttrFlags::empty(),
        params: Vec::new(),
        text: Vec::new(),
    };
    for option in options {
        if option.len() > 256 {
            return Err(CapError::denied("a mount option is longer than 256 bytes"));
        }
        // One option per entry: a comma would smuggle in more.
        for part in option.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            let vfs = VFS.iter().find(|(k, _)| *k == key);
            let fs = table(fs_type).iter().find(|(k, _)| *k == key);
            let allowed = match (vfs, fs) {
                (Some((_, shape)), _) | (None, Some((_, shape))) => fits(value, *shape),
                (None, None) => false,
            };
            if !allowed {
                return Err(CapError::denied(format!(
                    "mount option {part:?} is not allowed for {fs_type} (see docs/security.md: \
                     options naming paths or devices, errors=panic, exec/suid/dev are never allowed)"
                )));
            }
            match key {
                "ro" => out.read_only = true,
                "rw" | "defaults" | "nosuid" | "nodev" => {}
                "noexec" => out.attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC,
                "noatime" => out.attrs |= MountAttrFlags::MOUNT_ATTR_NOATIME,
                "relatime" => out.attrs |= MountAttrFlags::MOUNT_ATTR_RELATIME,
                "strictatime" => out.attrs |= MountAttrFlags::MOUNT_ATTR_STRICTATIME,
                "nodiratime" => out.attrs |= MountAttrFlags::MOUNT_ATTR_NODIRATIME,
                _ => out
                    .params
                    .push((key.to_string(), value.map(str::to_string))),
            }
            out.text.push(part.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn refuses_paths_devices_and_node_killers() {
        for bad in [
            "logdev=/dev/loop7",
            "rtdev=/dev/sdb",
            "journal_path=/dev/sda",
            "journal_dev=2049",
            "usrjquota=/etc/passwd",
            "errors=panic",
            "exec",
            "suid",
            "dev",
            "dax",
            "noload",
            "context=system_u:object_r:etc_t:s0",
            "allocsize=/x",
            "ro,logdev=/dev/loop7",
            "data=../x",
        ] {
            let fs = if bad.contains("journal") || bad.contains("errors") || bad.contains("data") {
                "ext4"
            } else {
                "xfs"
            };
            let e = check(fs, &opts(&[bad])).unwrap_err();
            assert!(e.message.contains("not allowed"), "{bad}: {}", e.message);
        }
        assert!(check("nfs", &opts(&["clientaddr=evil.example"])).is_err());
        assert!(
            check("btrfs", &opts(&["discard"])).is_err(),
            "type without a table"
        );
    }

    #[test]
    fn splits_what_it_allows() {
        let o = check("xfs", &opts(&["ro", "noatime", "nouuid", "logbsize=256k"])).unwrap();
        assert!(o.read_only);
        assert_eq!(o.attrs, MountAttrFlags::MOUNT_ATTR_NOATIME);
        assert_eq!(
            o.params,
            vec![
                ("nouuid".to_string(), None),
                ("logbsize".to_string(), Some("256k".to_string()))
            ]
        );
        let o = check("ext4", &opts(&["errors=remount-ro,discard"])).unwrap();
        assert_eq!(o.params.len(), 2);
        let o = check("nfs", &opts(&["vers=4.1", "hard", "clientaddr=10.0.0.7"])).unwrap();
        assert_eq!(o.text, opts(&["vers=4.1", "hard", "clientaddr=10.0.0.7"]));
    }
}
