//! Embeds the console's assets in the `herald` binary.
//!
//! Inputs: the hydrate bundle made by `wasm-bindgen` (`herald.js`, `herald_bg.wasm` and
//! any `snippets/`) in `HERALD_WASM_DIR` (default `target/site/pkg`), the stylesheet
//! `style/main.css`, and the files of `public/`. The bundle and the stylesheet get
//! content-hashed names (`/pkg/herald-<hash>.js`, `…_bg.wasm`, `/pkg/herald-<hash>.css`)
//! and are served as immutable; every text-like asset is stored precompressed with
//! brotli and gzip as well. Without a bundle the binary still builds and serves the
//! console unhydrated (and says so at start).
//!
//! Also sets `HERALD_COMMIT` (the git commit, `+dirty` when the tree has changes) for
//! `herald --version`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use sha2::{Digest, Sha256};

include!("src/content_type.rs");

struct Asset {
    path: String,
    file: PathBuf,
    immutable: bool,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for var in ["HERALD_WASM_DIR", "HERALD_COMMIT", "LEPTOS_OUTPUT_NAME"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    commit(&root);
    println!("cargo:rustc-env=HERALD_TARGET={}", env::var("TARGET").unwrap());

    let wasm_dir = env::var("HERALD_WASM_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target/site/pkg"));
    let css = root.join("style/main.css");
    let public = root.join("public");
    // A directory named here is scanned for changes; a missing one makes this script
    // run again on every build, until the bundle exists.
    println!("cargo:rerun-if-changed={}", wasm_dir.display());
    println!("cargo:rerun-if-changed={}", css.display());
    println!("cargo:rerun-if-changed={}", public.display());
    println!("cargo:rerun-if-changed=src/content_type.rs");

    let release = env::var("PROFILE").as_deref() == Ok("release");
    let mut assets = Vec::new();

    // The hydrate bundle: one hash over the script and the module, so both names change together.
    let js = wasm_dir.join("herald.js");
    // cargo-leptos names the module herald.wasm (and tells Leptos so at compile time).
    let leptos_names = env::var_os("LEPTOS_OUTPUT_NAME").is_some();
    let wasm = if leptos_names { wasm_dir.join("herald.wasm") } else { wasm_dir.join("herald_bg.wasm") };
    let output_name = if js.is_file() && wasm.is_file() {
        let mut h = Sha256::new();
        h.update(fs::read(&js).unwrap());
        h.update(fs::read(&wasm).unwrap());
        let name = format!("herald-{}", short(&h.finalize()));
        let wasm_name = if leptos_names { format!("{name}.wasm") } else { format!("{name}_bg.wasm") };
        assets.push(Asset { path: format!("/pkg/{name}.js"), file: js.clone(), immutable: true });
        assets.push(Asset { path: format!("/pkg/{wasm_name}"), file: wasm.clone(), immutable: true });
        // wasm-bindgen's `snippets/` (imported relatively by the script) keep their names.
        for f in files_under(&wasm_dir) {
            let rel = f.strip_prefix(&wasm_dir).unwrap().to_string_lossy().replace('\\', "/");
            if rel.starts_with("snippets/") {
                assets.push(Asset { path: format!("/pkg/{rel}"), file: f, immutable: false });
            }
        }
        Some(name)
    } else {
        println!(
            "cargo:warning=no console bundle in {} (build it with scripts/build.sh); the console will not hydrate",
            wasm_dir.display()
        );
        None
    };

    let stylesheet = if css.is_file() {
        let path = format!("/pkg/herald-{}.css", short(&Sha256::digest(fs::read(&css).unwrap())));
        assets.push(Asset { path: path.clone(), file: css, immutable: true });
        path
    } else {
        String::new()
    };

    for f in files_under(&public) {
        let rel = f.strip_prefix(&public).unwrap().to_string_lossy().replace('\\', "/");
        assets.push(Asset { path: format!("/{rel}"), file: f, immutable: false });
    }

    let mut code = String::new();
    writeln!(code, "pub const OUTPUT_NAME: Option<&str> = {output_name:?};").unwrap();
    writeln!(code, "pub const STYLESHEET: &str = {stylesheet:?};").unwrap();
    writeln!(code, "pub static ASSETS: &[Embedded] = &[").unwrap();
    for (i, a) in assets.iter().enumerate() {
        let raw = fs::read(&a.file).unwrap();
        let etag = format!("\"{}\"", short(&Sha256::digest(&raw)));
        let kind = content_type(&a.path);
        let stored = out.join(format!("asset{i}"));
        fs::write(&stored, &raw).unwrap();
        let (mut br, mut gz) = ("None".to_owned(), "None".to_owned());
        if compressible(kind) {
            let b = brotli(&raw, if release { 11 } else { 5 });
            if b.len() * 10 < raw.len() * 9 {
                fs::write(out.join(format!("asset{i}.br")), &b).unwrap();
                br = format!("Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/asset{i}.br\")))");
            }
            let g = gzip(&raw, release);
            if g.len() * 10 < raw.len() * 9 {
                fs::write(out.join(format!("asset{i}.gz")), &g).unwrap();
                gz = format!("Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/asset{i}.gz\")))");
            }
        }
        writeln!(
            code,
            "    Embedded {{ path: {:?}, content_type: {kind:?}, etag: {etag:?}, immutable: {}, \
             raw: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/asset{i}\")), br: {br}, gzip: {gz} }},",
            a.path, a.immutable
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    fs::write(out.join("assets.rs"), code).unwrap();
}

fn short(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

fn compressible(kind: &str) -> bool {
    kind.starts_with("text/")
        || kind.contains("wasm")
        || kind.contains("json")
        || kind.contains("svg")
        || kind == "image/x-icon"
}

fn brotli(data: &[u8], quality: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams { quality, lgwin: 22, ..Default::default() };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
    out
}

fn gzip(data: &[u8], best: bool) -> Vec<u8> {
    let level = if best { flate2::Compression::best() } else { flate2::Compression::fast() };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `HERALD_COMMIT` for `--version`: given by the environment (a build from a tarball),
/// or read from git; `unknown` without either.
fn commit(root: &Path) {
    let commit = env::var("HERALD_COMMIT").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(root)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty()).unwrap_or_else(|| "unknown".to_owned())
    });
    println!("cargo:rustc-env=HERALD_COMMIT={commit}");
    // A new commit (HEAD moves, or the branch it names does) changes the version line.
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        let p = root.join(f);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
