//! Paging over ids in sorted order (list-volumes, list-snapshots). The
//! token is the last id of the previous page, so pages need no state
//! between calls, and a page still follows when that id has been deleted
//! meanwhile. Tokens are ids in the form `id::is_valid` accepts.

use std::ops::Range;

use crate::error::{fail, ErrorCode, Result};
use crate::id;

/// One page of `sorted` after `token` (empty: from the start), at most
/// `max` long (0: all). Returns the index range and the next token (empty
/// when nothing follows). A token this plugin cannot have made is ABORTED,
/// the spec's code for "start over".
pub fn page(sorted: &[String], token: &str, max: u32) -> Result<(Range<usize>, String)> {
    let start = if token.is_empty() {
        0
    } else if id::is_valid(token) {
        sorted.partition_point(|id| id.as_str() <= token)
    } else {
        return Err(fail(
            ErrorCode::Aborted,
            format!("starting token {token:?} was not made by this plugin"),
        ));
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
    fn invalid_token_is_aborted() {
        let e = page(&ids(2), "Not/An/Id", 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Aborted);
    }

    #[test]
    fn token_of_a_deleted_id_still_continues() {
        let v: Vec<String> = ["v00", "v02", "v03"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(page(&v, "v01", 1).unwrap(), (1..2, "v02".to_string()));
    }
}
