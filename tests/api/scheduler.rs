//! The scheduler (issue 14): a create that finds no room waits in the queue (PENDING,
//! with its position and reason), starts when room frees, and leaves the queue past
//! `scheduler.create_wait` or `scheduler.max_wait`; queue bounds and quota count the
//! waiting sessions; explain says where a session would go or why it would wait; the
//! cluster's policy and placement decide the order and the agent; a placement with a
//! stale fencing token changes nothing. Agents here are fake (fixed capacities) or the
//! built-in one, on both deployments.

use std::time::Duration;

use backendai_manager::config::Settings;
use backendai_manager::ledger::{self, Placed, QueueBounds, SessionRequest};
use entity::agents;
use entity::kernels::KernelStatus;
use entity::keypairs;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

use crate::faults::{agent, fake_agent, session};
use crate::helpers::{
    assert_problem, create_session, eventually, ok_json, sessions_named, spawn_app_with, unique, Backend, TestApp,
    BACKENDS,
};

/// No built-in agent; agents of fixed capacities come from [`cluster`].
pub(crate) fn quiet(settings: &mut Settings) {
    settings.local_agent.enabled = false;
    settings.manager.heartbeat_timeout = 120.0;
}

/// An app on `backend` with fake agents of `(cpu, mem MiB)` each, overbooking off, and
/// the images `small` (1 CPU, 1,000 MiB), `big` (3,000 MiB) and `giant` (90,000 MiB).
pub(crate) async fn cluster(
    backend: Backend,
    agents: &[(f64, i64)],
    customize: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let app = spawn_app_with(backend, |s| {
        quiet(s);
        customize(s);
    })
    .await?;
    let config = app.state.stores.config.clone();
    config.put("config/overbook/cpu", "1").await.unwrap();
    config.put("config/overbook/mem", "1").await.unwrap();
    eventually("the overbook factors are 1", Duration::from_secs(10), || async {
        (app.state.overbook.factors() == (1.0, 1.0, 1.0)).then_some(())
    })
    .await;
    for (name, mem) in [("small", 1000), ("big", 3000), ("giant", 90_000)] {
        let fields = [
            ("cpu", "1".to_owned()),
            ("mem", mem.to_string()),
            ("gpu", "0".to_owned()),
            ("runner", "shell".to_owned()),
            ("command", "bash".to_owned()),
            ("tags/latest", format!("{name}:latest")),
        ];
        let pairs: Vec<(String, String)> = fields.into_iter().map(|(k, v)| (format!("images/{name}/{k}"), v)).collect();
        config.put_many(&pairs).await.unwrap();
    }
    for (i, (cpu, mem)) in agents.iter().enumerate() {
        fake_agent(&app, &format!("i-{i}"), json!({"cpu": cpu, "mem": mem, "gpu": 0})).await;
    }
    Some(app)
}

pub(crate) async fn create(app: &TestApp, image: &str, token: &str) -> reqwest::Response {
    create_session(app, image, token).await
}

/// Starts a create in the background (it waits for room).
fn create_later(app: &TestApp, image: &str, token: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let (app, image, token) = (app.clone_handle(), image.to_owned(), token.to_owned());
    tokio::spawn(async move { create(&app, &image, &token).await })
}

async fn info(app: &TestApp, token: &str) -> reqwest::Response {
    app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await
}

/// Waits until `token` is PENDING, and returns its info.
async fn pending(app: &TestApp, token: &str) -> Value {
    eventually(&format!("{token} waits in the queue"), Duration::from_secs(15), || async {
        let response = info(app, token).await;
        if response.status() != 200 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        (body["status"] == "PENDING").then_some(body)
    })
    .await
}

pub(crate) async fn concurrency_used(app: &TestApp) -> i32 {
    keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().unwrap().concurrency_used
}

#[actix_web::test]
async fn a_create_without_room_waits_in_the_queue_and_starts_when_room_frees() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |_| {}).await else { continue };
        let (first, second) = (unique("first"), unique("second"));
        assert_eq!(create(&app, "big", &first).await.status(), 201, "{backend:?}");
        let waiting = create_later(&app, "big", &second);
        let body = pending(&app, &second).await;
        assert_eq!(body["queuePosition"], 0, "{body}");
        let reason = body["pendingReason"].as_str().unwrap_or_default();
        assert!(reason.contains("no agent has room") && reason.contains("mem by 2000"), "{body}");
        assert_eq!(concurrency_used(&app).await, 2, "the waiting session counts against the quota");
        // GraphQL says the same.
        let query = "{ compute_sessions(status: \"PENDING\") { sess_id status queue_position pending_reason } }";
        let request = app.signed("POST", "/v3/admin/graphql", Some(json!({"query": query})));
        let listed = ok_json(app.send(request).await, 200).await;
        let row = &listed["compute_sessions"][0];
        assert_eq!(
            (row["sess_id"].as_str(), row["status"].as_str()),
            (Some(second.as_str()), Some("PENDING")),
            "{listed}"
        );
        assert_eq!(row["queue_position"], 0, "{listed}");
        assert!(row["pending_reason"].as_str().unwrap_or_default().contains("mem by 2000"), "{listed}");
        assert_eq!(agent(&app, "i-0").await.used_mem_slots, 3000, "nothing reserved for it yet");
        // The running one ends: the waiting one is placed and its create answers.
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{first}"), None)).await;
        assert_eq!(destroyed.status(), 200);
        let created = tokio::time::timeout(Duration::from_secs(15), waiting).await.unwrap().unwrap();
        assert_eq!(created.status(), 201, "{backend:?}");
        assert_eq!(ok_json(info(&app, &second).await, 200).await["status"], "RUNNING");
        let events: Vec<String> = entity::session_events::Entity::find()
            .filter(entity::session_events::Column::SessId.eq(second.clone()))
            .all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(events, ["pending", "preparing", "running"], "{backend:?}");
        assert!(session(&app, &second).await.scheduled_at.is_some());
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_create_that_waits_past_create_wait_is_503_and_leaves_the_queue() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |s| s.scheduler.create_wait = 1.0).await else { continue };
        let first = unique("first");
        assert_eq!(create(&app, "big", &first).await.status(), 201);
        let token = unique("late");
        let body = assert_problem(create(&app, "big", &token).await, 503, "instance-not-available").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("cancelled"), "{body}");
        let row = session(&app, &token).await;
        assert_eq!((row.status, row.status_info.as_deref()), (KernelStatus::Cancelled, Some("create-timeout")));
        assert_eq!(concurrency_used(&app).await, 1, "no leftover counts against the key");
        assert_eq!(agent(&app, "i-0").await.used_mem_slots, 3000);
        // The token is free again: once there is room, the same create succeeds.
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{first}"), None)).await;
        assert_eq!(destroyed.status(), 200);
        assert_eq!(create(&app, "big", &token).await.status(), 201, "{backend:?}");
        // A create whose client goes away while it waits leaves nothing behind.
        let gone = unique("gone");
        let mut request =
            app.signed("POST", "/v3/kernel/create", Some(json!({"lang": "big", "clientSessionToken": gone})));
        request.date = chrono::Utc::now().fixed_offset();
        let headers = app.signature_headers(&request);
        let mut builder = app
            .client
            .post(format!("{}/v3/kernel/create", app.address))
            .timeout(Duration::from_millis(300))
            .body(request.body.clone());
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        assert!(builder.send().await.is_err(), "the client gave up");
        let row = eventually("the abandoned session leaves the queue", Duration::from_secs(10), || async {
            let row = session(&app, &gone).await;
            (row.status != KernelStatus::Pending).then_some(row)
        })
        .await;
        // actix-web runs the handler on after the client left, so `create_wait` ends it
        // (a handler dropped earlier, at shutdown, cancels it as `create-abandoned`).
        assert_eq!(row.status, KernelStatus::Cancelled, "{row:?}");
        assert!(matches!(row.status_info.as_deref(), Some("create-timeout" | "create-abandoned")), "{row:?}");
        assert_eq!(concurrency_used(&app).await, 1, "{backend:?}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_session_waits_no_longer_than_max_wait() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |s| {
            s.scheduler.max_wait = 1.0;
            s.scheduler.create_wait = 30.0;
        })
        .await
        else {
            continue;
        };
        assert_eq!(create(&app, "big", &unique("first")).await.status(), 201);
        let token = unique("expires");
        let body = assert_problem(create(&app, "big", &token).await, 503, "instance-not-available").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("pending-timeout"), "{body}");
        let row = session(&app, &token).await;
        assert_eq!((row.status, row.status_info.as_deref()), (KernelStatus::Cancelled, Some("pending-timeout")));
        assert_eq!(concurrency_used(&app).await, 1);
        app.stop().await;
    }
}

#[actix_web::test]
async fn queue_bounds_and_the_quota_count_waiting_sessions_and_a_destroy_cancels_one() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |s| s.scheduler.max_pending_per_key = 1).await else {
            continue;
        };
        assert_eq!(create(&app, "big", &unique("first")).await.status(), 201);
        let second = unique("second");
        let waiting = create_later(&app, "big", &second);
        pending(&app, &second).await;
        // Past the key's bound: 503, and nothing enqueued.
        let third = unique("third");
        let body = assert_problem(create(&app, "small", &third).await, 503, "service-unavailable").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("waiting"), "{body}");
        assert!(sessions_named(&app, &third).await.is_empty());
        // Waiting sessions count against the concurrency limit.
        keypairs::Entity::update_many()
            .col_expr(keypairs::Column::ConcurrencyLimit, sea_orm::sea_query::Expr::value(2))
            .filter(keypairs::Column::AccessKey.eq(app.access_key.clone()))
            .exec(&app.state.db)
            .await
            .unwrap();
        backendai_manager::actors::keypair::update_row(&app.state.db, &app.state.directory, &app.access_key, vec![])
            .await
            .unwrap();
        assert_problem(create(&app, "small", &unique("fourth")).await, 412, "quota-exceeded").await;
        // A destroy of a waiting session takes it out of the queue; its create answers 503.
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{second}"), None)).await;
        assert_eq!(destroyed.status(), 200, "{backend:?}");
        let answer = tokio::time::timeout(Duration::from_secs(15), waiting).await.unwrap().unwrap();
        let body = assert_problem(answer, 503, "instance-not-available").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("user-requested"), "{body}");
        assert_eq!(session(&app, &second).await.status, KernelStatus::Cancelled);
        assert_eq!(concurrency_used(&app).await, 1);
        app.stop().await;
    }
}

#[actix_web::test]
async fn explain_says_where_a_session_would_go_or_why_it_would_wait_and_creates_nothing() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |_| {}).await else { continue };
        let explain = |body: Value| async { app.send(app.signed("POST", "/v3/scheduler/explain", Some(body))).await };
        let token = unique("explained");
        let now = ok_json(explain(json!({"lang": "big", "clientSessionToken": token})).await, 200).await;
        assert_eq!((now["decision"].as_str(), now["agent"].as_str()), (Some("place"), Some("i-0")), "{now}");
        assert_eq!(create(&app, "big", &unique("first")).await.status(), 201);
        let later = ok_json(explain(json!({"lang": "big", "clientSessionToken": token})).await, 200).await;
        assert_eq!(later["decision"], "wait", "{later}");
        assert_eq!(later["sessionsAhead"], 0, "{later}");
        assert_eq!(later["agents"][0]["short"]["mem"], 2000.0, "{later}");
        assert_eq!(later["agents"][0]["tooSmall"], false, "{later}");
        assert!(later["reason"].as_str().unwrap_or_default().contains("short of mem by 2000"), "{later}");
        assert_eq!(later["quota"]["used"], 1, "{later}");
        // Sessions that fit still go.
        let small = ok_json(explain(json!({"lang": "small", "clientSessionToken": token})).await, 200).await;
        assert_eq!(small["decision"], "place", "{small}");
        // Bigger than every agent: refused, by explain and by a create.
        let giant = ok_json(explain(json!({"lang": "giant", "clientSessionToken": token})).await, 200).await;
        assert_eq!(giant["decision"], "refuse", "{giant}");
        assert_eq!(giant["agents"][0]["tooSmall"], true, "{giant}");
        assert_problem(create(&app, "giant", &token).await, 400, "invalid-api-params").await;
        // Bad bodies are refused naming the field.
        let body = assert_problem(explain(json!({"clientSessionToken": token})).await, 400, "invalid-api-params").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("lang"), "{body}");
        let bad = json!({"lang": "big", "clientSessionToken": token, "config": {"instanceMemory": -1}});
        let body = assert_problem(explain(bad).await, 400, "invalid-api-params").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("instanceMemory"), "{body}");
        let unknown = json!({"lang": "no-such-image", "clientSessionToken": token});
        assert_problem(explain(unknown).await, 404, "image-not-found").await;
        assert!(sessions_named(&app, &token).await.is_empty(), "explain creates nothing");
        app.stop().await;
    }
}

#[actix_web::test]
async fn the_placement_setting_decides_the_agent() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000), (4.0, 8000)], |_| {}).await else { continue };
        // Dispersed (the default): the agent with the most free memory.
        let token = unique("dispersed");
        assert_eq!(create(&app, "small", &token).await.status(), 201);
        assert_eq!(session(&app, &token).await.agent.as_deref(), Some("i-1"), "{backend:?}");
        // Concentrated: the fullest agent that fits.
        app.state.stores.config.put("config/scheduler/placement", "concentrated").await.unwrap();
        let token = unique("packed");
        assert_eq!(create(&app, "small", &token).await.status(), 201);
        assert_eq!(session(&app, &token).await.agent.as_deref(), Some("i-0"), "{backend:?}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn fifo_holds_room_for_the_head_of_the_queue_while_smaller_sessions_backfill_elsewhere() {
    let Some(app) = cluster(Backend::Embedded, &[(4.0, 4000), (4.0, 1500)], |_| {}).await else { return };
    // i-0 runs a small session (3,000 MiB left): a big one waits at the head.
    let first = unique("first");
    assert_eq!(create(&app, "small", &first).await.status(), 201);
    let hog = unique("hog");
    assert_eq!(create(&app, "small", &hog).await.status(), 201);
    assert_eq!(session(&app, &hog).await.agent.as_deref(), Some("i-0"));
    let head = unique("head");
    let head_create = create_later(&app, "big", &head);
    let body = pending(&app, &head).await;
    assert_eq!(body["queuePosition"], 0, "{body}");
    // A small one arriving later fits on i-0 (2,000 MiB free) but i-0 is held for the
    // head: it goes to i-1.
    let backfill = unique("backfill");
    assert_eq!(create(&app, "small", &backfill).await.status(), 201);
    assert_eq!(session(&app, &backfill).await.agent.as_deref(), Some("i-1"));
    // Room on i-0 frees: the head is placed there.
    let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{hog}"), None)).await;
    assert_eq!(destroyed.status(), 200);
    let created = tokio::time::timeout(Duration::from_secs(15), head_create).await.unwrap().unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(session(&app, &head).await.agent.as_deref(), Some("i-0"));
    app.stop().await;
}

#[actix_web::test]
async fn a_placement_with_a_stale_fencing_token_changes_nothing() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(4.0, 4000)], |_| {}).await else { continue };
        let first = unique("first");
        assert_eq!(create(&app, "big", &first).await.status(), 201);
        // Bigger than the room left: the app's own scheduler cannot place it yet.
        let image =
            backendai_manager::images::resolve_image(&app.state.images, app.state.stores.config.as_ref(), "big")
                .await
                .unwrap();
        let token = unique("fenced");
        let bounds = QueueBounds { per_key: 10, total: 10 };
        let request = SessionRequest { access_key: &app.access_key, token: &token, image: &image, bounds };
        let (kernel, created) = ledger::enqueue(&app.state.db, &request).await.unwrap();
        assert!(created && kernel.status == KernelStatus::Pending);
        let agent_row: agents::Model = agent(&app, "i-0").await;
        // A later scheduler took the fence.
        let later = 1_000_000;
        assert!(ledger::take_fence(&app.state.db, later).await.unwrap());
        assert!(!ledger::take_fence(&app.state.db, later - 1).await.unwrap(), "the fence never goes back");
        let placed = ledger::place(&app.state.db, &kernel, &agent_row, later - 1).await.unwrap();
        assert!(matches!(placed, Placed::Fenced), "{placed:?}");
        assert_eq!(session(&app, &token).await.status, KernelStatus::Pending, "still waiting");
        assert_eq!(agent(&app, "i-0").await.used_mem_slots, 3000, "no slots taken");
        // Room frees; the app's scheduler meets the fence, starts a later term and places it.
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{first}"), None)).await;
        assert_eq!(destroyed.status(), 200);
        let placed = eventually("the scheduler places it in a new term", Duration::from_secs(15), || async {
            let row = session(&app, &token).await;
            (row.status != KernelStatus::Pending).then_some(row)
        })
        .await;
        assert_eq!(placed.status, KernelStatus::Preparing, "{backend:?}");
        let fence = entity::scheduler_fence::Entity::find_by_id(1).one(&app.state.db).await.unwrap().unwrap();
        assert!(fence.token > later, "{fence:?}");
        app.stop().await;
    }
}

#[test]
fn unknown_scheduler_settings_are_refused_naming_the_key() {
    use backendai_manager::scheduler::validate_setting;
    assert!(validate_setting("config/scheduler/policy", "drf").is_ok());
    assert!(validate_setting("config/scheduler/placement", "concentrated").is_ok());
    let error = validate_setting("config/scheduler/policy", "lottery").unwrap_err();
    assert!(error.contains("config/scheduler/policy") && error.contains("fifo"), "{error}");
    assert!(validate_setting("config/scheduler/placement", "Dispersed").is_err());
    assert!(validate_setting("config/overbook/cpu", "anything").is_ok(), "not the scheduler's key");
}

/// The holder of the scheduler's lease, and its term.
async fn scheduler_holder(app: &TestApp) -> Option<(String, i64)> {
    use backendai_manager::scheduler::lease::{Lease, LEASE_KEY};
    let stored = app.state.stores.config.get(LEASE_KEY).await.unwrap()?;
    let lease = Lease::parse(&stored);
    (lease.expires_ms > chrono::Utc::now().timestamp_millis()).then(|| (lease.holder.to_owned(), lease.term))
}

#[actix_web::test]
async fn two_managers_have_one_scheduler_and_the_other_takes_over_with_a_new_term() {
    let Some((mut settings, _dir)) = crate::helpers::test_settings(Backend::Services).await else { return };
    quiet(&mut settings);
    let first = crate::helpers::start_app(settings.clone()).await;
    let second = crate::helpers::start_app(settings).await;
    let config = first.state.stores.config.clone();
    config.put("config/overbook/cpu", "1").await.unwrap();
    config.put("config/overbook/mem", "1").await.unwrap();
    fake_agent(&first, "i-0", json!({"cpu": 8, "mem": 8000, "gpu": 0})).await;
    let ids = [first.state.manager_id.clone(), second.state.manager_id.clone()];
    let (holder, term) =
        eventually("one manager schedules", Duration::from_secs(15), || scheduler_holder(&first)).await;
    assert!(ids.contains(&holder), "{holder}");
    let (holder_app, other) = if holder == ids[0] { (first, second) } else { (second, first) };
    // Creates through either manager are placed by the one scheduler.
    for app in [&holder_app, &other] {
        let token = unique("via");
        assert_eq!(create_session(app, "python3", &token).await.status(), 201);
        assert_eq!(session(app, &token).await.agent.as_deref(), Some("i-0"));
    }
    assert_eq!(scheduler_holder(&other).await.map(|(h, _)| h), Some(holder.clone()), "still one scheduler");
    // The scheduler stops: the other takes the lease over in a new term, and places.
    holder_app.stop().await;
    let (next, next_term) = eventually("the other manager schedules", Duration::from_secs(15), || async {
        scheduler_holder(&other).await.filter(|(h, _)| *h == other.state.manager_id)
    })
    .await;
    assert_eq!(next, other.state.manager_id);
    assert!(next_term > term, "{next_term} after {term}");
    let token = unique("after");
    assert_eq!(create_session(&other, "python3", &token).await.status(), 201);
    assert_eq!(session(&other, &token).await.status, KernelStatus::Running);
    let fence = entity::scheduler_fence::Entity::find_by_id(1).one(&other.state.db).await.unwrap().unwrap();
    assert_eq!(fence.token, next_term, "the placement was fenced by the new term");
    other.stop().await;
}

/// `GET /scheduler/config`, or `PUT` with `body`.
async fn config(who: &TestApp, body: Option<Value>) -> reqwest::Response {
    let method = if body.is_some() { "PUT" } else { "GET" };
    who.send(who.signed(method, "/v3/scheduler/config", body)).await
}

#[actix_web::test]
async fn drf_places_the_key_with_the_smallest_share_first_and_the_config_is_admin_only() {
    for backend in BACKENDS {
        let Some(app) = cluster(backend, &[(8.0, 4000)], |_| {}).await else { continue };
        let admin = crate::helpers::add_key_of(&app, "admin@example.com", true).await;
        let light = crate::helpers::add_key_of(&app, "light@example.com", false).await;
        // The config: readable by any key, changed by admins only, names checked.
        let current = ok_json(config(&app, None).await, 200).await;
        assert_eq!(current, json!({"policy": "fifo", "placement": "dispersed"}));
        assert_problem(config(&app, Some(json!({"policy": "drf"}))).await, 403, "generic-forbidden").await;
        let body =
            assert_problem(config(&admin, Some(json!({"policy": "lottery"}))).await, 400, "invalid-api-params").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("policy must be"), "{body}");
        let body = assert_problem(config(&admin, Some(json!({"polcy": "drf"}))).await, 400, "invalid-api-params").await;
        assert!(body["title"].as_str().unwrap_or_default().contains("polcy"), "{body}");
        let set = ok_json(config(&admin, Some(json!({"policy": "drf"}))).await, 200).await;
        assert_eq!(set["policy"], "drf");

        // The heavy key fills the agent, then both keys wait for one small session's room.
        let freed = unique("freed");
        assert_eq!(create(&app, "big", &unique("heavy")).await.status(), 201);
        assert_eq!(create(&app, "small", &freed).await.status(), 201);
        let heavy_wait = unique("heavy-wait");
        let heavy_create = create_later(&app, "small", &heavy_wait);
        pending(&app, &heavy_wait).await;
        let light_wait = unique("light-wait");
        let light_create = create_later(&light, "small", &light_wait);
        pending(&light, &light_wait).await;
        // Room for one: under drf the key with the smaller share goes first, though later.
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{freed}"), None)).await;
        assert_eq!(destroyed.status(), 200);
        let created = tokio::time::timeout(Duration::from_secs(15), light_create).await.unwrap().unwrap();
        assert_eq!(created.status(), 201, "{backend:?}");
        assert_eq!(session(&app, &heavy_wait).await.status, KernelStatus::Pending, "{backend:?}");
        let destroyed = app.send(app.signed("DELETE", &format!("/v3/kernel/{heavy_wait}"), None)).await;
        assert_eq!(destroyed.status(), 200);
        assert_eq!(tokio::time::timeout(Duration::from_secs(15), heavy_create).await.unwrap().unwrap().status(), 503);
        app.stop().await;
    }
}
