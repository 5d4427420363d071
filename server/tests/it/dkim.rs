//! DKIM: Herald signs with RSA-SHA256 and Ed25519-SHA256; dkimpy (an implementation
//! independent of the signer, in tools/.venv) verifies what the SMTP server received.
//! Keys are made by openssl, as an operator would make them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::*;

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A private key (PEM) and its DNS TXT record.
fn key(kind: &str, dir: &Path) -> (String, String) {
    match kind {
        "rsa" => {
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"], dir);
            let der = openssl(&["pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER"], dir);
            let p = base64::engine::general_purpose::STANDARD.encode(der);
            (std::fs::read_to_string(dir.join("rsa.pem")).unwrap(), format!("v=DKIM1; k=rsa; p={p}"))
        }
        _ => {
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"], dir);
            let der = openssl(&["pkey", "-in", "ed.pem", "-pubout", "-outform", "DER"], dir);
            // RFC 8463: p= is the raw 32-byte public key (the end of the SPKI).
            let p = base64::engine::general_purpose::STANDARD.encode(&der[der.len() - 32..]);
            (std::fs::read_to_string(dir.join("ed.pem")).unwrap(), format!("v=DKIM1; k=ed25519; p={p}"))
        }
    }
}

fn verify(record: &str, message: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(root.join("tools/.venv/bin/python"))
        .arg(root.join("tools/dkim_verify.py"))
        .arg(record)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tools/.venv (scripts/test.sh makes it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn mail_is_signed_with_rsa_and_ed25519_and_verified_independently() {
    let dir = std::env::temp_dir().join(format!("herald-dkim-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in ["rsa", "ed25519"] {
        let (pem, record) = key(kind, &dir);
        let key_file = dir.join(format!("{kind}.key"));
        std::fs::write(&key_file, &pem).unwrap();
        let key_path = key_file.display().to_string();
        // The RSA key inline, the Ed25519 key from a file.
        let key_setting = if kind == "rsa" {
            ("HERALD_DKIM_PRIVATE_KEY", pem.as_str())
        } else {
            ("HERALD_DKIM_PRIVATE_KEY_FILE", key_path.as_str())
        };
        let (sink, h, api) =
            setup(&[], &[("HERALD_DKIM_DOMAIN", "test.example"), ("HERALD_DKIM_SELECTOR", "herald1"), key_setting])
                .await;
        let id = h.send_welcome(&api, "Zoë", "zoe@example.net").await;
        let n: Value = eventually(Duration::from_secs(15), "the email", || async {
            let n = h.get_notification(&api, &id).await;
            (n["status"] == "succeeded").then_some(n)
        })
        .await;
        assert_eq!(n["deliveries"][0]["status"], "succeeded");
        let mail = sink.accepted().pop().unwrap();
        let sig = mail.header("DKIM-Signature").expect("a DKIM-Signature header");
        let alg = if kind == "rsa" { "a=rsa-sha256" } else { "a=ed25519-sha256" };
        assert!(sig.contains(alg) && sig.contains("d=test.example") && sig.contains("s=herald1"), "{sig}");
        let h_tag = sig.split(';').map(str::trim).find(|t| t.starts_with("h=")).unwrap().to_lowercase();
        assert!(h_tag.contains("list-unsubscribe-post"), "RFC 8058: the unsubscribe headers are signed: {h_tag}");
        let (ok, said) = verify(&record, &mail.data);
        assert!(ok, "{kind}: dkimpy says {said}");
        // Changed in transit: the signature no longer verifies.
        let tampered = mail.data.replacen("Subject: ", "Subject: Re: ", 1);
        let (ok, said) = verify(&record, &tampered);
        assert!(!ok, "{kind}: a changed subject still verified: {said}");
        h.stop().await;
    }

    // A bad key stops the start with a reason naming the setting, never the key.
    let db = fresh_database().await;
    let mut env = base_env(&db, "smtp://127.0.0.1:1");
    env.push(("HERALD_DKIM_DOMAIN".into(), "test.example".into()));
    env.push(("HERALD_DKIM_SELECTOR".into(), "herald1".into()));
    env.push((
        "HERALD_DKIM_PRIVATE_KEY".into(),
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----".into(),
    ));
    let (ok, out, err) = run_cli(&env, &["config", "check"]).await;
    assert!(!ok);
    let said = format!("{out}{err}");
    assert!(said.contains("HERALD_DKIM_PRIVATE_KEY") && !said.contains("bm90IGEga2V5"), "{said}");
    let (ok, _, err) = run_cli(&env, &["serve"]).await;
    assert!(!ok && err.contains("HERALD_DKIM_PRIVATE_KEY"), "{err}");
    env.retain(|(k, _)| k != "HERALD_DKIM_SELECTOR");
    let (ok, out, err) = run_cli(&env, &["config", "check"]).await;
    assert!(!ok && format!("{out}{err}").contains("HERALD_DKIM_SELECTOR"));
    let _ = std::fs::remove_dir_all(&dir);
}
