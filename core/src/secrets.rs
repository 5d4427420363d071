//! Webhook signing secrets: generation, encryption at rest, and Standard Webhooks v1
//! signatures.
//!
//! - A secret is `whsec_` + base64 of 32 random bytes (the spec asks for 24 to 64).
//! - At rest it is sealed with XChaCha20-Poly1305 under `HERALD_SECRET_KEY`, with a
//!   random 24-byte nonce stored in front of the ciphertext and the endpoint id as
//!   associated data, so a sealed secret cannot be moved to another endpoint.
//! - A signature is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as URL_B64};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// Associated data of tracking tokens (`seal_token`).
const TOKEN_AAD: &[u8] = b"herald/tracking-token/v1";

/// `HERALD_SECRET_KEY`: 32 bytes. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

/// Compared in constant time.
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parses 64 hexadecimal characters. The message never repeats the input.
    pub fn parse_hex(v: &str) -> Result<Self, String> {
        let v = v.trim();
        if v.len() != 64 {
            return Err(format!(
                "must be 32 bytes written as 64 hexadecimal characters (got {} characters); generate one with `openssl rand -hex 32`",
                v.len()
            ));
        }
        let bytes = hex::decode(v).map_err(|_| {
            "must be 64 hexadecimal characters (0-9, a-f); generate one with `openssl rand -hex 32`".to_owned()
        })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// A key of its own for one purpose (`label`), derived from this one:
    /// HMAC-SHA256(key, label). Knowing a derived key reveals nothing of this one.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// Encrypts a signing secret for endpoint `endpoint`.
    pub fn seal(&self, endpoint: Uuid, secret: &str) -> Vec<u8> {
        self.seal_aad(endpoint.as_bytes(), secret)
    }

    /// Encrypts an endpoint's custom headers (JSON). The associated data differs from a
    /// secret's, so neither can pass for the other.
    pub fn seal_headers(&self, endpoint: Uuid, json: &str) -> Vec<u8> {
        self.seal_aad(&headers_aad(endpoint), json)
    }

    pub fn open_headers(&self, endpoint: Uuid, sealed: &[u8]) -> Result<String, String> {
        self.open_aad(&headers_aad(endpoint), sealed)
    }

    /// Encrypts the secret of an endpoint's authentication (an OAuth client secret), with
    /// associated data of its own: it never opens as a signing secret or a header map.
    pub fn seal_auth(&self, endpoint: Uuid, secret: &str) -> Vec<u8> {
        self.seal_aad(&auth_aad(endpoint), secret)
    }

    pub fn open_auth(&self, endpoint: Uuid, sealed: &[u8]) -> Result<String, String> {
        self.open_aad(&auth_aad(endpoint), sealed)
    }

    fn seal_aad(&self, aad: &[u8], secret: &str) -> Vec<u8> {
        self.seal_bytes(aad, secret.as_bytes())
    }

    /// Decrypts a sealed secret. Fails if the key is wrong, the data was tampered with,
    /// or it belongs to another endpoint.
    pub fn open(&self, endpoint: Uuid, sealed: &[u8]) -> Result<String, String> {
        self.open_aad(endpoint.as_bytes(), sealed)
    }

    fn open_aad(&self, aad: &[u8], sealed: &[u8]) -> Result<String, String> {
        let plain = self.open_bytes(aad, sealed).ok_or_else(|| {
            "cannot decrypt a signing secret: HERALD_SECRET_KEY differs from the one that sealed it".to_owned()
        })?;
        String::from_utf8(plain).map_err(|_| "decrypted secret is not text".into())
    }

    fn seal_bytes(&self, aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
            .expect("XChaCha20-Poly1305 encryption cannot fail for small inputs");
        let mut out = nonce.to_vec();
        out.extend(ct);
        out
    }

    fn open_bytes(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() <= NONCE_BYTES {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        self.cipher().decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
    }

    /// An opaque URL-safe token carrying `msg` (encrypted and authenticated, with its own
    /// associated data so no sealed secret or header map passes for one).
    pub fn seal_token(&self, msg: &[u8]) -> String {
        URL_B64.encode(self.seal_bytes(TOKEN_AAD, msg))
    }

    /// An opaque URL-safe token for one `purpose` (its associated data): a token sealed
    /// for one purpose never opens for another, nor as a tracking token or a secret.
    pub fn seal_for(&self, purpose: &str, msg: &[u8]) -> String {
        URL_B64.encode(self.seal_bytes(format!("herald/{purpose}").as_bytes(), msg))
    }

    /// What a token from [`Self::seal_for`] with the same `purpose` carries; `None` for
    /// anything else (forged, altered, another purpose or key, over 2 KiB).
    pub fn open_for(&self, purpose: &str, token: &str) -> Option<Vec<u8>> {
        if token.len() > 2048 {
            return None;
        }
        self.open_bytes(format!("herald/{purpose}").as_bytes(), &URL_B64.decode(token).ok()?)
    }

    /// What a token from [`Self::seal_token`] carries; `None` for anything forged,
    /// altered, truncated or sealed under another key.
    pub fn open_token(&self, token: &str) -> Option<Vec<u8>> {
        if token.len() > 512 {
            return None;
        }
        self.open_bytes(TOKEN_AAD, &URL_B64.decode(token).ok()?)
    }
}

fn auth_aad(endpoint: Uuid) -> Vec<u8> {
    let mut aad = endpoint.as_bytes().to_vec();
    aad.extend_from_slice(b"/auth");
    aad
}

fn headers_aad(endpoint: Uuid) -> Vec<u8> {
    let mut aad = endpoint.as_bytes().to_vec();
    aad.extend_from_slice(b"/headers");
    aad
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// The HMAC key bytes of a `whsec_` secret.
pub fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    B64.decode(b64).map_err(|_| "the signing secret is not base64".to_owned())
}

/// One `v1,<base64>` signature of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per live key, space-separated.
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|k| sign(k, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_endpoint() {
        let key = SecretKey::from_bytes([7; 32]);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_bytes(&secret).unwrap().len(), 32);
        let sealed = key.seal(a, &secret);
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert_eq!(key.open(a, &sealed).unwrap(), secret);
        assert!(key.open(b, &sealed).is_err(), "bound to its endpoint");
        assert!(SecretKey::from_bytes([8; 32]).open(a, &sealed).is_err(), "wrong key");
        let headers = key.seal_headers(a, r#"{"Authorization":"Bearer x"}"#);
        assert_eq!(key.open_headers(a, &headers).unwrap(), r#"{"Authorization":"Bearer x"}"#);
        assert!(key.open(a, &headers).is_err(), "a sealed header map never opens as a secret");
        assert!(key.open_headers(a, &sealed).is_err(), "nor a secret as headers");
        assert!(key.open_headers(b, &headers).is_err(), "bound to its endpoint");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(a, &tampered).is_err());
    }

    #[test]
    fn tokens_are_opaque_and_refuse_any_change() {
        let key = SecretKey::from_bytes([7; 32]);
        let msg = b"delivery-and-link";
        let t = key.seal_token(msg);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "URL-safe: {t}");
        assert!(!t.contains("delivery"));
        assert_ne!(t, key.seal_token(msg), "a fresh nonce each time");
        assert_eq!(key.open_token(&t).unwrap(), msg);
        assert!(SecretKey::from_bytes([8; 32]).open_token(&t).is_none(), "another key");
        for i in [0, t.len() / 2, t.len() - 2] {
            let mut altered = t.clone().into_bytes();
            altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
            assert!(key.open_token(std::str::from_utf8(&altered).unwrap()).is_none(), "altered at {i}");
        }
        assert!(key.open_token(&t[..t.len() - 1]).is_none());
        assert!(key.open_token("").is_none());
        assert!(key.open_token(&"A".repeat(10_000)).is_none());
        let sealed_secret = key.seal(Uuid::nil(), "whsec_x");
        assert!(key.open_token(&URL_B64.encode(sealed_secret)).is_none(), "a sealed secret is no token");
    }

    #[test]
    fn secret_key_parsing_never_echoes() {
        assert!(SecretKey::parse_hex(&"ab".repeat(32)).is_ok());
        let e = SecretKey::parse_hex("zz".repeat(32).as_str()).unwrap_err();
        assert!(!e.contains("zz"));
        assert!(SecretKey::parse_hex("abcd").unwrap_err().contains("64"));
        assert_eq!(format!("{:?}", SecretKey::from_bytes([1; 32])), "SecretKey(<redacted>)");
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's reference libraries.
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
