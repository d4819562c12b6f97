//! list-volumes paging over ids in sorted order. The token is the last id
//! of the previous page, so pages need no state between calls.

use crate::error::{fail, ErrorCode, Result};

/// One page of `sorted` after `token` (empty: from the start), at most
/// `max` long (0: all). Returns the index range and the next token (empty
/// when nothing follows).
pub fn page(sorted: &[String], token: &str, max: u32) -> Result<(std::ops::Range<usize>, String)> {
    let start = if token.is_empty() {
        0
    } else {
        // The spec's code for a token it cannot use: the CO starts over.
        let pos = sorted.binary_search_by(|id| id.as_str().cmp(token));
        pos.map(|i| i + 1).map_err(|_| {
            fail(
                ErrorCode::Aborted,
                format!(
                    "list-volumes: starting token {token:?} is not a volume here any more; \
                     start again"
                ),
            )
        })?
    };
    let end = match max {
        0 => sorted.len(),
        n => start.saturating_add(n as usize).min(sorted.len()),
    };
    let next = if end < sorted.len() && end > start {
        sorted[end - 1].clone()
    } else {
        String::new()
    };
    Ok((start..end, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v{i:02}")).collect()
    }

    #[test]
    fn all_at_once() {
        let v = ids(3);
        assert_eq!(page(&v, "", 0).unwrap(), (0..3, String::new()));
        assert_eq!(page(&v, "", 3).unwrap(), (0..3, String::new()));
        assert_eq!(page(&[], "", 0).unwrap(), (0..0, String::new()));
    }

    #[test]
    fn walks_pages() {
        let v = ids(5);
        let (r, t) = page(&v, "", 2).unwrap();
        assert_eq!((r, t.as_str()), (0..2, "v01"));
        let (r, t) = page(&v, &t, 2).unwrap();
        assert_eq!((r, t.as_str()), (2..4, "v03"));
        let (r, t) = page(&v, &t, 2).unwrap();
        assert_eq!((r, t.as_str()), (4..5, ""));
    }

    #[test]
    fn last_id_as_token_gives_empty_page() {
        let v = ids(2);
        assert_eq!(page(&v, "v01", 1).unwrap(), (2..2, String::new()));
    }

    #[test]
    fn unknown_token_is_aborted() {
        let e = page(&ids(2), "nope", 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Aborted);
    }
}
