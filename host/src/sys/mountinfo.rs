//! The one reader of /proc/self/mountinfo: every line as the fields the
//! host uses, with the kernel's octal escapes undone.

use std::path::PathBuf;

/// One line of /proc/self/mountinfo (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's id (what statx's `STATX_MNT_ID` reports).
    pub id: u64,
    /// The filesystem's device, `major:minor`; bind mounts share it.
    pub device: String,
    /// The directory of that filesystem mounted here.
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, ...).
    pub mount_options: String,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source (a device, an export, a tmpfs's name).
    pub source: String,
    /// Per-superblock options (`size=…k` of a tmpfs, ...).
    pub super_options: String,
}

impl MountInfo {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "ro")
    }
}

/// The mount table of this process's namespace, in mount order.
pub fn read() -> std::io::Result<Vec<MountInfo>> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|text| parse(&text))
}

/// Every well-formed line of a mountinfo text; others are skipped.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    // Optional fields sit between the sixth field and " - ".
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    Some(MountInfo {
        id: left.first()?.parse().ok()?,
        device: left.get(2)?.to_string(),
        root: unescape(left.get(3)?),
        point: PathBuf::from(unescape(left.get(4)?)),
        mount_options: left.get(5)?.to_string(),
        fs_type: right.next()?.to_string(),
        source: unescape(right.next()?),
        super_options: right.next().unwrap_or("").to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let n = d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field_with_optional_fields_and_escapes() {
        let text =
            "40 22 7:0 / /k/a\\040b rw,relatime shared:1 master:2 - xfs /dev/loop0 rw,attr2\n\
                    garbage\n\
                    41 22 0:50 /sub /k/t ro - tmpfs wasmcsi:p:x rw,size=1024k\n";
        let table = parse(text);
        assert_eq!(table.len(), 2);
        assert_eq!(table[0].id, 40);
        assert_eq!(table[0].point, PathBuf::from("/k/a b"));
        assert_eq!(
            (table[0].fs_type.as_str(), table[0].source.as_str()),
            ("xfs", "/dev/loop0")
        );
        assert!(!table[0].read_only() && table[1].read_only());
        assert_eq!(table[1].root, "/sub");
        assert_eq!(table[1].super_options, "rw,size=1024k");
    }
}
