//! tmpfs is the node's memory: every tmpfs a plugin mounts is bounded by
//! its grant (`mount.tmpfsMaxBytes`), alone and together with the plugin's
//! other live tmpfs mounts, and so is every `reconfigure`.
//!
//! The kernel reads `size=`, `nr_blocks=` and `nr_inodes=` with `memparse`
//! (base 0: `0x` hex, a leading `0` octal; a k/m/g/t/p/e suffix, either
//! case; `size=` also takes `%` of RAM) and wraps silently on overflow:
//! `size=18446744073709551616` is 0, which to tmpfs is unlimited. So the
//! host parses each value as the kernel would, refuses what overflows, is
//! 0 or exceeds the bound, refuses a size given twice, and hands the
//! kernel only its own canonical numbers (`size=<bytes>`,
//! `nr_inodes=<n>`): what was checked is what is mounted.

use std::sync::Mutex;

use super::mount_options::MountOptions;
use super::CapError;

/// Bytes of one tmpfs block (`nr_blocks=`) and the unit sizes round up to.
fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The node's memory as the kernel counts it for `%` (`totalram_pages`,
/// which /proc/meminfo shows as MemTotal).
pub fn node_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// What a plugin's tmpfs mounts may take.
#[derive(Clone, Debug)]
pub struct MemoryBound {
    /// Each tmpfs, and all of the plugin's live ones together.
    pub max_bytes: u64,
    /// Inodes of one tmpfs: one per page of the bound, as the kernel's
    /// own default is one per page of the default size.
    pub max_inodes: u64,
    /// The node's memory, for `size=N%`.
    pub ram_bytes: u64,
}

impl MemoryBound {
    /// The bound in whole pages (what a tmpfs is made of), at least one.
    pub fn new(max_bytes: u64) -> MemoryBound {
        let pages = (max_bytes / page_size()).max(1);
        MemoryBound {
            max_bytes: pages * page_size(),
            max_inodes: pages,
            ram_bytes: node_memory_bytes().unwrap_or(0),
        }
    }
}

/// Why a value is not a number the kernel would read as meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// No digits where the kernel expects them (it would read 0).
    NoDigits,
    /// Past 2^64 - 1: the kernel would wrap it.
    Overflow,
}

/// The kernel's `memparse`: a number in base 0 and an optional binary
/// suffix; the rest of the text is returned. Overflow, which the kernel
/// wraps, is an error here.
pub fn memparse(text: &str) -> Result<(u64, &str), Unreadable> {
    let (radix, digits) = match text.as_bytes() {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (16, &text[2..]),
        [b'0', ..] => (8, text),
        _ => (10, text),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return Err(Unreadable::NoDigits);
    }
    let mut value: u64 = 0;
    for c in digits[..end].chars() {
        let d = u64::from(c.to_digit(radix).expect("checked digit"));
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(d))
            .ok_or(Unreadable::Overflow)?;
    }
    let rest = &digits[end..];
    let shift = match rest.as_bytes().first().map(u8::to_ascii_lowercase) {
        Some(b'k') => 10,
        Some(b'm') => 20,
        Some(b'g') => 30,
        Some(b't') => 40,
        Some(b'p') => 50,
        Some(b'e') => 60,
        _ => return Ok((value, rest)),
    };
    if value > u64::MAX >> shift {
        return Err(Unreadable::Overflow);
    }
    Ok((value << shift, &rest[1..]))
}

/// The tmpfs a mount or reconfigure asks for, once checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Asked {
    /// Its size in bytes (whole pages), when it sets one.
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

/// Checks the size and inode parameters of a tmpfs against `bound` and
/// replaces them with canonical ones. A new mount must have a size and
/// gets `nr_inodes` at the bound when it names none.
pub fn check(
    options: &mut MountOptions,
    bound: &MemoryBound,
    new: bool,
) -> Result<Asked, CapError> {
    let mut asked = Asked {
        bytes: None,
        inodes: None,
    };
    let mut kept = Vec::with_capacity(options.params.len());
    for (key, value) in options.params.drain(..) {
        let option = || format!("{key}={}", value.as_deref().unwrap_or(""));
        match key.as_str() {
            "size" | "nr_blocks" => {
                if asked.bytes.is_some() {
                    return Err(CapError::invalid(format!(
                        "tmpfs option {}: the size is given more than once (size= or \
                         nr_blocks=, once)",
                        option()
                    )));
                }
                asked.bytes = Some(size_bytes(&key, value.as_deref(), bound)?);
            }
            "nr_inodes" => {
                if asked.inodes.is_some() {
                    return Err(CapError::invalid(format!(
                        "tmpfs option {}: nr_inodes is given more than once",
                        option()
                    )));
                }
                asked.inodes = Some(inodes(value.as_deref(), bound)?);
            }
            _ => kept.push((key, value)),
        }
    }
    if new && asked.bytes.is_none() {
        return Err(CapError::invalid(format!(
            "a tmpfs must have a size (size= or nr_blocks=, at most mount.tmpfsMaxBytes = {} \
             bytes; 0 is unlimited and never allowed)",
            bound.max_bytes
        )));
    }
    if new && asked.inodes.is_none() {
        asked.inodes = Some(bound.max_inodes);
    }
    if let Some(bytes) = asked.bytes {
        kept.push(("size".into(), Some(bytes.to_string())));
    }
    if let Some(n) = asked.inodes {
        kept.push(("nr_inodes".into(), Some(n.to_string())));
    }
    options.params = kept;
    Ok(asked)
}

/// `size=` (bytes, or `%` of RAM) or `nr_blocks=` (pages), in bytes
/// rounded up to whole pages as the kernel does.
fn size_bytes(key: &str, value: Option<&str>, bound: &MemoryBound) -> Result<u64, CapError> {
    let text = value.unwrap_or("");
    let option = format!("{key}={text}");
    let unreadable = |why: Unreadable| {
        CapError::invalid(match why {
            Unreadable::NoDigits => format!("tmpfs option {option}: not a number"),
            Unreadable::Overflow => {
                format!("tmpfs option {option}: past 2^64 bytes (the kernel would wrap it)")
            }
        })
    };
    let (n, rest) = memparse(text).map_err(unreadable)?;
    let bytes: u128 = match (key, rest) {
        ("size", "") => u128::from(n),
        // The kernel: (n << PAGE_SHIFT) * totalram_pages / 100, in 64 bits.
        ("size", "%") => {
            if n > u64::MAX / page_size() {
                return Err(unreadable(Unreadable::Overflow));
            }
            u128::from(n) * u128::from(bound.ram_bytes) / 100
        }
        ("nr_blocks", "") => u128::from(n) * u128::from(page_size()),
        _ => {
            return Err(CapError::invalid(format!(
                "tmpfs option {option}: not a size (digits, an optional k/m/g/t/p/e{})",
                if key == "size" { " or %" } else { "" }
            )))
        }
    };
    let pages = bytes.div_ceil(u128::from(page_size()));
    let bytes = pages * u128::from(page_size());
    if bytes == 0 {
        return Err(CapError::invalid(format!(
            "tmpfs option {option}: a size of 0 is an unlimited tmpfs, never allowed"
        )));
    }
    if bytes > u128::from(bound.max_bytes) {
        return Err(CapError::denied(format!(
            "tmpfs option {option}: {bytes} bytes is more than mount.tmpfsMaxBytes ({} bytes)",
            bound.max_bytes
        )));
    }
    Ok(bytes as u64)
}

fn inodes(value: Option<&str>, bound: &MemoryBound) -> Result<u64, CapError> {
    let text = value.unwrap_or("");
    let refuse = |why: &str| {
        CapError::invalid(format!(
            "tmpfs option nr_inodes={text}: {why} (1 to {}, one per page of \
             mount.tmpfsMaxBytes)",
            bound.max_inodes
        ))
    };
    let n = match memparse(text) {
        Ok((n, "")) => n,
        Ok(_) | Err(Unreadable::NoDigits) => return Err(refuse("not a number")),
        Err(Unreadable::Overflow) => return Err(refuse("past 2^64 (the kernel would wrap it)")),
    };
    if n == 0 {
        return Err(refuse("0 is unlimited inodes, never allowed"));
    }
    if n > bound.max_inodes {
        return Err(CapError::denied(format!(
            "tmpfs option nr_inodes={text}: more than {} inodes (one per page of \
             mount.tmpfsMaxBytes)",
            bound.max_inodes
        )));
    }
    Ok(n)
}

/// One live tmpfs superblock of a plugin, from the mount table.
#[derive(Debug, PartialEq, Eq)]
pub struct Live {
    /// `major:minor`, one per superblock (bind mounts share it).
    pub device: String,
    pub bytes: u64,
}

/// Every live tmpfs whose source carries `tag` (one plugin's), once per
/// superblock, with its size as the kernel shows it (`size=<n>k`; none
/// shown is the default, half the memory; `size=0k` is unlimited).
pub fn live(mountinfo: &str, tag: &str, ram_bytes: u64) -> Vec<Live> {
    let mut out: Vec<Live> = Vec::new();
    for m in crate::sys::mountinfo::parse(mountinfo) {
        if m.fs_type != "tmpfs" || !m.source.starts_with(tag) {
            continue;
        }
        let device = m.device.as_str();
        if out.iter().any(|l| l.device == device) {
            continue;
        }
        let options = m.super_options.as_str();
        let size = options.split(',').find_map(|o| o.strip_prefix("size="));
        let bytes = match size
            .and_then(|s| s.strip_suffix('k'))
            .map(str::parse::<u64>)
        {
            Some(Ok(0)) | Some(Err(_)) => u64::MAX,
            Some(Ok(kib)) => kib.saturating_mul(1024),
            None => ram_bytes / 2,
        };
        out.push(Live {
            device: device.to_string(),
            bytes,
        });
    }
    out
}

/// Held while a tmpfs of any plugin is checked against what is live and
/// then mounted or reconfigured, so that two calls never both fit into
/// the same room.
pub static ACCOUNTING: Mutex<()> = Mutex::new(());

/// Refuses a tmpfs of `bytes` when, with the plugin's other live tmpfs
/// mounts (all but the superblock `replacing`, when resizing one), it
/// would exceed the bound.
pub fn check_total(
    tag: &str,
    bound: &MemoryBound,
    bytes: u64,
    replacing: Option<&str>,
) -> Result<(), CapError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    let others: u64 = live(&info, tag, bound.ram_bytes)
        .iter()
        .filter(|l| Some(l.device.as_str()) != replacing)
        .fold(0u64, |sum, l| sum.saturating_add(l.bytes));
    if others.saturating_add(bytes) > bound.max_bytes {
        return Err(CapError::new(
            super::ErrorCode::ResourceExhausted,
            format!(
                "a tmpfs of {bytes} bytes would bring the plugin's live tmpfs mounts to more \
                 than mount.tmpfsMaxBytes ({} bytes; {others} bytes are mounted already)",
                bound.max_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn bound() -> MemoryBound {
        MemoryBound {
            max_bytes: 4 * GIB,
            max_inodes: 4 * GIB / page_size(),
            ram_bytes: 16 * GIB,
        }
    }

    fn checked(list: &[&str], new: bool) -> Result<(Asked, Vec<String>), CapError> {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        let mut options = super::super::mount_options::check("tmpfs", &list)?;
        let asked = check(&mut options, &bound(), new)?;
        let params = options
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("")))
            .collect();
        Ok((asked, params))
    }

    #[test]
    fn memparse_reads_as_the_kernel_does() {
        assert_eq!(memparse("10"), Ok((10, "")));
        assert_eq!(memparse("010"), Ok((8, "")), "a leading 0 is octal");
        assert_eq!(memparse("0x10k"), Ok((16 << 10, "")));
        assert_eq!(memparse("0x"), Ok((0, "x")), "0, then x");
        assert_eq!(memparse("1K"), Ok((1024, "")));
        assert_eq!(memparse("1e"), Ok((1 << 60, "")));
        assert_eq!(memparse("3T%"), Ok((3 << 40, "%")));
        assert_eq!(memparse("k"), Err(Unreadable::NoDigits));
        assert_eq!(memparse(""), Err(Unreadable::NoDigits));
        assert_eq!(memparse("18446744073709551615"), Ok((u64::MAX, "")));
        assert_eq!(memparse("18446744073709551616"), Err(Unreadable::Overflow));
        assert_eq!(memparse("17179869184g"), Err(Unreadable::Overflow));
        assert_eq!(memparse("16e"), Err(Unreadable::Overflow));
        assert_eq!(memparse("15e"), Ok((15 << 60, "")));
    }

    #[test]
    fn sizes_are_bounded_and_made_canonical() {
        let (asked, params) = checked(&["size=1m", "mode=700"], true).unwrap();
        assert_eq!(asked.bytes, Some(1 << 20));
        assert_eq!(
            params,
            [
                "mode=700".to_string(),
                format!("size={}", 1 << 20),
                format!("nr_inodes={}", bound().max_inodes)
            ]
        );
        // Rounded up to whole pages, as the kernel does.
        let (asked, _) = checked(&["size=1"], true).unwrap();
        assert_eq!(asked.bytes, Some(page_size()));
        let (asked, _) = checked(&["size=25%"], true).unwrap();
        assert_eq!(asked.bytes, Some(4 * GIB));
        let (asked, _) = checked(&["nr_blocks=16"], true).unwrap();
        assert_eq!(asked.bytes, Some(16 * page_size()));
        let (asked, params) = checked(&["nr_inodes=1k"], false).unwrap();
        assert_eq!((asked.bytes, asked.inodes), (None, Some(1024)));
        assert_eq!(params, ["nr_inodes=1024"]);
    }

    #[test]
    fn wrapping_huge_zero_and_repeated_sizes_are_refused_naming_the_option() {
        for (bad, says) in [
            ("size=17179869184g", "2^64"),
            ("nr_blocks=17179869184g", "2^64"),
            ("size=18446744073709551616", "2^64"),
            ("size=400%", "tmpfsMaxBytes"),
            ("size=1048576g", "tmpfsMaxBytes"),
            ("size=4398046511104k", "tmpfsMaxBytes"),
            ("nr_blocks=1t", "tmpfsMaxBytes"),
            ("size=0", "unlimited"),
            ("size=0k", "unlimited"),
            ("size=00", "unlimited"),
            ("size=k", "not a number"),
            ("size=1x", "not a size"),
            ("nr_blocks=1%", "not a size"),
            ("size=4503599627370496%", "2^64"),
            ("nr_inodes=0", "unlimited"),
            ("nr_inodes=17179869184g", "2^64"),
            ("nr_inodes=1e", "inodes"),
        ] {
            // As a reconfigure (no size needed) and as a new mount.
            let e = checked(&[bad], false)
                .err()
                .unwrap_or_else(|| panic!("{bad} passed"));
            let key = bad.split('=').next().unwrap();
            assert!(
                e.message.contains(key) && e.message.contains(says),
                "{bad}: {}",
                e.message
            );
            let e = checked(&[bad], true).unwrap_err();
            assert!(e.message.contains(key), "{bad}: {}", e.message);
        }
        for twice in [
            &["size=1m,size=17179869184g"][..],
            &["size=1m", "size=2m"],
            &["size=1m", "nr_blocks=2"],
            &["nr_inodes=1", "nr_inodes=2", "size=1m"],
        ] {
            let e = checked(twice, true).unwrap_err();
            assert!(
                e.message.contains("more than once"),
                "{twice:?}: {}",
                e.message
            );
        }
        let e = checked(&["mode=700"], true).unwrap_err();
        assert!(e.message.contains("must have a size"), "{}", e.message);
    }

    #[test]
    fn live_mounts_once_per_superblock_with_their_sizes() {
        let info = "\
50 1 0:40 / /k/a rw - tmpfs wasmcsi:p:a rw,size=1024k,nr_inodes=10\n\
51 1 0:40 / /k/pods/a rw - tmpfs wasmcsi:p:a rw,size=1024k,nr_inodes=10\n\
52 1 0:41 / /k/b rw - tmpfs wasmcsi:p:b rw,size=0k\n\
53 1 0:42 / /k/c rw - tmpfs wasmcsi:p:c rw\n\
54 1 0:43 / /k/d rw - tmpfs wasmcsi:other:d rw,size=2048k\n\
55 1 0:44 / /k/e rw - tmpfs tmpfs rw,size=2048k\n\
56 1 7:1 / /k/f rw - xfs wasmcsi:p:f rw\n";
        let live = live(info, "wasmcsi:p:", 8 * GIB);
        assert_eq!(
            live,
            [
                Live {
                    device: "0:40".into(),
                    bytes: 1 << 20
                },
                Live {
                    device: "0:41".into(),
                    bytes: u64::MAX
                },
                Live {
                    device: "0:42".into(),
                    bytes: 4 * GIB
                },
            ]
        );
    }
}
