//! Who receives what: an event type's visibility (internal, public, granted) decides
//! which owners' endpoints may subscribe to it and which receive it, checked again at
//! every notification, so a changed grant applies to the next one.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

/// The endpoints a notification of `event_type` fans out to.
async fn receivers(h: &Herald, key: &str, event_type: &str) -> BTreeSet<String> {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/notifications",
            key,
            Some(&json!({"event_type": event_type, "payload": {"user": {"name": "Ada", "email": "ada@example.test"}}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["channel"] == "webhook")
        .map(|d| d["target"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn visibility_and_grants_decide_who_subscribes_and_who_receives() {
    let (_sink, h, _) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let scopes = ["endpoints:write", "endpoints:read", "notifications:write"];
    let acme = h.api_key_for(&scopes, Some("acme"), None).await;
    let globex = h.api_key_for(&scopes, Some("globex"), None).await;
    let receiver = herald_testkit::receiver::Receiver::start().await;
    let endpoint = |key: &str, path: &str, types: Value| {
        let body = json!({"url": receiver.url(path), "event_types": types});
        let (h, key) = (&h, key.to_owned());
        async move { h.call(Method::POST, "/api/v1/endpoints", &key, Some(&body)).await }
    };
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();

    // An internal event type: admins only.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/event-types",
            &admin,
            Some(&json!({"name": "invoice.paid", "visibility": "internal"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((v["visibility"].as_str(), v["grants"].as_array().map(Vec::len)), (Some("internal"), Some(0)));
    let (s, v) = endpoint(&acme, "/acme-named", json!(["invoice.paid"])).await;
    assert_eq!(
        (s, v["type"].as_str()),
        (422, Some("urn:herald:problem:unknown-event-type")),
        "an owner cannot subscribe: {v}"
    );
    let (_, v) = endpoint(&acme, "/acme", json!(["*"])).await;
    let acme_all = id(&v);
    let (_, v) = endpoint(&globex, "/globex", json!(["*"])).await;
    let globex_all = id(&v);
    let (s, v) = endpoint(&admin, "/admin", json!(["invoice.paid"])).await;
    assert_eq!(s, 201, "an admin's endpoint may: {v}");
    let admin_ep = id(&v);
    assert_eq!(
        receivers(&h, &admin, "invoice.paid").await,
        BTreeSet::from([admin_ep.clone()]),
        "* expands over visible types only"
    );
    let catalog = |key: &str| {
        let (h, key) = (&h, key.to_owned());
        async move {
            let (s, v) = h.call(Method::GET, "/api/v1/catalog", &key, None).await;
            assert_eq!(s, 200, "{v}");
            v["data"].as_array().unwrap().clone()
        }
    };
    let names = |types: &[Value]| types.iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(!names(&catalog(&acme).await).contains(&"invoice.paid".to_owned()), "an owner's catalog hides it");
    assert!(names(&catalog(&acme).await).contains(&"user.registered".to_owned()));
    assert!(names(&catalog(&admin).await).contains(&"invoice.paid".to_owned()));
    // A public type (the seeded one) reaches every subscribed owner, as before.
    let all = receivers(&h, &admin, "user.registered").await;
    assert!(all.contains(&acme_all) && all.contains(&globex_all), "{all:?}");

    // Granted to acme: acme's endpoints receive it from the next notification on, and
    // acme may now name it; globex still may not.
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/v1/event-types/invoice.paid",
            &admin,
            Some(&json!({"visibility": "granted", "grants": ["acme", " acme", "acme"]})),
        )
        .await;
    assert_eq!((s, v["grants"].clone()), (200, json!(["team:acme"])), "{v}");
    let seen = catalog(&acme).await;
    let paid = seen.iter().find(|t| t["name"] == "invoice.paid").expect("granted: in acme's catalog");
    assert_eq!(paid["grants"], json!([]), "an owner does not see who else is granted");
    assert!(!names(&catalog(&globex).await).contains(&"invoice.paid".to_owned()));
    assert_eq!(receivers(&h, &admin, "invoice.paid").await, BTreeSet::from([admin_ep.clone(), acme_all.clone()]));
    let (s, v) = endpoint(&acme, "/acme-named", json!(["invoice.paid"])).await;
    assert_eq!(s, 201, "{v}");
    let acme_named = id(&v);
    let (s, _) = endpoint(&globex, "/globex-named", json!(["invoice.paid"])).await;
    assert_eq!(s, 422);
    // An owner's endpoint cannot be edited onto a type it may not receive either.
    let (s, _) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{globex_all}"),
            &globex,
            Some(&json!({"event_types": ["invoice.paid"]})),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        receivers(&h, &admin, "invoice.paid").await,
        BTreeSet::from([admin_ep.clone(), acme_all.clone(), acme_named.clone()])
    );

    // Revoked: acme stops receiving at once.
    let (s, _) = h.call(Method::PATCH, "/api/v1/event-types/invoice.paid", &admin, Some(&json!({"grants": []}))).await;
    assert_eq!(s, 200);
    assert_eq!(receivers(&h, &admin, "invoice.paid").await, BTreeSet::from([admin_ep.clone()]));

    // Public: everyone subscribed.
    let (s, _) =
        h.call(Method::PATCH, "/api/v1/event-types/invoice.paid", &admin, Some(&json!({"visibility": "public"}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        receivers(&h, &admin, "invoice.paid").await,
        BTreeSet::from([admin_ep.clone(), acme_all.clone(), acme_named.clone(), globex_all.clone()])
    );

    // Bad input changes nothing.
    for bad in [
        json!({"visibility": "secret"}),
        json!({"grants": ["acme"]}),
        json!({"visibility": "granted", "grants": [""]}),
        json!({"visibility": "granted", "grants": ["a\u{0}b"]}),
        json!({"visibility": 7}),
    ] {
        let (s, v) = h.call(Method::PATCH, "/api/v1/event-types/invoice.paid", &admin, Some(&bad)).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
    }
    let (_, v) = h.call(Method::GET, "/api/v1/event-types/invoice.paid", &admin, None).await;
    assert_eq!((v["visibility"].as_str(), v["grants"].clone()), (Some("public"), json!([])));

    // Every change is audited with its before and after.
    let (_, log) =
        h.call(Method::GET, "/api/v1/audit?action=event_type.updated&target=invoice.paid", &admin, None).await;
    let entries = log["data"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log}");
    assert_eq!(entries[2]["after"]["grants"], json!(["team:acme"]));
    assert_eq!(entries[1]["before"]["grants"], json!(["team:acme"]));
    assert_eq!(entries[1]["after"]["grants"], json!([]));
}

#[tokio::test]
async fn addressed_notifications_reach_only_those_owners_and_a_limited_key_only_its_owners() {
    let (_sink, h, _) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let scopes = ["endpoints:write", "endpoints:read", "notifications:write"];
    let acme = h.api_key_for(&scopes, Some("acme"), None).await;
    let globex = h.api_key_for(&scopes, Some("globex"), None).await;
    let receiver = herald_testkit::receiver::Receiver::start().await;
    let mut ids = Vec::new();
    for (key, path) in [(&acme, "/acme"), (&globex, "/globex"), (&admin, "/admin")] {
        let body = json!({"url": receiver.url(path), "event_types": ["*"]});
        let (s, v) = h.call(Method::POST, "/api/v1/endpoints", key, Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let (acme_ep, globex_ep) = (ids[0].clone(), ids[1].clone());
    let send = |key: &str, owners: Option<Value>| {
        let mut body =
            json!({"event_type": "user.registered", "payload": {"user": {"name": "Ada", "email": "ada@example.test"}}});
        if let Some(o) = owners {
            body["owners"] = o;
        }
        let (h, key) = (&h, key.to_owned());
        async move { h.call(Method::POST, "/api/v1/notifications", &key, Some(&body)).await }
    };
    let webhooks = |v: &Value| -> BTreeSet<String> {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["channel"] == "webhook")
            .map(|d| d["target"].as_str().unwrap().to_owned())
            .collect()
    };
    let emails = |v: &Value| v["deliveries"].as_array().unwrap().iter().filter(|d| d["channel"] == "email").count();

    // Not addressed: every allowed owner. Addressed: only those, email unchanged.
    let (_, v) = send(&admin, None).await;
    assert_eq!(webhooks(&v).len(), 3);
    let (s, v) = send(&admin, Some(json!(["acme"]))).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!((webhooks(&v), emails(&v)), (BTreeSet::from([acme_ep.clone()]), 1));
    let (_, v) = send(&admin, Some(json!(["acme", "globex", "nobody"]))).await;
    assert_eq!(webhooks(&v), BTreeSet::from([acme_ep.clone(), globex_ep.clone()]));

    // A key limited to acme: its notifications reach acme's endpoints only, and it
    // cannot address anyone else; refused requests write nothing.
    let (ok, out, err) = run_cli(
        &h.env,
        &[
            "api-key",
            "create",
            "--name",
            "acme-integration",
            "--scope",
            "notifications:write",
            "--address-owner",
            "acme",
            "--owner",
            "integrator",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let limited = out.lines().last().unwrap().trim().to_owned();
    let (s, v) = send(&limited, None).await;
    assert_eq!((s, webhooks(&v)), (202, BTreeSet::from([acme_ep.clone()])), "{v}");
    let before = h.count("notifications").await;
    for owners in [json!(["globex"]), json!(["acme", "globex"])] {
        let (s, v) = send(&limited, Some(owners.clone())).await;
        assert_eq!((s, v["type"].as_str()), (403, Some("urn:herald:problem:forbidden")), "{owners}: {v}");
    }
    assert_eq!(h.count("notifications").await, before, "nothing written");
    let (s, v) = send(&limited, Some(json!(["acme"]))).await;
    assert_eq!((s, webhooks(&v)), (202, BTreeSet::from([acme_ep.clone()])));

    // The keys a limited key makes are limited too, at most to its owners.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/api-keys",
            &limited,
            Some(&json!({"name": "x", "scopes": ["notifications:write"], "addressable_owners": ["globex"]})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/api-keys",
            &limited,
            Some(&json!({"name": "y", "scopes": ["notifications:write"]})),
        )
        .await;
    assert_eq!((s, v["addressable_owners"].clone()), (201, json!(["team:acme"])), "{v}");
    let child = v["key"].as_str().unwrap().to_owned();
    let (s, _) = send(&child, Some(json!(["globex"]))).await;
    assert_eq!(s, 403);

    // Bad input.
    for owners in [json!([]), json!([""]), json!("acme"), json!((0..101).map(|i| format!("o{i}")).collect::<Vec<_>>())]
    {
        let (s, v) = send(&admin, Some(owners.clone())).await;
        assert!(s == 400 || s == 422, "{owners}: {s} {v}");
    }
}
