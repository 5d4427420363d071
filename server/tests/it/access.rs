//! The access policy, tested as a table: every operation, through both doors (the API
//! and the console's server functions), for an admin, an owner, another owner, a portal
//! link's visitor, a read-only key and an API client's token. The doors must allow
//! exactly the same operations to the same caller (ARCHITECTURE.md, "Access matrix").
//! Then the attacks the policy closes: an admin's endpoint under an owner's name, keys
//! beyond the caller's rate or count, keys from portal sessions.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;
use crate::oidc::{browser, log_in, start, AUDIENCE};

/// The callers, in the order of the matrix's columns.
const CALLERS: [&str; 6] = ["admin", "owner", "other owner", "portal visitor", "read-only key", "client token"];

/// The scopes of an owner logged in to the console, given to the owners' API keys too,
/// so that both doors see the same caller.
const OWNER: &[&str] = &["endpoints:read", "endpoints:write", "notifications:read"];

/// Calls a console server function as the browser `b` (same-origin, as the console's
/// own pages do). Allowed: `200` with something other than `null`.
async fn console(b: &reqwest::Client, base: &str, f: &str, form: &[(&str, &str)]) -> (bool, String) {
    let r = b
        .post(format!("{base}/console/fn/{f}"))
        .header("Sec-Fetch-Site", "same-origin")
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status == 200 && text.trim() != "null", format!("{status} {text}"))
}

/// Calls the API with `key`. Allowed: a 2xx answer; refused: 403; hidden: 404.
async fn api(h: &Herald, key: &str, method: Method, path: &str, body: Option<&Value>) -> (bool, String) {
    let (status, v) = h.call(method, path, key, body).await;
    assert!(matches!(status, 200..=299 | 403 | 404), "{path}: {status} {v}");
    ((200..300).contains(&status), format!("{status} {v}"))
}

struct Op {
    name: &'static str,
    api: Option<(Method, String, Option<Value>)>,
    console: Option<(&'static str, Vec<(&'static str, String)>)>,
    /// Allowed for each of [`CALLERS`]: `y` or `n` (`-`: the caller has no such door).
    expect: &'static str,
}

#[tokio::test]
async fn the_doors_allow_the_same_operations_to_the_same_caller() {
    let crate::oidc::Idp { h, idp, .. } = start(AUDIENCE).await;
    let base = h.base.clone();
    let rx = herald_testkit::receiver::Receiver::start().await;

    // API callers.
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(OWNER, Some("acme"), None).await;
    let other = h.api_key_for(OWNER, Some("globex"), None).await;
    let readonly = h.api_key_for(&["endpoints:read", "notifications:read"], Some("acme"), None).await;
    let client = idp.client_token("notifications:write notifications:read endpoints:read endpoints:write").await;
    // Console callers: alice is of the team acme, bob of globex; a portal link for acme.
    let (admin_b, owner_b, other_b, portal_b) = (browser(), browser(), browser(), browser());
    log_in(&admin_b, &base, "admin").await;
    log_in(&owner_b, &base, "alice").await;
    log_in(&other_b, &base, "bob").await;
    let (s, link) = h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&json!({"owner": "acme"}))).await;
    assert_eq!(s, 201, "{link}");
    assert!(portal_b.get(link["url"].as_str().unwrap()).send().await.unwrap().status().is_redirection());

    // Data: an endpoint and a notification of acme's, and of globex's.
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/acme"), "event_types": ["*"]})).await;
    let ep_other = h.create_endpoint(&other, &json!({"url": rx.url("/globex"), "event_types": ["*"]})).await;
    let (ep, ep_other) = (ep["id"].as_str().unwrap().to_owned(), ep_other["id"].as_str().unwrap().to_owned());
    let acme_writer = h.api_key_for(&["notifications:write"], Some("acme"), None).await;
    let globex_writer = h.api_key_for(&["notifications:write"], Some("globex"), None).await;
    let n = h.send_welcome(&acme_writer, "Ada", "ada@example.test").await;
    let n_other = h.send_welcome(&globex_writer, "Bob", "bob@example.test").await;
    h.wait_terminal(&admin, &n).await;

    let no = Vec::new;
    let ops = vec![
        Op {
            name: "list endpoints",
            api: Some((Method::GET, "/api/v1/endpoints".into(), None)),
            console: Some(("endpoints/list", vec![("owner", String::new()), ("state_is", String::new())])),
            expect: "yyyyyy",
        },
        Op {
            name: "read acme's endpoint",
            api: Some((Method::GET, format!("/api/v1/endpoints/{ep}"), None)),
            console: Some(("endpoints/get", vec![("id", ep.clone())])),
            expect: "yynyyn",
        },
        Op {
            name: "reveal acme's signing secret",
            api: Some((Method::GET, format!("/api/v1/endpoints/{ep}/secret"), None)),
            console: Some(("endpoints/act", vec![("id", ep.clone()), ("action", "reveal".into())])),
            expect: "yynynn",
        },
        Op {
            name: "enable acme's endpoint",
            api: Some((Method::POST, format!("/api/v1/endpoints/{ep}/enable"), None)),
            console: Some(("endpoints/act", vec![("id", ep.clone()), ("action", "enable".into())])),
            expect: "yynynn",
        },
        Op {
            name: "register an endpoint",
            api: Some((
                Method::POST,
                "/api/v1/endpoints".into(),
                Some(json!({"url": rx.url("/new"), "event_types": ["*"]})),
            )),
            console: Some((
                "endpoints/save",
                vec![
                    ("id", String::new()),
                    ("url", rx.url("/new")),
                    ("description", String::new()),
                    ("event_types", "*".into()),
                    ("headers", String::new()),
                    ("rate_limit", String::new()),
                    ("retry_schedule", String::new()),
                ],
            )),
            expect: "yyyyny",
        },
        Op {
            name: "change acme's endpoint",
            api: Some((Method::PATCH, format!("/api/v1/endpoints/{ep}"), Some(json!({"description": "changed"})))),
            console: Some((
                "endpoints/save",
                vec![
                    ("id", ep.clone()),
                    ("url", rx.url("/acme")),
                    ("description", "changed".into()),
                    ("event_types", "*".into()),
                    ("headers", String::new()),
                    ("rate_limit", String::new()),
                    ("retry_schedule", String::new()),
                ],
            )),
            expect: "yynynn",
        },
        Op {
            name: "rotate acme's signing secret",
            api: Some((Method::POST, format!("/api/v1/endpoints/{ep}/secret/rotate"), None)),
            console: Some(("endpoints/act", vec![("id", ep.clone()), ("action", "rotate".into())])),
            expect: "yynynn",
        },
        Op {
            name: "send acme's endpoint a test event",
            api: Some((Method::POST, format!("/api/v1/endpoints/{ep}/test"), None)),
            console: Some(("endpoints/act", vec![("id", ep.clone()), ("action", "test".into())])),
            expect: "yynynn",
        },
        Op {
            name: "try a transformation on the sample event",
            api: Some((
                Method::POST,
                "/api/v1/transformations/test".into(),
                Some(json!({"script": "function handler(w) { return w; }"})),
            )),
            console: Some(("endpoints/transformation", vec![("script", "function handler(w) { return w; }".into())])),
            expect: "yyyyny",
        },
        Op {
            name: "list acme's endpoint's deliveries",
            api: Some((Method::GET, format!("/api/v1/endpoints/{ep}/deliveries"), None)),
            console: None,
            expect: "yyn-yn",
        },
        Op {
            name: "read a template",
            api: Some((Method::GET, "/api/v1/templates/welcome-email".into(), None)),
            console: Some(("templates/get", vec![("key", "welcome-email".into())])),
            expect: "ynnnnn",
        },
        Op {
            name: "make a portal link",
            api: Some((Method::POST, "/api/v1/portal-links".into(), Some(json!({"owner": "acme"})))),
            console: Some(("portal-links/create", vec![("owner", "acme".into()), ("ttl", String::new())])),
            expect: "ynnnnn",
        },
        Op {
            name: "list notifications",
            api: Some((Method::GET, "/api/v1/notifications".into(), None)),
            console: Some(("history", vec![("q[before]", String::new())])),
            expect: "yyynyy",
        },
        Op {
            name: "read acme's notification",
            api: Some((Method::GET, format!("/api/v1/notifications/{n}"), None)),
            console: Some(("notification", vec![("id", n.clone())])),
            expect: "yynnyn",
        },
        Op {
            name: "replay acme's notification",
            api: Some((Method::POST, format!("/api/v1/notifications/{n}/replay"), None)),
            console: Some(("notification/replay", vec![("id", n.clone())])),
            expect: "ynnnnn",
        },
        Op {
            name: "list API keys",
            api: Some((Method::GET, "/api/v1/api-keys".into(), None)),
            console: Some(("keys/list", no())),
            expect: "yyynyy",
        },
        Op {
            name: "make an API key",
            api: Some((
                Method::POST,
                "/api/v1/api-keys".into(),
                Some(json!({"name": "k", "scopes": ["endpoints:read"]})),
            )),
            console: Some((
                "keys/create",
                vec![("name", "k".into()), ("scopes", "endpoints:read".into()), ("owner", String::new())],
            )),
            expect: "yyynyy",
        },
        Op {
            name: "list event types",
            api: Some((Method::GET, "/api/v1/event-types".into(), None)),
            console: Some(("event-types/list", no())),
            expect: "ynnnnn",
        },
        Op {
            name: "list templates",
            api: Some((Method::GET, "/api/v1/templates".into(), None)),
            console: Some(("templates/list", no())),
            expect: "ynnnnn",
        },
        Op {
            name: "read the dashboard",
            api: Some((Method::GET, "/api/v1/stats".into(), None)),
            console: Some(("dashboard", vec![("window", "1h".into())])),
            expect: "ynnnnn",
        },
        Op {
            name: "read the audit log",
            api: Some((Method::GET, "/api/v1/audit".into(), None)),
            console: Some(("audit", no())),
            expect: "ynnnnn",
        },
        Op {
            name: "list portal links",
            api: Some((Method::GET, "/api/v1/portal-links".into(), None)),
            console: Some(("portal-links/list", no())),
            expect: "ynnnnn",
        },
        Op {
            name: "read the catalog",
            api: Some((Method::GET, "/api/v1/catalog".into(), None)),
            console: Some(("catalog", no())),
            expect: "yyyyyy",
        },
    ];

    let api_keys = [Some(&admin), Some(&owner), Some(&other), None, Some(&readonly), Some(&client)];
    let browsers = [Some(&admin_b), Some(&owner_b), Some(&other_b), Some(&portal_b), None, None];
    let mut wrong = Vec::new();
    for op in &ops {
        for (i, caller) in CALLERS.iter().enumerate() {
            let want = op.expect.as_bytes()[i] == b'y';
            if let (Some(key), Some((m, path, body))) = (api_keys[i], &op.api) {
                let (got, what) = api(&h, key, m.clone(), path, body.as_ref()).await;
                if got != want {
                    wrong.push(format!("API: {caller} / {}: expected allowed={want}, got {what}", op.name));
                }
            }
            if let (Some(b), Some((f, form))) = (browsers[i], &op.console) {
                let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (got, what) = console(b, &base, f, &form).await;
                if got != want {
                    wrong.push(format!("console: {caller} / {}: expected allowed={want}, got {what}", op.name));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the access matrix does not hold:\n{}", wrong.join("\n"));

    // Scoped: an owner's lists hold its own rows only, through both doors.
    let (_, mine) = h.call(Method::GET, "/api/v1/endpoints", &owner, None).await;
    let ids: Vec<&str> = mine["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&ep.as_str()) && !ids.contains(&ep_other.as_str()), "{ids:?}");
    for b in [&owner_b, &portal_b] {
        let (_, text) = console(b, &base, "endpoints/list", &[("owner", ""), ("state_is", "")]).await;
        assert!(text.contains(&ep) && !text.contains(&ep_other), "{text}");
    }
    let (_, text) = console(&owner_b, &base, "history", &[("q[before]", "")]).await;
    assert!(text.contains(&n) && !text.contains(&n_other), "{text}");
    let (_, hist) = h.call(Method::GET, "/api/v1/notifications", &owner, None).await;
    let seen: Vec<&str> = hist["data"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert!(seen.contains(&n.as_str()) && !seen.contains(&n_other.as_str()), "{hist}");
    h.stop().await;
    idp.stop().await;
}

/// Attack 3: an endpoint an admin made receives every owner's operational events and
/// internal event types; anyone sharing the admin's owner name (an owner's key, a portal
/// link for that owner) could change its URL or read its secret. Now it is managed by
/// admins only, and loses its reach when its creator's role goes.
#[tokio::test]
async fn an_admins_endpoint_is_not_an_owners_to_manage() {
    let crate::oidc::Idp { h, idp, .. } = start(AUDIENCE).await;
    let rx = herald_testkit::receiver::Receiver::start().await;
    let (ok, out, err) =
        run_cli(&h.env, &["api-key", "create", "--name", "ops", "--scope", "admin", "--owner", "acme"]).await;
    assert!(ok, "{err}");
    let admin_acme = out.lines().last().unwrap().trim().to_owned();
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(OWNER, Some("acme"), None).await;
    let writer = h.api_key_for(&["notifications:write"], Some("acme"), None).await;
    // An internal event type, which only admins' endpoints may receive.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/event-types",
            &admin,
            Some(&json!({"name": "ops.audit", "visibility": "internal"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ep = h.create_endpoint(&admin_acme, &json!({"url": rx.url("/ops"), "event_types": ["ops.audit"]})).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    assert_eq!(ep["owner"], "team:acme");

    // The owner of the same name does not see it, through either door.
    for (m, path, body) in [
        (Method::GET, format!("/api/v1/endpoints/{id}"), None),
        (Method::GET, format!("/api/v1/endpoints/{id}/secret"), None),
        (Method::PATCH, format!("/api/v1/endpoints/{id}"), Some(json!({"url": rx.url("/stolen")}))),
        (Method::DELETE, format!("/api/v1/endpoints/{id}"), None),
    ] {
        let (s, v) = h.call(m, &path, &owner, body.as_ref()).await;
        assert_eq!(s, 404, "{path}: {v}");
    }
    let (_, list) = h.call(Method::GET, "/api/v1/endpoints", &owner, None).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let (s, link) = h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&json!({"owner": "acme"}))).await;
    assert_eq!(s, 201);
    let portal = browser();
    portal.get(link["url"].as_str().unwrap()).send().await.unwrap();
    let (allowed, text) = console(&portal, &h.base, "endpoints/act", &[("id", &id), ("action", "reveal")]).await;
    assert!(!allowed && !text.contains("whsec_"), "{text}");
    let owner_b = browser();
    log_in(&owner_b, &h.base, "alice").await;
    let (allowed, text) = console(&owner_b, &h.base, "endpoints/get", &[("id", &id)]).await;
    assert!(!allowed, "{text}");

    // It receives the internal event type while its creator is an admin.
    let post = |key: String| {
        let h = &h;
        async move {
            let r = h.post(&key, &json!({"event_type": "ops.audit", "payload": {}})).await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()
        }
    };
    let accepted = post(writer.clone()).await;
    assert_eq!(accepted["deliveries"].as_array().unwrap().len(), 1, "{accepted}");

    // The creator's key is revoked: the endpoint is acme's like any other, and no longer
    // receives what only admins may.
    let (_, keys) = h.call(Method::GET, "/api/v1/api-keys", &admin, None).await;
    let ops_key = keys["data"].as_array().unwrap().iter().find(|k| k["name"] == "ops").unwrap()["id"].clone();
    let (s, _) = h.call(Method::DELETE, &format!("/api/v1/api-keys/{}", ops_key.as_str().unwrap()), &admin, None).await;
    assert_eq!(s, 204);
    let (s, v) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &owner, None).await;
    assert_eq!(s, 200, "{v}");
    let accepted = post(writer).await;
    assert_eq!(accepted["deliveries"].as_array().unwrap().len(), 0, "{accepted}");
    h.stop().await;
    idp.stop().await;
}

/// Attack 4: a caller grants no more than it holds — rate included — and the count of
/// keys per owner holds under concurrent requests. Attack 5: a portal link's visitor
/// makes no keys (a key would outlive the link).
#[tokio::test]
async fn keys_are_granted_within_the_callers_own_limits() {
    let crate::oidc::Idp { h, idp, .. } = start(AUDIENCE).await;
    let (ok, out, err) = run_cli(
        &h.env,
        &["api-key", "create", "--name", "slow", "--owner", "acme", "--rate-limit", "5", "--scope", "endpoints:read"],
    )
    .await;
    assert!(ok, "{err}");
    let slow = out.lines().last().unwrap().trim().to_owned();
    for (rate, want) in [(json!(0), 403), (json!(6), 403), (json!(5), 201), (json!(2), 201)] {
        let body = json!({"name": "k", "scopes": ["endpoints:read"], "rate_limit": rate});
        let (s, v) = h.call(Method::POST, "/api/v1/api-keys", &slow, Some(&body)).await;
        assert_eq!(s, want, "rate {rate}: {v}");
    }
    // Unspecified: the new key runs at most at its creator's rate.
    let (s, v) = h
        .call(Method::POST, "/api/v1/api-keys", &slow, Some(&json!({"name": "k", "scopes": ["endpoints:read"]})))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["rate_limit"], 5, "{v}");

    // At most 100 active keys per owner, however many requests race for the last ones.
    let owner = h.api_key_for(&["endpoints:read"], Some("globex"), None).await;
    let body = json!({"name": "race", "scopes": ["endpoints:read"]});
    let results = futures::future::join_all(
        (0..130).map(|_| async { h.call(Method::POST, "/api/v1/api-keys", &owner, Some(&body)).await.0 }),
    )
    .await;
    assert_eq!(results.iter().filter(|s| **s == 201).count(), 99, "{results:?}");
    assert!(results.iter().all(|s| *s == 201 || *s == 422), "{results:?}");
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE owner = 'team:globex' AND revoked_at IS NULL")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(active, 100);

    // A portal session makes no keys and lists none.
    let admin = h.api_key(&["admin"]).await;
    let (_, link) = h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&json!({"owner": "acme"}))).await;
    let portal = browser();
    portal.get(link["url"].as_str().unwrap()).send().await.unwrap();
    let (allowed, text) =
        console(&portal, &h.base, "keys/create", &[("name", "p"), ("scopes", "endpoints:read"), ("owner", "")]).await;
    assert!(!allowed && !text.contains("hk_"), "{text}");
    let (allowed, text) = console(&portal, &h.base, "keys/list", &[]).await;
    assert!(!allowed, "{text}");
    h.stop().await;
    idp.stop().await;
}

/// One namespace for owners with a prefix per kind: a team and an API client of the
/// same name used to be one owner (each saw the other's endpoints).
#[tokio::test]
async fn a_team_and_a_client_of_the_same_name_are_two_owners() {
    let crate::oidc::Idp { h, idp, .. } = start(AUDIENCE).await;
    let rx = herald_testkit::receiver::Receiver::start().await;
    let client = idp.client_token("endpoints:read endpoints:write").await;
    let ep = h.create_endpoint(&client, &json!({"url": rx.url("/ci"), "event_types": ["*"]})).await;
    assert_eq!(ep["owner"], "client:acme-ci");
    // A team that happens to bear the client's name.
    let team = h.api_key_for(OWNER, Some("acme-ci"), None).await;
    let (s, list) = h.call(Method::GET, "/api/v1/endpoints", &team, None).await;
    assert_eq!(s, 200);
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let (s, _) = h.call(Method::GET, &format!("/api/v1/endpoints/{}", ep["id"].as_str().unwrap()), &team, None).await;
    assert_eq!(s, 404);
    // Owners are named with their kind; Herald's own `key:` owners cannot be claimed.
    let admin = h.api_key(&["admin"]).await;
    for (owner, want) in [("client:acme-ci", 201), ("user:someone", 201), ("key:01234", 400), ("other:x", 400)] {
        let body = json!({"name": "k", "scopes": ["endpoints:read"], "owner": owner});
        let (s, v) = h.call(Method::POST, "/api/v1/api-keys", &admin, Some(&body)).await;
        assert_eq!(s, want, "{owner}: {v}");
    }
    h.stop().await;
    idp.stop().await;
}

/// The console's audit page verifies only what was written since its last view: it
/// starts from the newest stored checkpoint whose tag is valid (a forged one is passed
/// over), stores the head as the next, and sees a change made after it. What lies
/// before is `herald audit verify`'s to walk.
#[tokio::test]
async fn the_audit_page_verifies_from_its_last_checkpoint() {
    let crate::oidc::Idp { h, idp, .. } = start(AUDIENCE).await;
    let admin = browser();
    log_in(&admin, &h.base, "admin").await;
    let head =
        || async { sqlx::query_scalar::<_, i64>("SELECT max(seq) FROM audit_log").fetch_one(&h.db).await.unwrap() };
    let checkpoints = || async {
        sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_checkpoints ORDER BY seq").fetch_all(&h.db).await.unwrap()
    };
    let view = || async { console(&admin, &h.base, "audit", &[]).await.1 };
    let page = view().await;
    assert!(page.contains("Chain verified"), "{page}");
    let first = head().await;
    assert_eq!(checkpoints().await, [first]);

    // A new entry: the next view stores the new head.
    h.api_key(&["endpoints:read"]).await;
    assert!(view().await.contains("Chain verified"));
    let second = head().await;
    assert_eq!(checkpoints().await, [first, second]);

    // A forged checkpoint far ahead (its tag is not Herald's) is passed over.
    sqlx::query("INSERT INTO audit_checkpoints (seq, hash, tag) VALUES ($1, '\\x00', '\\x00')")
        .bind(second + 1000)
        .execute(&h.db)
        .await
        .unwrap();
    // An entry before the last checkpoint, rewritten behind Herald's back: the page no
    // longer walks that far (the CLI's full walk finds it); one after it is found.
    h.api_key(&["endpoints:read"]).await;
    let mut conn = h.db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = $1").bind(first).execute(&mut *conn).await.unwrap();
    assert!(view().await.contains("Chain verified"), "only what came after the checkpoint is walked");
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(!ok && err.contains(&format!("broken at entry {first}")), "{err}");
    h.api_key(&["endpoints:read"]).await;
    let last = head().await;
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = $1").bind(last).execute(&mut *conn).await.unwrap();
    let page = view().await;
    assert!(page.contains(&format!("Chain broken at entry {last}")), "{page}");
    drop(conn);
    h.stop().await;
    idp.stop().await;
}
