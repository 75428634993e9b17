//! Bootstrap credentials: a token proves "I am namespace/service-account" to the identity and
//! discovery RPCs. It is an HMAC-SHA256 over "namespace/service_account" under a 32-byte key kept
//! in `<state_dir>/token.key`, so tokens survive restarts and need no database. Tokens are secrets:
//! never log them.
use std::io;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::files::{create_exclusive, hex, unhex};

const PREFIX: &str = "trellis1";
const KEY_LEN: usize = 32;
pub const KEY_FILE: &str = "token.key";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a {KEY_LEN}-byte hex key")]
    BadKeyFile(PathBuf),
    #[error("cannot generate a random key")]
    Random,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    pub service_account: String,
}

/// Issues and verifies tokens with one key.
pub struct TokenAuthority {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority { key: <redacted> }")
    }
}

impl TokenAuthority {
    /// Loads `<state_dir>/token.key`, creating it (mode 0600) on first start. Safe to run in
    /// several processes at once on a fresh directory: the key is created exclusively, and a
    /// process that loses the race uses the winner's key, so every token verifies.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, TokenError> {
        let path = state_dir.join(KEY_FILE);
        match Self::load(&path) {
            Err(TokenError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            loaded => return loaded,
        }
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| TokenError::Random)?;
        let text = format!("{}\n", hex(&key));
        let created =
            create_exclusive(&path, text.as_bytes(), 0o600).map_err(|source| TokenError::Io {
                path: path.clone(),
                source,
            })?;
        if created {
            Ok(Self::from_key(&key))
        } else {
            Self::load(&path)
        }
    }

    fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.to_owned(),
            source,
        })?;
        let key = unhex(text.trim()).filter(|k| k.len() == KEY_LEN);
        key.map(|k| Self::from_key(&k))
            .ok_or_else(|| TokenError::BadKeyFile(path.to_owned()))
    }

    /// An authority with a given key (tests, or keys kept elsewhere).
    pub fn from_key(key: &[u8]) -> Self {
        TokenAuthority {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// `trellis1.<namespace>.<service_account>.<hex mac>`.
    pub fn issue(&self, namespace: &str, service_account: &str) -> String {
        let tag = hmac::sign(
            &self.key,
            signed_text(namespace, service_account).as_bytes(),
        );
        format!(
            "{PREFIX}.{namespace}.{service_account}.{}",
            hex(tag.as_ref())
        )
    }

    /// Checks the MAC in constant time and returns what the token grants.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let rest = token
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(TokenError::Malformed)?;
        // The namespace is a DNS label (no dots) and the MAC is hex, so the service account (which
        // may contain dots) is everything between them.
        let (namespace, rest) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let (service_account, mac_hex) = rest.rsplit_once('.').ok_or(TokenError::Malformed)?;
        if namespace.is_empty() || service_account.is_empty() {
            return Err(TokenError::Malformed);
        }
        let mac = unhex(mac_hex).ok_or(TokenError::Malformed)?;
        hmac::verify(
            &self.key,
            signed_text(namespace, service_account).as_bytes(),
            &mac,
        )
        .map_err(|_| TokenError::BadSignature)?;
        Ok(Grant {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }
}

fn signed_text(namespace: &str, service_account: &str) -> String {
    format!("{namespace}/{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify() {
        let ta = TokenAuthority::from_key(&[7; 32]);
        let token = ta.issue("default", "hello.v1");
        assert!(token.starts_with("trellis1.default.hello.v1."));
        let grant = ta.verify(&token).unwrap();
        assert_eq!(grant.namespace, "default");
        assert_eq!(grant.service_account, "hello.v1");
    }

    #[test]
    fn tampered_tokens_and_other_keys_are_refused() {
        let ta = TokenAuthority::from_key(&[7; 32]);
        let token = ta.issue("default", "hello");
        let forged = token.replace(".hello.", ".admin.");
        assert!(matches!(ta.verify(&forged), Err(TokenError::BadSignature)));
        let mut flipped = token.clone();
        let last = if flipped.ends_with('0') { '1' } else { '0' };
        flipped.pop();
        flipped.push(last);
        assert!(matches!(ta.verify(&flipped), Err(TokenError::BadSignature)));
        let other = TokenAuthority::from_key(&[8; 32]);
        assert!(matches!(
            other.verify(&token),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(ta.verify("garbage"), Err(TokenError::Malformed)));
        assert!(matches!(
            ta.verify("trellis1.a.b.zz"),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn key_is_created_once_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = TokenAuthority::load_or_create(dir.path()).unwrap();
        let token = first.issue("ns", "sa");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert!(second.verify(&token).is_ok());
    }
}
