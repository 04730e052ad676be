//! Object ids: 64 lowercase hex characters from 32 random bytes, and lookup by a unique
//! prefix, the way crictl users type them.

use std::fmt::Write as _;

use crate::errors::{Error, Result};

/// Length of a full id.
pub const ID_LEN: usize = 64;

/// A fresh random id.
pub fn generate() -> String {
    let bytes: [u8; ID_LEN / 2] = rand::random();
    let mut id = String::with_capacity(ID_LEN);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Whether `s` has the shape of a full id.
pub fn is_full_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The one id of `ids` that `query` names: the id itself, or the only id starting with it.
/// `None` when nothing matches; an empty query or one matching several ids is an
/// `InvalidArgument` naming `kind` (e.g. "pod sandbox"), the prefix and the count.
pub fn resolve<'a>(
    kind: &str,
    query: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>> {
    if query.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{kind} id must not be empty"
        )));
    }
    let mut found = None;
    let mut count = 0usize;
    for id in ids {
        if id == query {
            return Ok(Some(id));
        }
        if id.starts_with(query) {
            found = Some(id);
            count += 1;
        }
    }
    if count > 1 {
        return Err(Error::InvalidArgument(format!(
            "{kind} id prefix {query:?} is ambiguous: it matches {count} {kind} ids"
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_64_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(is_full_id(&a), "{a}");
        assert!(is_full_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn full_id_shape() {
        assert!(is_full_id(&"a".repeat(64)));
        assert!(!is_full_id(&"a".repeat(63)));
        assert!(!is_full_id(&"A".repeat(64)));
        assert!(!is_full_id(&"g".repeat(64)));
    }

    #[test]
    fn resolves_exact_ids_and_unique_prefixes() {
        let ids = ["abc123", "abd456", "ff00"];
        assert_eq!(resolve("pod", "abc123", ids).unwrap(), Some("abc123"));
        assert_eq!(resolve("pod", "abc", ids).unwrap(), Some("abc123"));
        assert_eq!(resolve("pod", "f", ids).unwrap(), Some("ff00"));
        assert_eq!(resolve("pod", "abe", ids).unwrap(), None);
        assert_eq!(resolve("pod", "abc1234", ids).unwrap(), None);
    }

    #[test]
    fn an_exact_id_wins_over_longer_ids_it_prefixes() {
        let ids = ["abcdef", "abc"];
        assert_eq!(resolve("pod", "abc", ids).unwrap(), Some("abc"));
    }

    #[test]
    fn ambiguous_and_empty_queries_are_invalid_arguments() {
        let ids = ["abc123", "abd456", "abe789"];
        let err = resolve("pod sandbox", "ab", ids).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "pod sandbox id prefix \"ab\" is ambiguous: it matches 3 pod sandbox ids"
        );
        let err = resolve("pod sandbox", "", ids).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
}
