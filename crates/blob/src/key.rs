//! Blob names. A key becomes a file path (local store) or an object name (S3),
//! so it is validated once, here, rather than escaped in each backend.

use crate::BlobError;

/// Longest key accepted (bytes).
pub const MAX_KEY_LEN: usize = 512;
/// Longest `/`-separated segment (common file systems allow 255 bytes a name).
pub const MAX_SEGMENT_LEN: usize = 200;

/// A validated blob name: `/`-separated segments of ASCII letters, digits,
/// `-`, `_` and `.`, none empty, none starting with `.` (so no `.`, `..` and
/// no clash with the local store's `.tmp` directory). E.g.
/// `tenant-7/0197c7a4-…/original`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    pub fn new(key: impl Into<String>) -> Result<BlobKey, BlobError> {
        let key = key.into();
        let bad = |reason: &'static str| BlobError::InvalidKey {
            key: key.chars().take(80).collect(),
            reason,
        };
        if key.is_empty() {
            return Err(bad("is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(bad("is longer than 512 bytes"));
        }
        for seg in key.split('/') {
            if seg.is_empty() {
                return Err(bad(
                    "has an empty segment (leading, trailing or double '/')",
                ));
            }
            if seg.len() > MAX_SEGMENT_LEN {
                return Err(bad("has a segment longer than 200 bytes"));
            }
            if seg.starts_with('.') {
                return Err(bad("has a segment starting with '.'"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(bad(
                    "may only hold ASCII letters, digits, '-', '_', '.' and '/'",
                ));
            }
        }
        Ok(BlobKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BlobKey {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlobKey::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_keys_pass() {
        for k in ["a", "tenant-1/0197c7a4-aaaa/original", "t_1/x.jpg", "A/B/C"] {
            assert_eq!(BlobKey::new(k).unwrap().as_str(), k);
        }
    }

    #[test]
    fn traversal_and_odd_keys_are_refused() {
        for k in [
            "",
            "/abs",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "./a",
            ".tmp/x",
            "a/.hidden",
            "a\\b",
            "a b",
            "a\0b",
            "é",
            "a/%2e%2e",
        ] {
            let e = BlobKey::new(k).unwrap_err();
            assert!(e.to_string().starts_with("blob key"), "{k:?}: {e}");
        }
        assert!(BlobKey::new("x".repeat(201)).is_err());
        assert!(BlobKey::new(["x"; 300].join("/")).is_err());
    }

    proptest! {
        #[test]
        fn accepted_keys_never_escape(s in "[a-z./_-]{1,30}") {
            if let Ok(k) = BlobKey::new(s) {
                for seg in k.segments() {
                    prop_assert!(seg != ".." && seg != "." && !seg.is_empty());
                }
            }
        }
    }
}
