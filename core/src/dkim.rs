//! DKIM signing of outgoing mail (lettre's `dkim` feature): RSA-SHA256 or
//! Ed25519-SHA256 (RFC 8463), relaxed/relaxed canonicalization.
//!
//! The key is PEM, as `openssl genrsa` / `openssl genpkey -algorithm ed25519` write it
//! (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`). It is read and checked when the
//! configuration is (at start-up and by `herald config check`).
//!
//! Signed headers: From, To, Subject, Date, Message-ID, MIME-Version, and on
//! non-transactional mail List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 asks
//! for them to be signed).

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::HeaderName;
use lettre::Message;

/// The DKIM settings, checked.
#[derive(Clone)]
pub struct DkimSettings {
    pub domain: String,
    pub selector: String,
    /// The key as lettre takes it: PKCS#1 PEM for RSA, base64 of the 32-byte seed for
    /// Ed25519.
    key: String,
    pub algorithm: &'static str,
}

impl std::fmt::Debug for DkimSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSettings")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The DER prefix of an Ed25519 PKCS#8 private key (RFC 8410), before the 32-byte seed.
const ED25519_PKCS8: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl DkimSettings {
    /// Reads and checks a key; the error says what is wrong, never the key.
    pub fn new(domain: &str, selector: &str, pem: &str) -> Result<Self, String> {
        use base64::Engine;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let domain = domain.trim().trim_end_matches('.').to_lowercase();
        let selector = selector.trim().to_owned();
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        if !label_ok(&domain) {
            return Err(format!("'{domain}' is not a domain name"));
        }
        if !label_ok(&selector) {
            return Err(format!("'{selector}' is not a DKIM selector (letters, digits, '-', '_', dots)"));
        }
        let (key, algorithm, alg) = if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            (pem.trim().to_owned(), "rsa-sha256", DkimSigningAlgorithm::Rsa)
        } else if let Some(der) = pem_body(pem, "PRIVATE KEY") {
            if der.len() == 48 && der[..16] == ED25519_PKCS8 {
                (
                    base64::engine::general_purpose::STANDARD.encode(&der[16..]),
                    "ed25519-sha256",
                    DkimSigningAlgorithm::Ed25519,
                )
            } else {
                let k = rsa::RsaPrivateKey::from_pkcs8_der(&der)
                    .map_err(|_| "the key is neither an RSA nor an Ed25519 private key".to_owned())?;
                if k.size() < 128 {
                    return Err("an RSA key for DKIM must have at least 1024 bits (2048 recommended)".into());
                }
                let pkcs1 =
                    k.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).map_err(|_| "cannot read the RSA key".to_owned())?;
                (pkcs1.to_string(), "rsa-sha256", DkimSigningAlgorithm::Rsa)
            }
        } else {
            return Err(
                "the key is not a PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)"
                    .into(),
            );
        };
        DkimSigningKey::new(&key, alg).map_err(|_| "the key cannot be used for signing".to_owned())?;
        Ok(Self { domain, selector, key, algorithm })
    }
}

/// Signs messages (built once per dispatcher).
pub struct Signer {
    plain: DkimConfig,
    with_list: DkimConfig,
}

impl Signer {
    pub fn new(s: &DkimSettings) -> Self {
        let config = |list: bool| {
            let alg =
                if s.algorithm == "ed25519-sha256" { DkimSigningAlgorithm::Ed25519 } else { DkimSigningAlgorithm::Rsa };
            let key = DkimSigningKey::new(&s.key, alg).expect("checked when the settings were read");
            let mut headers: Vec<HeaderName> = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version"]
                .into_iter()
                .map(HeaderName::new_from_ascii_str)
                .collect();
            if list {
                headers.push(HeaderName::new_from_ascii_str("List-Unsubscribe"));
                headers.push(HeaderName::new_from_ascii_str("List-Unsubscribe-Post"));
            }
            let relaxed = DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            };
            DkimConfig::new(s.selector.clone(), s.domain.clone(), key, headers, relaxed)
        };
        Self { plain: config(false), with_list: config(true) }
    }

    /// Adds the DKIM-Signature header.
    pub fn sign(&self, message: &mut Message, has_list_unsubscribe: bool) {
        message.sign(if has_list_unsubscribe { &self.with_list } else { &self.plain });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_and_names_are_refused_without_showing_the_key() {
        let e = DkimSettings::new(
            "mail.example.com",
            "s1",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(DkimSettings::new("mail.example.com", "s1", "hunter2").is_err());
        assert!(DkimSettings::new("not a domain", "s1", "x").is_err());
        assert!(DkimSettings::new("mail.example.com", "bad selector", "x").is_err());
    }
}
