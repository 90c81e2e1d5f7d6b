//! The bearer token: what the CLI sends in `authorization: Bearer …` and
//! what a manager compares it with (from `api_token_file`).
//!
//! The token is never printed: its `Debug` shows only that there is one,
//! and the metadata value is marked sensitive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};

/// The metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// A token that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {path} is empty: put the token on its first line (`pgquorum tls init` writes one)")]
    EmptyFile { path: PathBuf },
    #[error("the token {where_} is empty")]
    Empty { where_: String },
    #[error("the token {where_} has characters other than printable ASCII (no spaces)")]
    Characters { where_: String },
}

/// A shared secret. Compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text; `where_` says where it came from, for messages
    /// (for example "from --token").
    pub fn new(text: &str, where_: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty {
                where_: where_.to_string(),
            });
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Characters {
                where_: where_.to_string(),
            });
        }
        Ok(Token(Arc::from(text)))
    }

    /// The first line of a file.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let line = text.lines().next().unwrap_or("").trim();
        if line.is_empty() {
            return Err(TokenError::EmptyFile {
                path: path.to_path_buf(),
            });
        }
        Token::new(line, &format!("in {}", path.display()))
    }

    /// `Bearer <token>`, marked sensitive (kept out of debug output).
    pub fn header_value(&self) -> MetadataValue<Ascii> {
        // Checked in `new`: printable ASCII only, which is always a valid
        // header value; the fallback can only be an empty (refused) token.
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0))
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer"));
        value.set_sensitive(true);
        value
    }

    /// Whether `presented` (the whole header value) is `Bearer <this token>`.
    pub fn matches_header(&self, presented: &[u8]) -> bool {
        let given = presented
            .strip_prefix(b"Bearer ")
            .or_else(|| presented.strip_prefix(b"bearer "))
            .unwrap_or(b"");
        constant_time_eq(given, self.0.as_bytes())
    }
}

/// Compare two secrets without an early exit: the SHA-256 digests are
/// compared byte by byte in full, so neither the position of the first
/// difference nor the lengths show in the time taken.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    let mut diff = 0u8;
    for (x, y) in da.iter().zip(db.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn header() {
        let t = Token::new("abc123", "from a test").unwrap();
        assert!(t.matches_header(b"Bearer abc123"));
        assert!(t.matches_header(b"bearer abc123"));
        assert!(!t.matches_header(b"abc123"));
        assert!(!t.matches_header(b"Bearer abc1234"));
        assert!(!t.matches_header(b"Basic abc123"));
        assert!(!t.matches_header(b"Bearer "));
        assert_eq!(t.header_value().to_str().unwrap(), "Bearer abc123");
        assert!(!format!("{:?} {:?}", t, t.header_value()).contains("abc123"));
    }

    #[test]
    fn bad_tokens() {
        assert!(Token::new("  ", "from --token").is_err());
        assert!(Token::new("a b", "from --token").is_err());
        assert!(Token::new("ключ", "from --token").is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = Token::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = Token::from_file(&empty).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let good = dir.path().join("token");
        std::fs::write(&good, "t0ken\nignored\n").unwrap();
        assert!(Token::from_file(&good)
            .unwrap()
            .matches_header(b"Bearer t0ken"));
    }
}
