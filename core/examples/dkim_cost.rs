//! What DKIM signing costs per email, for the benchmark notes (not a test):
//! `cargo run --release -p herald-core --example dkim_cost`. Signs a welcome-sized
//! email with each key type and prints the time per message and messages per second
//! on one core.

use std::time::Instant;

use herald_core::dkim::{DkimSettings, Signer};
use lettre::message::{header, MultiPart};
use lettre::Message;

fn message() -> Message {
    Message::builder()
        .from("Herald <noreply@example.com>".parse().unwrap())
        .to("Ada <ada@example.net>".parse().unwrap())
        .subject("Welcome to Herald, Ada!")
        .message_id(Some("<0192-0000@example.com>".into()))
        .header(header::MIME_VERSION_1_0)
        .multipart(MultiPart::alternative_plain_html(
            "Welcome, Ada!\n\nYour account is ready. We are glad to have you.\n".repeat(4),
            "<!doctype html><html><body><h1>Welcome, Ada!</h1><p>Your account is ready.</p></body></html>".repeat(4),
        ))
        .unwrap()
}

fn main() {
    use base64::Engine;
    use rsa::pkcs8::EncodePrivateKey;
    let mut rng = rand::thread_rng();
    let rsa_pem = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap().to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend((0..32).map(|_| rand::random::<u8>()));
    let ed_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let n = 500;
    let base = Instant::now();
    for _ in 0..n {
        std::hint::black_box(message().formatted());
    }
    let build = base.elapsed().as_secs_f64() / n as f64;
    println!("building and formatting a message: {:.1} µs", build * 1e6);
    for (name, pem) in [("rsa-sha256 (2048)", rsa_pem.to_string()), ("ed25519-sha256", ed_pem)] {
        let signer = Signer::new(&DkimSettings::new("example.com", "s1", &pem).unwrap());
        let t = Instant::now();
        for _ in 0..n {
            let mut m = message();
            signer.sign(&mut m, true);
            std::hint::black_box(m.formatted());
        }
        let per = t.elapsed().as_secs_f64() / n as f64 - build;
        println!("{name}: {:.1} µs per email to sign ({:.0} emails/s per core)", per * 1e6, 1.0 / per);
    }
}
