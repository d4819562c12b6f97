//! Volume sizes: 1 MiB units, a per-kind minimum, the caller's limit and the
//! operator's cap. Pure arithmetic, no overflow panics.

use crate::error::{fail, invalid, ErrorCode, Result};

pub const MIB: u64 = 1 << 20;

/// What bounds a size besides the request: the minimum of the kind of
/// volume (`kind` names it in messages) and maxVolumeBytes.
#[derive(Clone, Copy, Debug)]
pub struct Bounds<'a> {
    pub min: u64,
    pub max: Option<u64>,
    pub kind: &'a str,
}

/// Size of a new volume. No required bytes: the default, lowered to fit
/// the limit when there is one.
pub fn for_create(
    required: Option<u64>,
    limit: Option<u64>,
    default: u64,
    b: Bounds,
) -> Result<u64> {
    let want = match (required, limit) {
        (Some(r), _) => r,
        (None, Some(l)) => default.min(l / MIB * MIB),
        (None, None) => default,
    };
    rounded(want, limit, b)
}

/// Size after an expansion. At or below `current` answers `current`
/// (nothing to do); unknown current (controller on another node) only
/// rounds and checks limits. No required bytes keeps the current size.
pub fn for_expand(
    current: Option<u64>,
    required: Option<u64>,
    limit: Option<u64>,
    b: Bounds,
) -> Result<u64> {
    let Some(req) = required else {
        return current.ok_or_else(|| invalid("expanding a volume needs required-bytes"));
    };
    match current {
        Some(cur) if req <= cur => Ok(cur),
        _ => Ok(rounded(req, limit, b)?.max(current.unwrap_or(0))),
    }
}

/// Whether an existing volume of `capacity` satisfies a capacity range.
pub fn fits(capacity: u64, required: Option<u64>, limit: Option<u64>) -> bool {
    required.is_none_or(|r| capacity >= r) && limit.is_none_or(|l| capacity <= l)
}

fn rounded(want: u64, limit: Option<u64>, b: Bounds) -> Result<u64> {
    let size = round_up(want)
        .ok_or_else(|| out_of_range(format!("{want} bytes is too large a volume")))?
        .max(b.min);
    let why = || {
        format!(
            "{} requested rounds up to {} (1 MiB units, at least {} for {})",
            human(want),
            human(size),
            human(b.min),
            b.kind
        )
    };
    if let Some(l) = limit.filter(|l| size > *l) {
        return Err(out_of_range(format!(
            "{}, above limit-bytes {}",
            why(),
            human(l)
        )));
    }
    if let Some(m) = b.max.filter(|m| size > *m) {
        return Err(out_of_range(format!(
            "{}, above this driver's maxVolumeBytes {}",
            why(),
            human(m)
        )));
    }
    Ok(size)
}

fn out_of_range(message: String) -> crate::error::Error {
    fail(ErrorCode::OutOfRange, message)
}

pub fn round_up(n: u64) -> Option<u64> {
    Some(n.checked_add(MIB - 1)? / MIB * MIB)
}

/// "300 MiB" for whole MiB, else "N bytes": messages read better.
pub fn human(n: u64) -> String {
    if n != 0 && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Parses a byte count: plain, or with a Kubernetes-style suffix
/// (Ki/Mi/Gi/Ti binary, K/M/G/T decimal).
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFS: Bounds = Bounds {
        min: 300 * MIB,
        max: None,
        kind: "xfs images",
    };
    const ANY: Bounds = Bounds {
        min: MIB,
        max: None,
        kind: "subvolumes",
    };

    #[test]
    fn rounds_up_to_unit_then_minimum() {
        assert_eq!(for_create(Some(1), None, 0, ANY).unwrap(), MIB);
        assert_eq!(for_create(Some(MIB + 1), None, 0, ANY).unwrap(), 2 * MIB);
        assert_eq!(for_create(Some(0), None, 0, ANY).unwrap(), MIB);
        assert_eq!(for_create(Some(10 * MIB), None, 0, XFS).unwrap(), 300 * MIB);
        assert_eq!(
            for_create(Some(301 * MIB - 1), None, 0, XFS).unwrap(),
            301 * MIB
        );
    }

    #[test]
    fn default_applies_without_required() {
        assert_eq!(for_create(None, None, 1 << 30, XFS).unwrap(), 1 << 30);
        // Lowered to fit the limit, rounded down to whole MiB.
        assert_eq!(
            for_create(None, Some(500 * MIB + 7), 1 << 30, XFS).unwrap(),
            500 * MIB
        );
    }

    #[test]
    fn beyond_limit_or_cap_is_out_of_range() {
        let e = for_create(Some(10 * MIB), Some(100 * MIB), 0, XFS).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.contains("limit-bytes 100 MiB"), "{}", e.message);
        let e = for_create(Some(MIB + 1), Some(MIB + 1), 0, ANY).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        let capped = Bounds {
            max: Some(MIB),
            ..ANY
        };
        let e = for_create(Some(2 * MIB), None, 0, capped).unwrap_err();
        assert!(e.message.contains("maxVolumeBytes"));
        assert_eq!(
            for_create(Some(u64::MAX), None, 0, ANY).unwrap_err().code,
            ErrorCode::OutOfRange
        );
    }

    #[test]
    fn expand_at_or_below_current_is_current() {
        let cur = Some(400 * MIB);
        assert_eq!(for_expand(cur, Some(MIB), None, XFS).unwrap(), 400 * MIB);
        assert_eq!(
            for_expand(cur, Some(400 * MIB), Some(MIB), XFS).unwrap(),
            400 * MIB
        );
        assert_eq!(for_expand(cur, None, None, XFS).unwrap(), 400 * MIB);
        assert_eq!(
            for_expand(cur, Some(400 * MIB + 1), None, XFS).unwrap(),
            401 * MIB
        );
    }

    #[test]
    fn expand_without_meta_rounds_and_checks() {
        assert_eq!(
            for_expand(None, Some(5 * MIB - 3), None, ANY).unwrap(),
            5 * MIB
        );
        assert!(for_expand(None, Some(5 * MIB + 1), Some(5 * MIB), ANY).is_err());
        assert_eq!(
            for_expand(None, None, None, ANY).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn fits_range() {
        assert!(fits(10, None, None));
        assert!(fits(10, Some(10), Some(10)));
        assert!(!fits(10, Some(11), None));
        assert!(!fits(10, None, Some(9)));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1073741824"), Some(1 << 30));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity(" 300Mi "), Some(300 * MIB));
        assert_eq!(parse_quantity("2G"), Some(2_000_000_000));
        assert_eq!(parse_quantity("Gi"), None);
        assert_eq!(parse_quantity("1.5Gi"), None);
        assert_eq!(parse_quantity("-1"), None);
        assert_eq!(parse_quantity("99999999999Ti"), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(300 * MIB), "300 MiB");
        assert_eq!(human(7), "7 bytes");
        assert_eq!(human(0), "0 bytes");
    }
}
