//! `/api/v1/openapi.json`: an OpenAPI 3.1 document generated from the code, holding
//! every route of the API router and nothing else, and valid by an independent
//! validator (openapi-spec-validator, installed by scripts/test.sh in tools/.venv).

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::harness::*;

/// The (method, path) pairs the router registers through `routes!`, read from the
/// handlers named in `core/src/api/mod.rs` and their `#[utoipa::path]` annotations.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/api");
    let router = std::fs::read_to_string(api.join("mod.rs")).unwrap();
    // Nothing under /api/v1 is routed around the documented router but the document.
    let plain: Vec<&str> = router.match_indices(".route(\"/api/v1").map(|(i, _)| &router[i..i + 40]).collect();
    assert_eq!(plain.len(), 1, "only openapi.json is routed with .route: {plain:?}");
    assert!(plain[0].starts_with(".route(\"/api/v1/openapi.json\""), "{plain:?}");
    let mut out = BTreeSet::new();
    for (i, _) in router.match_indices("routes!(") {
        let list = &router[i + 8..i + router[i..].find(')').unwrap()];
        for handler in list.split(',').map(str::trim) {
            let (module, func) = handler.split_once("::").unwrap();
            let src = std::fs::read_to_string(api.join(format!("{module}.rs"))).unwrap();
            let at = src.find(&format!("pub async fn {func}(")).unwrap_or_else(|| panic!("no handler {handler}"));
            let ann = src[..at].rfind("#[utoipa::path(").unwrap_or_else(|| panic!("{handler} is not annotated"));
            let head = &src[ann + 15..at];
            let method = head.trim_start().split(',').next().unwrap().trim().to_uppercase();
            let path = head.split("path = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
            out.insert((method, path));
        }
    }
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_is_every_route_and_nothing_else_and_valid() {
    let (_sink, h, _) = setup(&[], &[]).await;
    let r = h.http.get(format!("{}/api/v1/openapi.json", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let documented = routes_in_document(&doc);
    assert!(documented.len() >= 33, "{} operations", documented.len());
    assert_eq!(documented, routes_in_source(), "the document and the router's handlers differ");

    // Each documented operation is routed: without credentials it is a 401 from the
    // handler's auth, not the 404 the router gives a path it does not have.
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { seg.to_owned() })
            .collect::<Vec<_>>()
            .join("/");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = h.http.request(m, format!("{}{concrete}", h.base)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    // And something it does not document is the router's 404.
    let (s, v) = h.call(Method::GET, "/api/v1/undocumented", "x", None).await;
    assert_eq!((s, v["type"].as_str()), (404, Some("urn:herald:problem:not-found")));

    // An independent validator accepts it.
    let file = std::env::temp_dir().join(format!("herald-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/.venv/bin/openapi-spec-validator");
    assert!(validator.exists(), "{} is missing: scripts/test.sh installs it", validator.display());
    let out = std::process::Command::new(&validator).args(["--schema", "3.1"]).arg(&file).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openapi-spec-validator: {said}");
    // The validator is not a rubber stamp: a broken document fails it.
    let mut broken = doc.clone();
    broken["paths"]["/api/v1/notifications"]["get"]["responses"] = Value::String("none".into());
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = std::process::Command::new(&validator).args(["--schema", "3.1"]).arg(&file).output().unwrap();
    assert!(!out.status.success(), "the validator accepted a broken document");
    let _ = std::fs::remove_file(&file);
}
