//! Virtual folders (API v4): the REST calls of the contract's part 6 on both backends,
//! sharing through invitations, quotas, and paths that try to leave a folder.

use std::io::Read;

use serde_json::{json, Value};

use crate::helpers::{
    add_user_key, assert_problem, multipart, multipart_parts, ok_json, spawn_app, spawn_app_with, v4, Backend, TestApp,
    BACKENDS,
};

pub async fn upload(app: &TestApp, folder: &str, files: &[(&str, &[u8])]) -> reqwest::Response {
    let (content_type, body) = multipart(files);
    let path = format!("/folders/{folder}/upload");
    let mut request = app.signed_v4("POST", &path, None);
    request.content_type = &content_type;
    request.body = body;
    app.send(request).await
}

/// Downloads `files` of a folder: each file's name and (gunzipped) contents.
pub async fn download(app: &TestApp, folder: &str, files: &[&str]) -> Vec<(String, Vec<u8>)> {
    let response = v4(app, "GET", &format!("/folders/{folder}/download"), Some(json!({"files": files}))).await;
    assert_eq!(response.status().as_u16(), 200);
    let total: u64 = response.headers()["x-total-payloads-length"].to_str().unwrap().parse().unwrap();
    let parts = multipart_parts(response).await;
    let mut out = Vec::new();
    for (headers, bytes) in parts {
        assert!(headers.iter().any(|h| h == "Content-Encoding: gzip"), "{headers:?}");
        let disposition = headers.iter().find(|h| h.starts_with("Content-Disposition: ")).unwrap();
        let name = disposition.split("filename=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut data).unwrap();
        out.push((name, data));
    }
    assert_eq!(total, out.iter().map(|(_, d)| d.len() as u64).sum::<u64>());
    out
}

async fn accept(who: &TestApp, inv_id: &str, access_key: &str) -> reqwest::Response {
    let body = json!({"inv_id": inv_id, "inv_ak": access_key});
    v4(who, "POST", "/folders/invitations/accept", Some(body)).await
}

fn listed(files: &Value) -> Vec<String> {
    let text = files["files"].as_str().expect("files is a string of JSON");
    let entries: Vec<Value> = serde_json::from_str(text).unwrap();
    entries.iter().map(|e| e["filename"].as_str().unwrap().to_owned()).collect()
}

#[actix_web::test]
async fn folders_are_created_listed_filled_and_deleted() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let created = ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "vf1"}))).await, 201).await;
        assert_eq!(created["name"], "vf1");
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_problem(v4(&app, "POST", "/folders", Some(json!({"name": "vf1"}))).await, 400, "folder-already-exists")
            .await;
        let long = "x".repeat(65);
        for bad in [
            json!({}),
            json!({"name": ""}),
            json!({"name": "../x"}),
            json!({"name": "a/b"}),
            json!({"name": ".hidden"}),
            json!({"name": long}),
            json!({"name": "a\u{0}b"}),
            json!({"name": 5}),
        ] {
            assert_problem(v4(&app, "POST", "/folders", Some(bad)).await, 400, "invalid-api-params").await;
        }
        // The legacy spelling with a trailing slash, signed as clients 1.1 to 1.4 do.
        let legacy = app.send(app.signed("GET", "/v2/folders/", None)).await;
        let list = ok_json(legacy, 200).await;
        assert_eq!(list, json!([{"name": "vf1", "id": id, "is_owner": true, "permission": "wd"}]));

        assert_eq!(v4(&app, "POST", "/folders/vf1/mkdir", Some(json!({"path": "d/e"}))).await.status(), 201);
        for bad in ["/abs", "../x", "", "a\u{0}b"] {
            let response = v4(&app, "POST", "/folders/vf1/mkdir", Some(json!({"path": bad}))).await;
            assert_problem(response, 400, "invalid-api-params").await;
        }
        let response = upload(&app, "vf1", &[("a.txt", b"hello"), ("d/up.txt", b"\x00\x01binary")]).await;
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
        let files = ok_json(v4(&app, "GET", "/folders/vf1/files", Some(json!({"path": "d"}))).await, 200).await;
        assert_eq!(listed(&files), ["e", "up.txt"]);
        let root = ok_json(v4(&app, "GET", "/folders/vf1/files", None).await, 200).await;
        assert_eq!(listed(&root), ["a.txt", "d"]);
        let info = ok_json(v4(&app, "GET", "/folders/vf1", None).await, 200).await;
        assert_eq!((&info["name"], &info["id"], &info["numFiles"]), (&json!("vf1"), &json!(id), &json!(2)));
        assert_eq!((&info["is_owner"], &info["permission"]), (&json!(true), &json!("wd")));
        assert!(info["created"].as_str().unwrap().ends_with("+00:00"), "{info}");

        let got = download(&app, "vf1", &["a.txt", "d/up.txt"]).await;
        assert_eq!(got, [("a.txt".to_owned(), b"hello".to_vec()), ("up.txt".to_owned(), b"\x00\x01binary".to_vec())]);
        let response = v4(&app, "GET", "/folders/vf1/download", Some(json!({"files": ["d"]}))).await;
        assert_problem(response, 400, "invalid-api-params").await;
        let response = v4(&app, "GET", "/folders/vf1/download", Some(json!({"files": ["nope"]}))).await;
        assert_problem(response, 404, "generic-not-found").await;
        let response = v4(&app, "GET", "/folders/vf1/download", Some(json!({"files": []}))).await;
        assert_problem(response, 400, "invalid-api-params").await;

        let response = v4(&app, "DELETE", "/folders/vf1/delete_files", Some(json!({"files": ["d"]}))).await;
        assert_problem(response, 400, "invalid-api-params").await;
        let body = json!({"files": ["d", "missing"], "recursive": true});
        assert_eq!(ok_json(v4(&app, "DELETE", "/folders/vf1/delete_files", Some(body)).await, 200).await, json!({}));
        assert_eq!(listed(&ok_json(v4(&app, "GET", "/folders/vf1/files", None).await, 200).await), ["a.txt"]);

        // A known path with another method.
        assert_problem(v4(&app, "GET", "/folders/vf1/upload", None).await, 405, "method-not-allowed").await;
        assert_eq!(v4(&app, "DELETE", "/folders/vf1", None).await.status().as_u16(), 204);
        assert_problem(v4(&app, "GET", "/folders/vf1", None).await, 404, "folder-not-found").await;
        assert_eq!(ok_json(v4(&app, "GET", "/folders", None).await, 200).await, json!([]));
        let dir = app.state.settings.vfolder_root().join("local").join(&id);
        assert!(!dir.exists(), "the folder's files are removed");
        app.stop().await;
    }
}

#[actix_web::test]
async fn folders_are_shared_by_invitation_with_their_permission() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let bob = add_user_key(&app, "bob@example.com").await;
        let bob_other_key = add_user_key(&app, "bob@example.com").await;
        let eve = add_user_key(&app, "eve@example.com").await;
        ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "shared"}))).await, 201).await;
        assert_eq!(upload(&app, "shared", &[("x.txt", b"data")]).await.status(), 201);
        // Another key's folder does not exist for it.
        assert_problem(v4(&bob, "GET", "/folders/shared", None).await, 404, "folder-not-found").await;
        assert_problem(v4(&bob, "DELETE", "/folders/shared", None).await, 404, "folder-not-found").await;
        let invite = |body: Value| v4(&app, "POST", "/folders/shared/invite", Some(body));
        for bad in [
            json!({"perm": "xx", "user_ids": ["bob@example.com"]}),
            json!({"perm": "ro", "user_ids": []}),
            json!({"perm": "ro", "user_ids": ["nobody@example.com"]}),
        ] {
            assert_problem(invite(bad).await, 400, "invalid-api-params").await;
        }
        let body = json!({"perm": "ro", "user_ids": ["bob@example.com", "bob@example.com"]});
        assert_eq!(ok_json(invite(body.clone()).await, 201).await, json!({"invited_ids": ["bob@example.com"]}));
        // Pending already: not invited twice.
        assert_eq!(ok_json(invite(body).await, 201).await, json!({"invited_ids": []}));
        // Only the owner invites.
        let response = v4(&bob, "POST", "/folders/shared/invite", Some(json!({"user_ids": ["eve@example.com"]}))).await;
        assert_problem(response, 404, "folder-not-found").await;

        assert_eq!(
            ok_json(v4(&eve, "GET", "/folders/invitations/list", None).await, 200).await["invitations"],
            json!([])
        );
        let list = ok_json(v4(&bob, "GET", "/folders/invitations/list", None).await, 200).await;
        let invitation = &list["invitations"][0];
        assert_eq!((&invitation["perm"], &invitation["state"]), (&json!("ro"), &json!("pending")), "{list}");
        assert_eq!(invitation["inviter"], "7", "the inviter's user id");
        let inv_id = invitation["id"].as_str().unwrap().to_owned();
        assert_eq!(inv_id.len(), 36, "a dashed uuid");
        // Someone else cannot accept it, nor accept it for a key of another user.
        assert_problem(accept(&eve, &inv_id, &eve.access_key).await, 404, "generic-not-found").await;
        assert_problem(accept(&bob, &inv_id, &eve.access_key).await, 400, "invalid-api-params").await;
        let accepted = ok_json(accept(&bob, &inv_id, &bob.access_key).await, 201).await;
        assert!(accepted["msg"].as_str().unwrap().contains(&bob.access_key), "{accepted}");
        assert_problem(accept(&bob, &inv_id, &bob.access_key).await, 400, "invalid-api-params").await;

        let list = ok_json(v4(&bob, "GET", "/folders", None).await, 200).await;
        assert_eq!(
            (&list[0]["name"], &list[0]["is_owner"], &list[0]["permission"]),
            (&json!("shared"), &json!(false), &json!("ro"))
        );
        assert_eq!(ok_json(v4(&bob_other_key, "GET", "/folders", None).await, 200).await, json!([]), "per key");
        assert_eq!(download(&bob, "shared", &["x.txt"]).await, [("x.txt".to_owned(), b"data".to_vec())]);
        // ro: no writes, no deletes, no sharing.
        assert_problem(upload(&bob, "shared", &[("y.txt", b"no")]).await, 404, "folder-not-found").await;
        let response = v4(&bob, "DELETE", "/folders/shared/delete_files", Some(json!({"files": ["x.txt"]}))).await;
        assert_problem(response, 404, "folder-not-found").await;
        assert_problem(v4(&bob, "DELETE", "/folders/shared", None).await, 404, "folder-not-found").await;

        // A rejected invitation cannot be accepted afterwards.
        ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "other"}))).await, 201).await;
        let body = json!({"perm": "rw", "user_ids": ["eve@example.com"]});
        ok_json(v4(&app, "POST", "/folders/other/invite", Some(body)).await, 201).await;
        let list = ok_json(v4(&eve, "GET", "/folders/invitations/list", None).await, 200).await;
        let id = list["invitations"][0]["id"].as_str().unwrap().to_owned();
        let rejected =
            ok_json(v4(&eve, "DELETE", "/folders/invitations/delete", Some(json!({"inv_id": id}))).await, 200).await;
        assert!(rejected["msg"].as_str().unwrap().contains("rejected"), "{rejected}");
        let body = json!({"inv_id": id, "inv_ak": eve.access_key});
        assert_problem(v4(&eve, "POST", "/folders/invitations/accept", Some(body)).await, 400, "invalid-api-params")
            .await;
        let body = json!({"inv_id": "not-a-uuid"});
        assert_problem(v4(&eve, "DELETE", "/folders/invitations/delete", Some(body)).await, 404, "generic-not-found")
            .await;

        // The owner deletes the folder: the share goes with it.
        assert_eq!(v4(&app, "DELETE", "/folders/shared", None).await.status().as_u16(), 204);
        assert_eq!(ok_json(v4(&bob, "GET", "/folders", None).await, 200).await, json!([]));
        app.stop().await;
    }
}

#[actix_web::test]
async fn quotas_are_enforced_on_upload() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.vfolder.max_size = 1000;
        s.vfolder.max_files = 3;
    })
    .await
    .unwrap();
    ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "small"}))).await, 201).await;
    let big = vec![b'x'; 1500];
    assert_problem(upload(&app, "small", &[("big.bin", &big)]).await, 400, "invalid-api-params").await;
    let root = ok_json(v4(&app, "GET", "/folders/small/files", None).await, 200).await;
    assert_eq!(listed(&root), Vec::<String>::new(), "a refused upload leaves nothing");
    assert_eq!(upload(&app, "small", &[("a", b"1"), ("b", b"2")]).await.status(), 201);
    assert_problem(upload(&app, "small", &[("c", b"3"), ("d", b"4")]).await, 400, "invalid-api-params").await;
    let eleven: Vec<(String, Vec<u8>)> = (0..11).map(|i| (format!("f{i}"), vec![b'1'])).collect();
    let files: Vec<(&str, &[u8])> = eleven.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let app2 = spawn_app(Backend::Embedded).await.unwrap();
    ok_json(v4(&app2, "POST", "/folders", Some(json!({"name": "many"}))).await, 201).await;
    assert_problem(upload(&app2, "many", &files).await, 400, "invalid-api-params").await;
    app2.stop().await;
    app.stop().await;
}

#[actix_web::test]
async fn folder_paths_never_leave_the_folder() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let created = ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "jail"}))).await, 201).await;
    let dir = app.state.settings.vfolder_root().join("local").join(created["id"].as_str().unwrap());
    // What a kernel with the folder mounted can plant.
    std::os::unix::fs::symlink("/etc/passwd", dir.join("leak")).unwrap();
    std::os::unix::fs::symlink("/", dir.join("up")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../etc", dir.join("rel")).unwrap();
    nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for file in ["leak", "up/etc/passwd", "rel/passwd", "../../../etc/passwd", "/etc/passwd"] {
        let response = v4(&app, "GET", "/folders/jail/download", Some(json!({"files": [file]}))).await;
        assert!(response.status().is_client_error(), "{file}: {}", response.status());
        assert!(!response.text().await.unwrap().contains("root:"), "{file}");
    }
    let started = std::time::Instant::now();
    let response = v4(&app, "GET", "/folders/jail/download", Some(json!({"files": ["fifo"]}))).await;
    assert_problem(response, 400, "invalid-api-params").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "a FIFO never blocks");
    for path in ["up", "rel", "up/tmp"] {
        let response = v4(&app, "GET", "/folders/jail/files", Some(json!({"path": path}))).await;
        assert_problem(response, 404, "generic-not-found").await;
    }
    let response = upload(&app, "jail", &[("up/tmp/planted", b"x")]).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(!std::path::Path::new("/tmp/planted").exists());
    let response = v4(&app, "POST", "/folders/jail/mkdir", Some(json!({"path": "up/tmp/made"}))).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(!std::path::Path::new("/tmp/made").exists());
    // Deleting a link deletes the link.
    let body = json!({"files": ["up", "leak"], "recursive": true});
    assert_eq!(v4(&app, "DELETE", "/folders/jail/delete_files", Some(body)).await.status(), 200);
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert!(!dir.join("up").exists() && !dir.join("leak").exists());
    app.stop().await;
}
