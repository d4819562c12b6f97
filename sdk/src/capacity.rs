//! Volume sizes: the CO's capacity range met by rounding to the plugin's
//! unit, raising to its minimum and checking the limit and the operator's
//! cap — all before anything is made, so a refused request leaves nothing
//! behind. Pure arithmetic, no overflow panics. CSI's 0 ("unset") counts
//! as unset in either bound.

use crate::bindings::wasmcsi::plugin::types::CapacityRange;
use crate::error::{fail, invalid, Error, ErrorCode, Result};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// How a plugin sizes its volumes; plugins differ in `unit` (local-dir
/// rounds to 1 MiB, xsky-nfs keeps the bytes asked) and in the rest.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Sizes round up to a multiple of this; 1 keeps them exact.
    pub unit: u64,
    /// The smallest volume; smaller requests are raised to it.
    pub min: u64,
    /// The operator's cap, if any (e.g. a `maxVolumeBytes` setting).
    pub max: Option<u64>,
    /// The size when no bytes are required, lowered to fit the limit.
    pub default: u64,
    /// The kind of volume, for messages ("xfs images").
    pub kind: &'a str,
}

impl Rules<'_> {
    /// The size of a new volume, or OUT_OF_RANGE.
    pub fn for_create(&self, range: &CapacityRange) -> Result<u64> {
        let (required, limit) = bounds(range);
        let want = match (required, limit) {
            (Some(r), _) => r,
            (None, Some(l)) => self.default.min(l / self.unit() * self.unit()),
            (None, None) => self.default,
        };
        self.rounded(want, limit)
    }

    /// The size after an expansion. At or below `current` answers
    /// `current` (nothing to do); unknown current (the controller of a
    /// node-local volume) only rounds and checks. No required bytes keeps
    /// the current size.
    pub fn for_expand(&self, current: Option<u64>, range: &CapacityRange) -> Result<u64> {
        let (required, limit) = bounds(range);
        let Some(req) = required else {
            return current.ok_or_else(|| invalid("expanding a volume needs required-bytes"));
        };
        match current {
            Some(cur) if req <= cur => Ok(cur),
            _ => Ok(self.rounded(req, limit)?.max(current.unwrap_or(0))),
        }
    }

    fn unit(&self) -> u64 {
        self.unit.max(1)
    }

    fn rounded(&self, want: u64, limit: Option<u64>) -> Result<u64> {
        let size = round_up(want, self.unit())
            .ok_or_else(|| out_of_range(format!("{want} bytes is too large a volume")))?
            .max(self.min);
        let why = || {
            if size == want {
                return format!("{} requested", human(want));
            }
            let units = match self.unit() {
                1 => String::new(),
                u => format!("{} units, ", human(u)),
            };
            format!(
                "{} requested rounds up to {} ({units}at least {} for {})",
                human(want),
                human(size),
                human(self.min),
                self.kind
            )
        };
        if let Some(l) = limit.filter(|l| size > *l) {
            return Err(out_of_range(format!(
                "{}, above limit-bytes {}",
                why(),
                human(l)
            )));
        }
        if let Some(m) = self.max.filter(|m| size > *m) {
            return Err(out_of_range(format!(
                "{}, above this driver's maxVolumeBytes {}",
                why(),
                human(m)
            )));
        }
        // CSI carries sizes as int64: a size it cannot answer is never made.
        if size > WIRE_MAX {
            return Err(out_of_range(format!(
                "{}, above the largest size CSI can carry ({WIRE_MAX} bytes)",
                why()
            )));
        }
        Ok(size)
    }
}

/// The largest size a CSI answer can carry (its sizes are int64).
pub const WIRE_MAX: u64 = i64::MAX as u64;

/// Whether an existing volume of `capacity` satisfies a capacity range
/// (a repeated create is answered with it only if so).
pub fn fits(capacity: u64, range: &CapacityRange) -> bool {
    let (required, limit) = bounds(range);
    required.is_none_or(|r| capacity >= r) && limit.is_none_or(|l| capacity <= l)
}

/// What an expansion asks for: the required bytes, else the limit.
pub fn asked(range: &CapacityRange) -> Option<u64> {
    let (required, limit) = bounds(range);
    required.or(limit)
}

/// (required, limit), with CSI's 0 read as unset.
fn bounds(range: &CapacityRange) -> (Option<u64>, Option<u64>) {
    let set = |b: Option<u64>| b.filter(|b| *b > 0);
    (set(range.required_bytes), set(range.limit_bytes))
}

fn out_of_range(message: String) -> Error {
    fail(ErrorCode::OutOfRange, message)
}

/// `n` rounded up to a multiple of `unit`; `None` on overflow.
pub fn round_up(n: u64, unit: u64) -> Option<u64> {
    let unit = unit.max(1);
    Some(n.checked_add(unit - 1)? / unit * unit)
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

    const XFS: Rules = Rules {
        unit: MIB,
        min: 300 * MIB,
        max: None,
        default: 0,
        kind: "xfs images",
    };
    const ANY: Rules = Rules {
        unit: MIB,
        min: MIB,
        max: None,
        default: 0,
        kind: "subvolumes",
    };
    /// Exact bytes, 1 MiB at least, 1 GiB by default (xsky-nfs).
    const EXACT: Rules = Rules {
        unit: 1,
        min: MIB,
        max: None,
        default: GIB,
        kind: "quota trees",
    };

    fn range(required: Option<u64>, limit: Option<u64>) -> CapacityRange {
        CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    fn create(r: Rules, required: Option<u64>, limit: Option<u64>) -> Result<u64> {
        r.for_create(&range(required, limit))
    }

    #[test]
    fn rounds_up_to_unit_then_minimum() {
        assert_eq!(create(ANY, Some(1), None).unwrap(), MIB);
        assert_eq!(create(ANY, Some(MIB + 1), None).unwrap(), 2 * MIB);
        assert_eq!(create(ANY, Some(0), None).unwrap(), MIB);
        assert_eq!(create(XFS, Some(10 * MIB), None).unwrap(), 300 * MIB);
        assert_eq!(create(XFS, Some(301 * MIB - 1), None).unwrap(), 301 * MIB);
    }

    #[test]
    fn never_past_what_csi_can_carry() {
        let e = create(ANY, Some(i64::MAX as u64), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(
            e.message.contains("largest size CSI can carry"),
            "{}",
            e.message
        );
        assert_eq!(
            create(EXACT, Some(i64::MAX as u64), None).unwrap(),
            i64::MAX as u64
        );
        let e = ANY
            .for_expand(Some(GIB), &range(Some(u64::MAX - 3), None))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
    }

    #[test]
    fn unit_of_one_keeps_the_bytes() {
        assert_eq!(create(EXACT, None, None).unwrap(), GIB);
        assert_eq!(create(EXACT, Some(5 * GIB + 3), None).unwrap(), 5 * GIB + 3);
        assert_eq!(create(EXACT, None, Some(3 * GIB)).unwrap(), GIB);
        assert_eq!(create(EXACT, None, Some(GIB - 1)).unwrap(), GIB - 1);
        assert_eq!(create(EXACT, Some(1), None).unwrap(), MIB);
        let e = create(EXACT, None, Some(MIB / 2)).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(
            e.message
                .contains("(at least 1 MiB for quota trees), above limit-bytes"),
            "{}",
            e.message
        );
    }

    #[test]
    fn default_applies_without_required() {
        let xfs = Rules {
            default: GIB,
            ..XFS
        };
        assert_eq!(create(xfs, None, None).unwrap(), GIB);
        // Lowered to fit the limit, rounded down to the unit.
        assert_eq!(create(xfs, None, Some(500 * MIB + 7)).unwrap(), 500 * MIB);
    }

    #[test]
    fn beyond_limit_or_cap_is_out_of_range() {
        let e = create(XFS, Some(10 * MIB), Some(100 * MIB)).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.contains("limit-bytes 100 MiB"), "{}", e.message);
        assert!(
            e.message.contains("(1 MiB units, at least 300 MiB"),
            "{}",
            e.message
        );
        let e = create(ANY, Some(MIB + 1), Some(MIB + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        let capped = Rules {
            max: Some(MIB),
            ..ANY
        };
        let e = create(capped, Some(2 * MIB), None).unwrap_err();
        assert_eq!(
            e.message,
            "2 MiB requested, above this driver's maxVolumeBytes 1 MiB"
        );
        assert_eq!(
            create(ANY, Some(u64::MAX), None).unwrap_err().code,
            ErrorCode::OutOfRange
        );
    }

    #[test]
    fn expand_at_or_below_current_is_current() {
        let cur = Some(400 * MIB);
        let expand = |r, l| XFS.for_expand(cur, &range(r, l));
        assert_eq!(expand(Some(MIB), None).unwrap(), 400 * MIB);
        assert_eq!(expand(Some(400 * MIB), Some(MIB)).unwrap(), 400 * MIB);
        assert_eq!(expand(None, None).unwrap(), 400 * MIB);
        assert_eq!(expand(Some(400 * MIB + 1), None).unwrap(), 401 * MIB);
    }

    #[test]
    fn expand_without_current_rounds_and_checks() {
        let expand = |r, l| ANY.for_expand(None, &range(r, l));
        assert_eq!(expand(Some(5 * MIB - 3), None).unwrap(), 5 * MIB);
        assert!(expand(Some(5 * MIB + 1), Some(5 * MIB)).is_err());
        assert_eq!(
            expand(None, None).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn fits_range() {
        assert!(fits(10, &range(None, None)));
        assert!(fits(10, &range(Some(10), Some(10))));
        assert!(!fits(10, &range(Some(11), None)));
        assert!(!fits(10, &range(None, Some(9))));
        assert!(fits(10, &range(Some(5), Some(0))), "0 is unset");
    }

    #[test]
    fn asked_is_required_else_limit() {
        assert_eq!(asked(&range(Some(3), Some(9))), Some(3));
        assert_eq!(asked(&range(Some(0), Some(9))), Some(9));
        assert_eq!(asked(&range(None, None)), None);
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
