//! The admin GraphQL API: schemas by privilege, confinement, mutations, limits,
//! the request and response formats, and the official SDK's admin commands.

use std::collections::HashMap;
use std::time::Duration;

use backendai_manager::auth::{self, HashAlgorithm, SignedParts};
use backendai_manager::fixtures;
use backendai_manager::state::AppState;
use chrono::Utc;
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, vfolders};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, unique, Backend, TestApp, BACKENDS};
use crate::sdk::{run_script, sdk_python};

const GRAPHQL: &str = "/v2/admin/graphql";

/// A key of user 7, admin or not; returns (access key, secret key).
async fn add_key(state: &AppState, is_admin: bool) -> (String, String) {
    let access_key = unique("AK").chars().take(20).collect::<String>().to_uppercase();
    let secret_key = unique("secret");
    let fixture = serde_json::from_value(json!({"keypairs": [{
        "user_id": 7, "access_key": access_key, "secret_key": secret_key, "is_admin": is_admin,
        "concurrency_limit": 5,
    }]}))
    .unwrap();
    fixtures::populate(&state.db, fixture).await.unwrap();
    (access_key, secret_key)
}

/// A session row of `access_key` (no kernel behind it).
async fn add_session(state: &AppState, access_key: &str, sess_id: &str, status: KernelStatus, role: &str) -> Uuid {
    let id = Uuid::new_v4();
    let ended = !status.is_live();
    kernels::ActiveModel {
        id: Set(id),
        sess_id: Set(sess_id.to_owned()),
        role: Set(role.to_owned()),
        lang: Set("python3:latest".to_owned()),
        access_key: Set(access_key.to_owned()),
        agent: Set(None),
        agent_addr: Set(None),
        container_id: Set(Some("c-1".to_owned())),
        status: Set(status),
        status_info: Set(ended.then(|| "user-requested".to_owned())),
        created_at: Set(Utc::now().fixed_offset()),
        terminated_at: Set(ended.then(|| Utc::now().fixed_offset())),
        scheduled_at: Set(None),
        started_at: Set(None),
        last_activity: Set(None),
        mem_slot: Set(256),
        cpu_slot: Set(1.0),
        gpu_slot: Set(0.0),
        num_queries: Set(3),
        cpu_used: Set(10),
        mem_max_bytes: Set(5_000_000_000),
        mem_cur_bytes: Set(20),
        net_rx_bytes: Set(0),
        net_tx_bytes: Set(0),
        io_read_bytes: Set(0),
        io_write_bytes: Set(0),
        io_max_scratch_size: Set(0),
        io_cur_scratch_size: Set(0),
    }
    .insert(&state.db)
    .await
    .unwrap();
    id
}

async fn add_vfolder(state: &AppState, access_key: &str, name: &str) {
    vfolders::ActiveModel {
        id: Set(Uuid::new_v4()),
        host: Set("local".to_owned()),
        name: Set(name.to_owned()),
        max_files: Set(1000),
        max_size: Set(1 << 30),
        num_files: Set(0),
        cur_size: Set(0),
        created_at: Set(Utc::now().fixed_offset()),
        last_used: Set(None),
        belongs_to: Set(access_key.to_owned()),
    }
    .insert(&state.db)
    .await
    .unwrap();
}

/// Sends a GraphQL request signed with the given key.
async fn gql(app: &TestApp, key: &(String, String), query: &str, variables: Value) -> reqwest::Response {
    let mut request = app.signed("POST", GRAPHQL, Some(json!({"query": query, "variables": variables})));
    request.access_key = &key.0;
    request.secret_key = &key.1;
    app.send(request).await
}

/// The data of a successful request (1.0.x shape: the data object itself).
async fn gql_ok(app: &TestApp, key: &(String, String), query: &str, variables: Value) -> Value {
    let response = gql(app, key, query, variables).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// Asserts a GraphQL error: 400 invalid-api-params that names `needle`.
async fn gql_err(app: &TestApp, key: &(String, String), query: &str, needle: &str) -> String {
    let body = assert_problem(gql(app, key, query, Value::Null).await, 400, "invalid-api-params").await;
    let text = body.to_string();
    assert!(text.contains(needle), "{query}: {text}");
    assert!(body.get("data").is_none(), "{text}");
    text
}

fn own(app: &TestApp) -> (String, String) {
    (app.access_key.clone(), app.secret_key.clone())
}

const SESSION_FIELDS: &str = "sess_id id role lang status status_info created_at terminated_at agent \
    container_id mem_slot cpu_slot gpu_slot num_queries cpu_used mem_max_bytes mem_cur_bytes net_rx_bytes \
    net_tx_bytes io_read_bytes io_write_bytes io_max_scratch_size io_cur_scratch_size";
const KEYPAIR_FIELDS: &str = "user_id access_key secret_key is_active is_admin resource_policy created_at \
    last_used concurrency_limit concurrency_used rate_limit num_queries";
const AGENT_FIELDS: &str = "id status region addr first_contact lost_at mem_slots cpu_slots gpu_slots \
    used_mem_slots used_cpu_slots used_gpu_slots";

#[actix_web::test]
async fn admin_keys_get_the_admin_schema_with_snake_case_fields() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let admin = add_key(&app.state, true).await;
        let query = format!(
            "{{ agents(status: \"ALIVE\") {{ {AGENT_FIELDS} }} keypairs(user_id: 7) {{ {KEYPAIR_FIELDS} }} \
             keypair {{ access_key is_admin }} }}"
        );
        let data = gql_ok(&app, &admin, &query, Value::Null).await;
        let agents = data["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 1, "{data}");
        assert_eq!(agents[0]["status"], "ALIVE");
        assert!(agents[0]["mem_slots"].as_i64().unwrap() > 0, "{data}");
        let agent_id = agents[0]["id"].as_str().unwrap().to_owned();
        let keys: Vec<&str> =
            data["keypairs"].as_array().unwrap().iter().map(|k| k["access_key"].as_str().unwrap()).collect();
        assert!(keys.contains(&app.access_key.as_str()) && keys.contains(&admin.0.as_str()), "{data}");
        assert_eq!(data["keypair"], json!({"access_key": admin.0, "is_admin": true}));
        let one =
            gql_ok(&app, &admin, "query($a: String) { agent(agent_id: $a) { id } }", json!({"a": agent_id})).await;
        assert_eq!(one["agent"]["id"], agent_id);
        app.stop().await;
    }
}

#[actix_web::test]
async fn other_keys_get_the_user_schema_with_their_own_data() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let (other, _) = add_key(&app.state, false).await;
        add_session(&app.state, &app.access_key, "mine", KernelStatus::Running, "master").await;
        add_session(&app.state, &other, "theirs", KernelStatus::Running, "master").await;
        add_vfolder(&app.state, &app.access_key, "my-folder").await;
        add_vfolder(&app.state, &other, "their-folder").await;
        let user = own(&app);
        let data = gql_ok(
            &app,
            &user,
            "{ keypair { access_key is_admin } compute_sessions { sess_id } vfolders { name } }",
            Value::Null,
        )
        .await;
        assert_eq!(
            data,
            json!({
                "keypair": {"access_key": app.access_key, "is_admin": false},
                "compute_sessions": [{"sess_id": "mine"}],
                "vfolders": [{"name": "my-folder"}],
            })
        );
        gql_err(&app, &user, "{ agents { id } }", "agents").await;
        gql_err(&app, &user, "{ keypairs(user_id: 7) { access_key } }", "keypairs").await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_user_naming_another_key_gets_an_error_and_no_data() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let (other, other_secret) = add_key(&app.state, false).await;
        add_session(&app.state, &other, "theirs", KernelStatus::Running, "master").await;
        add_vfolder(&app.state, &other, "their-folder").await;
        let user = own(&app);
        for query in [
            format!("{{ keypair(access_key: \"{other}\") {{ secret_key }} }}"),
            format!("{{ compute_sessions(access_key: \"{other}\") {{ sess_id }} }}"),
            format!("{{ vfolders(access_key: \"{other}\") {{ name }} }}"),
            // The 1.0.6 client's `admin sessions --access-key` query.
            format!("{{ compute_sessions(access_key: \"{other}\", status: \"RUNNING\") {{ sess_id }} }}"),
        ] {
            let text = gql_err(&app, &user, &query, "access_key").await;
            assert!(!text.contains(&other_secret) && !text.contains("their"), "{text}");
        }
        // Workers are looked up among the caller's sessions only.
        let data = gql_ok(&app, &user, "{ compute_workers(sess_id: \"theirs\") { id } }", Value::Null).await;
        assert_eq!(data, json!({"compute_workers": []}));
        app.stop().await;
    }
}

#[actix_web::test]
async fn sessions_show_the_contract_fields_filtered_by_status() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        let running = add_session(&app.state, &app.access_key, "s1", KernelStatus::Running, "master").await;
        let ended = add_session(&app.state, &app.access_key, "s2", KernelStatus::Terminated, "master").await;
        let query = format!("query($ak: String, $st: String) {{ compute_sessions(access_key: $ak, status: $st) {{ {SESSION_FIELDS} }} }}");
        let data = gql_ok(&app, &admin, &query, json!({"ak": app.access_key, "st": "RUNNING"})).await;
        let sessions = data["compute_sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1, "{data}");
        let session = &sessions[0];
        assert_eq!(session.as_object().unwrap().len(), 23, "{session}");
        assert_eq!(session["id"], running.to_string());
        assert_eq!(session["sess_id"], "s1");
        assert_eq!(session["role"], "master");
        assert_eq!(session["status"], "RUNNING");
        assert_eq!(session["mem_slot"], 256);
        assert_eq!(session["cpu_slot"], 1.0);
        assert_eq!(session["mem_max_bytes"], 5_000_000_000_i64, "64-bit counters");
        assert!(session["terminated_at"].is_null());
        let all = gql_ok(&app, &admin, &query, json!({"ak": app.access_key, "st": null})).await;
        let ids: Vec<&str> =
            all["compute_sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [ended.to_string(), running.to_string()], "newest first");
        // A session is one kernel here (sess_id is unique per key): there are no workers.
        let workers = gql_ok(&app, &admin, "{ compute_workers(sess_id: \"s1\") { sess_id role } }", Value::Null).await;
        assert_eq!(workers, json!({"compute_workers": []}));
        gql_err(&app, &admin, "{ compute_sessions(status: \"SLEEPING\") { id } }", "unknown session status").await;
        app.stop().await;
    }
}

#[actix_web::test]
async fn running_sessions_show_live_stats_and_ended_ones_their_final_columns() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let running = add_session(&app.state, &app.access_key, "live", KernelStatus::Running, "master").await;
        let ended = add_session(&app.state, &app.access_key, "done", KernelStatus::Terminated, "master").await;
        let stats = HashMap::from([("cpu_used".to_owned(), 4321_i64), ("mem_cur_bytes".to_owned(), 777)]);
        for id in [running, ended] {
            app.state.stores.stats.set_kernel_stats(&id.to_string(), &stats, Duration::from_secs(60)).await.unwrap();
        }
        let query = "{ compute_sessions(status: null) { sess_id cpu_used mem_cur_bytes mem_max_bytes } }";
        let data = gql_ok(&app, &own(&app), query, Value::Null).await;
        assert_eq!(
            data["compute_sessions"],
            json!([
                {"sess_id": "done", "cpu_used": 10, "mem_cur_bytes": 20, "mem_max_bytes": 5_000_000_000_i64},
                {"sess_id": "live", "cpu_used": 4321, "mem_cur_bytes": 777, "mem_max_bytes": 5_000_000_000_i64},
            ])
        );
        app.stop().await;
    }
}

#[actix_web::test]
async fn nested_lists_are_loaded_per_parent() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        let (other, _) = add_key(&app.state, false).await;
        add_session(&app.state, &app.access_key, "a", KernelStatus::Running, "master").await;
        add_session(&app.state, &other, "b", KernelStatus::Error, "master").await;
        add_vfolder(&app.state, &other, "f").await;
        let query =
            "{ keypairs(user_id: 7) { access_key compute_sessions { sess_id workers { role } } vfolders { name } } }";
        let data = gql_ok(&app, &admin, query, Value::Null).await;
        let by_key: HashMap<&str, &Value> =
            data["keypairs"].as_array().unwrap().iter().map(|k| (k["access_key"].as_str().unwrap(), k)).collect();
        assert_eq!(by_key[app.access_key.as_str()]["compute_sessions"], json!([{"sess_id": "a", "workers": []}]));
        assert_eq!(by_key[app.access_key.as_str()]["vfolders"], json!([]));
        assert_eq!(by_key[other.as_str()]["compute_sessions"], json!([{"sess_id": "b", "workers": []}]));
        assert_eq!(by_key[other.as_str()]["vfolders"], json!([{"name": "f"}]));
        assert_eq!(by_key[admin.0.as_str()]["compute_sessions"], json!([]));
        app.stop().await;
    }
}

const CREATE: &str = "mutation($uid: Int!, $props: KeyPairInput!) { create_keypair(user_id: $uid, props: $props) \
    { ok msg keypair { access_key secret_key user_id is_active is_admin concurrency_limit rate_limit resource_policy } } }";
const MODIFY: &str =
    "mutation($ak: String!, $props: KeyPairInput!) { modify_keypair(access_key: $ak, props: $props) { ok msg } }";
const DELETE: &str = "mutation($ak: String!) { delete_keypair(access_key: $ak) { ok msg } }";

async fn authorize_status(app: &TestApp, key: &(String, String)) -> u16 {
    let mut request = app.signed("GET", "/v2/authorize", None);
    request.access_key = &key.0;
    request.secret_key = &key.1;
    app.send(request).await.status().as_u16()
}

async fn create_key(app: &TestApp, admin: &(String, String), props: Value) -> (String, String) {
    let data = gql_ok(app, admin, CREATE, json!({"uid": 9, "props": props})).await;
    let created = &data["create_keypair"];
    assert_eq!(created["ok"], true, "{data}");
    let key = &created["keypair"];
    (key["access_key"].as_str().unwrap().to_owned(), key["secret_key"].as_str().unwrap().to_owned())
}

#[actix_web::test]
async fn create_keypair_makes_a_key_that_signs_requests() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        let data =
            gql_ok(&app, &admin, CREATE, json!({"uid": 9, "props": {"rate_limit": 50, "resource_policy": "p"}})).await;
        let created = &data["create_keypair"];
        assert_eq!(created["ok"], true, "{data}");
        let key = &created["keypair"];
        let access_key = key["access_key"].as_str().unwrap();
        assert!(
            access_key.len() == 20
                && access_key.starts_with("AKIA")
                && access_key[4..].chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)),
            "{access_key}"
        );
        assert_eq!(
            (&key["user_id"], &key["is_active"], &key["is_admin"], &key["concurrency_limit"], &key["rate_limit"]),
            (&json!("9"), &json!(true), &json!(false), &json!(1), &json!(50))
        );
        assert_eq!(key["resource_policy"], "p");
        let new_key = (access_key.to_owned(), key["secret_key"].as_str().unwrap().to_owned());
        assert_eq!(authorize_status(&app, &new_key).await, 200);
        let refused = gql_ok(&app, &admin, CREATE, json!({"uid": 9, "props": {"rate_limit": -1}})).await;
        assert_eq!(refused["create_keypair"]["ok"], false, "{refused}");
        app.stop().await;
    }
}

/// The manager that makes the change drops its cached copy of the key at once: the very
/// next request of the key is refused (other managers: within 2 s, see gateway.rs).
#[actix_web::test]
async fn a_deactivated_key_is_refused_at_once_by_the_manager_that_changed_it() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        let key = create_key(&app, &admin, json!({"concurrency_limit": 4})).await;
        // The key is cached now (its actor holds a fresh copy).
        assert_eq!(authorize_status(&app, &key).await, 200);
        let data =
            gql_ok(&app, &admin, MODIFY, json!({"ak": key.0, "props": {"is_active": false, "rate_limit": 77}})).await;
        assert_eq!(data["modify_keypair"], json!({"ok": true, "msg": null}));
        let row = keypairs::Entity::find_by_id(key.0.clone()).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!((row.is_active, row.rate_limit, row.concurrency_limit), (false, 77, 4), "null fields unchanged");
        assert_eq!(authorize_status(&app, &key).await, 401, "{backend:?}: the next request after the change");
        let missing = gql_ok(&app, &admin, MODIFY, json!({"ak": "AKIANOSUCHKEY", "props": {"rate_limit": 1}})).await;
        assert_eq!(missing["modify_keypair"]["ok"], false);
        app.stop().await;
    }
}

#[actix_web::test]
async fn delete_keypair_refuses_keys_with_sessions_and_the_caller() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        let spare = create_key(&app, &admin, json!({})).await;
        add_vfolder(&app.state, &spare.0, "goes-too").await;
        let data = gql_ok(&app, &admin, DELETE, json!({"ak": spare.0})).await;
        assert_eq!(data["delete_keypair"], json!({"ok": true, "msg": null}));
        assert!(keypairs::Entity::find_by_id(spare.0.clone()).one(&app.state.db).await.unwrap().is_none());
        assert!(vfolders::Entity::find().all(&app.state.db).await.unwrap().is_empty(), "its folders go with it");

        add_session(&app.state, &app.access_key, "kept", KernelStatus::Terminated, "master").await;
        for (ak, why) in
            [(&app.access_key, "deactivate"), (&admin.0, "itself"), (&"AKIANOSUCHKEY".to_owned(), "no such")]
        {
            let data = gql_ok(&app, &admin, DELETE, json!({"ak": ak})).await;
            assert_eq!(data["delete_keypair"]["ok"], false, "{data}");
            assert!(data["delete_keypair"]["msg"].as_str().unwrap().contains(why), "{data}");
        }
        assert!(keypairs::Entity::find_by_id(app.access_key.clone()).one(&app.state.db).await.unwrap().is_some());
        app.stop().await;
    }
}

#[actix_web::test]
async fn non_admins_have_no_mutations() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let user = own(&app);
    let response = gql(&app, &user, CREATE, json!({"uid": 9, "props": {}})).await;
    assert_problem(response, 400, "invalid-api-params").await;
    let response = gql(&app, &user, MODIFY, json!({"ak": app.access_key, "props": {"rate_limit": 99999}})).await;
    assert_problem(response, 400, "invalid-api-params").await;
    app.stop().await;
}

#[actix_web::test]
async fn undeclared_variables_are_ignored() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        add_session(&app.state, &app.access_key, "mine", KernelStatus::Running, "master").await;
        // Exactly what `backend.ai ps` sends: `ak` is not declared by the operation.
        let data = gql_ok(
            &app,
            &own(&app),
            "query($status:String) { compute_sessions(status:$status) { sess_id status } }",
            json!({"status": "RUNNING", "ak": null, "unrelated": {"x": [1, 2]}}),
        )
        .await;
        assert_eq!(data, json!({"compute_sessions": [{"sess_id": "mine", "status": "RUNNING"}]}));
        app.stop().await;
    }
}

#[actix_web::test]
async fn too_deep_or_too_complex_queries_are_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let admin = add_key(&app.state, true).await;
    gql_err(
        &app,
        &admin,
        "{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }",
        "nested too deep",
    )
    .await;
    let complex = format!("{{ keypairs(user_id: 7) {{ compute_sessions {{ workers {{ {SESSION_FIELDS} }} }} }} }}");
    gql_err(&app, &admin, &complex, "too complex").await;
    let aliases: String = (0..20).map(|i| format!("a{i}: compute_sessions {{ {SESSION_FIELDS} }} ")).collect();
    gql_err(&app, &own(&app), &format!("{{ {aliases} }}"), "too complex").await;
    app.stop().await;
}

#[actix_web::test]
async fn malformed_bodies_are_400_and_unsigned_requests_401() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    for body in [
        &b"not json"[..],
        br#"{"variables": {}}"#,
        br#"{"query": 5}"#,
        br#"{"query": "{ keypair { access_key } }", "variables": [1]}"#,
        b"",
    ] {
        let mut request = app.signed("POST", GRAPHQL, None);
        request.body = body.to_vec();
        assert_problem(app.send(request).await, 400, "invalid-api-params").await;
    }
    gql_err(&app, &own(&app), "{ keypair { access_key ", "").await;
    let unsigned = app
        .client
        .post(format!("{}{GRAPHQL}", app.address))
        .json(&json!({"query": "{ keypair { secret_key } }"}))
        .send()
        .await
        .unwrap();
    assert_problem(unsigned, 401, "auth-failed").await;
    app.stop().await;
}

/// Sends a signed request with `Accept: application/graphql-response+json`.
async fn send_standard(app: &TestApp, query: &str) -> reqwest::Response {
    let body = json!({"query": query}).to_string().into_bytes();
    let date = Utc::now().fixed_offset();
    let date_header = date.to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let body_hash = HashAlgorithm::Sha256.hex_digest(&body);
    let parts = SignedParts {
        method: "POST",
        path_and_query: GRAPHQL,
        date_header: &date_header,
        date,
        host: &app.host,
        content_type: "application/json",
        version_header: "x-backendai-version",
        version: "v2.20170315",
        body_hash: &body_hash,
    };
    let signature = auth::sign(HashAlgorithm::Sha256, &app.secret_key, &parts);
    app.client
        .post(format!("{}{GRAPHQL}", app.address))
        .header("Date", date_header)
        .header("X-BackendAI-Version", "v2.20170315")
        .header("Content-Type", "application/json")
        .header("Accept", "application/graphql-response+json")
        .header("Authorization", format!("BackendAI signMethod=HMAC-SHA256, credential={}:{signature}", app.access_key))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn graphql_clients_can_ask_for_the_standard_response_shape() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let ok = send_standard(&app, "{ keypair { access_key } }").await;
    assert_eq!(ok.status().as_u16(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body, json!({"data": {"keypair": {"access_key": app.access_key}}}));
    let failed = send_standard(&app, "{ agents { id } }").await;
    assert_eq!(failed.status().as_u16(), 200);
    let body: Value = failed.json().await.unwrap();
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("agents"), "{body}");
    assert!(body["data"].is_null(), "{body}");
    app.stop().await;
}

/// `backend.ai ps`, `backend.ai admin sessions` and `backend.ai admin vfolders`
/// of the official SDK 1.0.6, unmodified, as a user key and as an admin key, with
/// a live session.
#[actix_web::test]
async fn the_official_sdk_lists_sessions_and_vfolders() {
    let Some(python) = sdk_python() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let admin = add_key(&app.state, true).await;
        for (access_key, secret_key) in [own(&app), admin] {
            add_vfolder(&app.state, &access_key, "sdk-folder").await;
            let output = run_script(&python, "admin_cli.py", &app.address, &access_key, &secret_key).await;
            assert!(output.contains("OK admin_cli"), "{backend:?}: {output}");
        }
        app.stop().await;
    }
}

#[actix_web::test]
async fn user_ids_are_strings_whether_declared_int_or_string() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let admin = add_key(&app.state, true).await;
        // Client 1.5.1 declares Int! for a numeric id, String! otherwise; 1.0.6 always Int!.
        let create = "mutation($user_id: Int!, $input: KeyPairInput!) { create_keypair(user_id: $user_id, \
                      props: $input) { ok msg keypair { access_key user_id is_admin } } }";
        let input = json!({"is_active": true, "is_admin": true, "resource_policy": null, "rate_limit": 5000,
                           "concurrency_limit": 1});
        let made = gql_ok(&app, &admin, create, json!({"user_id": 41, "input": input})).await;
        assert_eq!(made["create_keypair"]["keypair"]["user_id"], "41", "{made}");
        assert_eq!(made["create_keypair"]["keypair"]["is_admin"], true, "is_admin is honoured");
        let by_string = create.replace("Int!", "String!");
        let made = gql_ok(&app, &admin, &by_string, json!({"user_id": "alice@example.com", "input": input})).await;
        assert_eq!(made["create_keypair"]["keypair"]["user_id"], "alice@example.com");
        for (declared, value) in [("Int!", json!(41)), ("String!", json!("41"))] {
            let query = format!("query($user_id: {declared}) {{ keypairs(user_id: $user_id) {{ user_id }} }}");
            let data = gql_ok(&app, &admin, &query, json!({"user_id": value})).await;
            assert_eq!(data["keypairs"], json!([{"user_id": "41"}]), "{declared}");
        }
        let data = gql_ok(&app, &admin, "{ keypairs(user_id: 41) { user_id } }", Value::Null).await;
        assert_eq!(data["keypairs"], json!([{"user_id": "41"}]), "an integer literal");
        app.stop().await;
    }
}

#[actix_web::test]
async fn answers_keep_the_query_field_order_and_a_missing_session_is_all_nulls() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    add_session(&app.state, &app.access_key, "ordered", KernelStatus::Running, "master").await;
    let fields = ["status", "sess_id", "lang", "created_at", "mem_slot", "cpu_slot", "agent"];
    let query = format!("query($sess_id: String) {{ compute_session(sess_id: $sess_id) {{ {} }} }}", fields.join(" "));
    let response = gql(&app, &own(&app), &query, json!({"sess_id": "ordered"})).await;
    let text = response.text().await.unwrap();
    // The 1.0.6 and 1.5.1 CLIs print values in the answer's order under headers in the query's.
    let positions: Vec<usize> = fields.iter().map(|f| text.find(&format!("\"{f}\"")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    let data = gql_ok(&app, &own(&app), &query, json!({"sess_id": "missing"})).await;
    let nulls: serde_json::Map<String, Value> = fields.iter().map(|f| (f.to_string(), Value::Null)).collect();
    assert_eq!(data, json!({"compute_session": nulls}), "the 1.5.1 CLI reads sess_id to tell");
    let list = format!("{{ compute_sessions {{ {} }} }}", fields.join(" "));
    let text = gql(&app, &own(&app), &list, Value::Null).await.text().await.unwrap();
    let positions: Vec<usize> = fields.iter().map(|f| text.find(&format!("\"{f}\"")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    app.stop().await;
}
