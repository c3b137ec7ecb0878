//! API v4 as clients 1.1 to 1.5.1 use it: unprefixed routes and their signing, and the
//! kernel session calls they added (create config, run ids, logs, files, downloads).

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, multipart_parts, ok_json, send_with_body, spawn_app, unique, v4, Backend, Signed, TestApp, BACKENDS,
};
use crate::vfolders::{download as folder_download, upload as folder_upload};

/// Sends `request` signed as it is, with `{"echo": echo}` as the body instead.
async fn send_other_body(app: &TestApp, request: Signed<'_>, echo: &str) -> reqwest::Response {
    send_with_body(app, request, json!({"echo": echo}).to_string().into_bytes()).await
}

#[actix_web::test]
async fn unprefixed_routes_are_api_4_and_sign_no_body() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        for path in ["/auth", "/v4/auth/", "/v2/auth/", "/v3/authorize"] {
            let body = ok_json(v4(&app, "POST", path, Some(json!({"echo": path}))).await, 200).await;
            assert_eq!(body, json!({"authorized": "yes", "echo": path}));
        }
        // v4 signs no body: a body changed in flight still verifies (TLS protects it).
        let response = send_other_body(&app, app.signed_v4("GET", "/auth", Some(json!({"echo": "a"}))), "b").await;
        assert_eq!(ok_json(response, 200).await["echo"], "b");
        // v2 and v3 sign the body of a GET too (clients 1.4 send them).
        let request = app.signed("GET", "/v3/authorize", Some(json!({"echo": "get body"})));
        assert_eq!(ok_json(app.send(request).await, 200).await["echo"], "get body");
        let response = send_other_body(&app, app.signed("GET", "/v3/authorize", Some(json!({"echo": "x"}))), "y").await;
        assert_problem(response, 401, "auth-failed").await;
        // No Content-Type: signed as text/plain (client 1.5.1 on WebSocket upgrades) or
        // application/octet-stream (its HTTP library's default) both verify.
        for assumed in ["text/plain", "application/octet-stream"] {
            let mut request = app.signed_v4("GET", "/auth", None);
            request.content_type = assumed;
            let mut builder = app.client.get(format!("{}/auth", app.address));
            for (name, value) in app.signature_headers(&request) {
                if name != "Content-Type" {
                    builder = builder.header(name, value);
                }
            }
            assert_eq!(builder.send().await.unwrap().status().as_u16(), 200, "{assumed}");
        }
        app.stop().await;
    }
}

#[actix_web::test]
async fn unknown_and_wrong_method_paths_answer_problems() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    // Unknown paths are 404 before any signature check; known ones with another method 405.
    for path in ["/nope", "/kernelx", "/v4/nope/x"] {
        let response = app.get(path).await;
        assert!([401, 404].contains(&response.status().as_u16()), "{path}");
    }
    assert_problem(app.get("/nope").await, 404, "generic-not-found").await;
    assert_problem(v4(&app, "GET", "/kernel", None).await, 405, "method-not-allowed").await;
    assert_problem(v4(&app, "GET", "/kernel/create", None).await, 404, "kernel-not-found").await;
    assert_problem(v4(&app, "POST", "/kernel/x/logs", None).await, 405, "method-not-allowed").await;
    assert_problem(v4(&app, "DELETE", "/folders", None).await, 405, "method-not-allowed").await;
    app.stop().await;
}

async fn run(app: &TestApp, token: &str, body: Value) -> Value {
    let response = v4(app, "POST", &format!("/kernel/{token}"), Some(body)).await;
    ok_json(response, 200).await["result"].clone()
}

/// Runs `body`, continuing while the answers say `continued` (or `build-finished`), as
/// the clients do; the last answer and all the output.
async fn drive(app: &TestApp, token: &str, body: Value) -> (Value, String) {
    let mut result = run(app, token, body).await;
    let mut output = stdout(&result);
    while result["status"] == "continued" || result["status"] == "build-finished" {
        let body = json!({"mode": "continue", "code": "", "runId": result["runId"]});
        result = run(app, token, body).await;
        output.push_str(&stdout(&result));
    }
    (result, output)
}

fn stdout(result: &Value) -> String {
    result["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item[0] == "stdout" || item[0] == "stderr")
        .map(|item| item[1].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn sessions_take_config_mount_folders_and_serve_their_files() {
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "data1"}))).await, 201).await;
        assert_eq!(folder_upload(&app, "data1", &[("in.txt", b"hello from the folder")]).await.status(), 201);
        let token = unique("v4-")[..24].to_owned();
        let create = |lang: &str| {
            json!({"lang": lang, "clientSessionToken": token, "config": {"mounts": ["data1"],
                   "environ": {"GREETING": "hi there"}, "instanceMemory": "512", "instanceCores": "1",
                   "instanceGPUs": null}})
        };
        let created = ok_json(v4(&app, "POST", "/kernel", Some(create("python3"))).await, 201).await;
        assert_eq!(created, json!({"kernelId": token, "created": true}));
        let again = ok_json(v4(&app, "POST", "/kernel/create", Some(create("python3"))).await, 201).await;
        assert_eq!(again["created"], false);
        assert_problem(v4(&app, "POST", "/kernel", Some(create("bash"))).await, 400, "kernel-already-exists").await;
        // The folder is in use: deleting it is refused while the session lives.
        assert_problem(v4(&app, "DELETE", "/folders/data1", None).await, 400, "invalid-api-params").await;

        let code = "import os\nprint(os.environ['GREETING'])\nprint(open('data1/in.txt').read())\n\
                    open('data1/out.txt', 'w').write('from the kernel')\nopen('k.txt', 'w').write('kfile')\n\
                    os.makedirs('sub/deeper', exist_ok=True)\n_ = open('sub/deeper/z.txt', 'w').write('zz')";
        let (result, output) = drive(&app, &token, json!({"mode": "query", "code": code, "runId": null})).await;
        assert_eq!(result["status"], "finished", "{result}");
        let run_id = result["runId"].as_str().unwrap();
        assert_eq!(run_id.len(), 32, "a server-assigned run id: {result}");
        assert_eq!(result["exitCode"], 0, "{result}");
        assert_eq!(output, "hi there\nhello from the folder\n");
        // What the kernel wrote into the folder (as its own uid) is there.
        let got = folder_download(&app, "data1", &["out.txt"]).await;
        assert_eq!(got, [("out.txt".to_owned(), b"from the kernel".to_vec())]);
        // A restart keeps the mounts and the environment.
        assert_eq!(v4(&app, "PATCH", &format!("/kernel/{token}"), None).await.status().as_u16(), 204);
        let again = "import os\nprint(os.environ['GREETING'], open('data1/out.txt').read())";
        let (result, output) = drive(&app, &token, json!({"mode": "query", "code": again, "runId": null})).await;
        assert_eq!(output, "hi there from the kernel\n", "{result}");

        let logs = ok_json(v4(&app, "GET", &format!("/kernel/{token}/logs"), None).await, 200).await;
        assert!(logs["result"]["logs"].as_str().unwrap().contains("hi there"), "{logs}");

        // What client 1.5.1 sends for `ls`: a form-encoded body under another content type.
        let files_path = format!("/kernel/{token}/files");
        let mut request = app.signed_v4("GET", &files_path, None);
        request.content_type = "application/octet-stream";
        request.body = b"path=%2Fhome%2Fwork".to_vec();
        let listing = ok_json(app.send(request).await, 200).await;
        let entries: Vec<Value> = serde_json::from_str(listing["files"].as_str().unwrap()).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e["filename"].as_str().unwrap()).collect();
        assert!(names.contains(&"k.txt") && names.contains(&"sub") && names.contains(&"data1"), "{names:?}");
        assert_eq!(listing["errors"], "");
        assert!(listing["abspath"].as_str().unwrap().ends_with("/\n"), "{listing}");
        let k = entries.iter().find(|e| e["filename"] == "k.txt").unwrap();
        assert_eq!((&k["size"], &k["mode"].as_str().unwrap()[..1]), (&json!(5), "-"));
        let sub =
            ok_json(v4(&app, "GET", &format!("/kernel/{token}/files"), Some(json!({"path": "sub"}))).await, 200).await;
        assert!(sub["files"].as_str().unwrap().contains("deeper"), "{sub}");
        for outside in ["/etc", "../..", "/home/work/../../etc"] {
            let body = Some(json!({"path": outside}));
            let listing = ok_json(v4(&app, "GET", &format!("/kernel/{token}/files"), body).await, 200).await;
            assert_eq!(listing["files"], "", "{outside}");
            assert_ne!(listing["errors"], "", "{outside}");
        }

        let response =
            v4(&app, "GET", &format!("/kernel/{token}/download"), Some(json!({"files": ["k.txt", "sub"]}))).await;
        assert_eq!(response.status().as_u16(), 200);
        let parts = multipart_parts(response).await;
        assert_eq!(parts.len(), 2);
        for (headers, _) in &parts {
            // Client 1.5.1 skips header lines by this exact prefix.
            assert!(headers.iter().all(|h| h.starts_with("Content-")), "{headers:?}");
        }
        let mut names = Vec::new();
        for (_, tar) in &parts {
            for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().to_string_lossy().into_owned();
                let mut text = String::new();
                entry.read_to_string(&mut text).ok();
                names.push((name, text));
            }
        }
        assert!(names.contains(&("k.txt".to_owned(), "kfile".to_owned())), "{names:?}");
        assert!(names.contains(&("sub/deeper/z.txt".to_owned(), "zz".to_owned())), "{names:?}");
        for bad in [json!({"files": []}), json!({}), json!({"files": ["a", "b", "c", "d", "e", "f"]})] {
            let response = v4(&app, "GET", &format!("/kernel/{token}/download"), Some(bad)).await;
            assert_problem(response, 400, "invalid-api-params").await;
        }

        // User code plants links out and a FIFO: nothing leaks, nothing blocks.
        let plant = "import os\nos.symlink('/etc/passwd', 'pw')\nos.symlink('/', 'root')\nos.mkfifo('ff')";
        let (result, _) = drive(&app, &token, json!({"mode": "query", "code": plant, "runId": null})).await;
        assert_eq!(result["status"], "finished");
        for file in ["pw", "root/etc/passwd", "ff", "/etc/passwd"] {
            let started = std::time::Instant::now();
            let body = Some(json!({"files": [file]}));
            let response = v4(&app, "GET", &format!("/kernel/{token}/download"), body).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_eq!(status, 400, "{file}: {text}");
            assert!(!text.contains("root:x:0"), "{file}");
            assert!(started.elapsed() < Duration::from_secs(10), "{file} blocked");
        }
        let body = Some(json!({"path": "root"}));
        let listing = ok_json(v4(&app, "GET", &format!("/kernel/{token}/files"), body).await, 200).await;
        assert_eq!(listing["files"], "", "{listing}");

        // Runs that ask for input and that continue, as clients 1.1 and later drive them.
        let asking = "name = input('name? ')\nprint('hello', name)";
        let (result, output) = drive(&app, &token, json!({"mode": "query", "code": asking, "runId": null})).await;
        assert_eq!((&result["status"], output.as_str()), (&json!("waiting-input"), "name? "), "{result}");
        let run_id = result["runId"].as_str().unwrap().to_owned();
        let (result, output) = drive(&app, &token, json!({"mode": "input", "code": "bob", "runId": run_id})).await;
        assert_eq!((&result["status"], &result["runId"]), (&json!("finished"), &json!(run_id)), "{result}");
        assert_eq!(output, "hello bob\n", "{result}");
        let slow = "import time\ntime.sleep(4)\nprint('slept')";
        let mut result = run(&app, &token, json!({"mode": "query", "code": slow, "runId": null})).await;
        let run_id = result["runId"].as_str().unwrap().to_owned();
        // Output comes with whichever answer was due when it was printed: all of them count.
        let mut output = stdout(&result);
        let mut continued = 0;
        while result["status"] == "continued" {
            continued += 1;
            result = run(&app, &token, json!({"mode": "continue", "code": "", "runId": run_id})).await;
            output.push_str(&stdout(&result));
        }
        assert!(continued > 0, "a 4 s run continues at least once");
        assert_eq!(result["status"], "finished");
        assert_eq!(output, "slept\n", "{result}");
        let batch = json!({"mode": "batch", "code": "", "runId": null,
                           "options": {"build": "*", "exec": "exit 3", "buildLog": false}});
        let (result, _) = drive(&app, &token, batch).await;
        assert_eq!((&result["status"], &result["exitCode"]), (&json!("finished"), &json!(3)), "{result}");

        let response = v4(&app, "DELETE", &format!("/kernel/{token}"), None).await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(v4(&app, "DELETE", "/folders/data1", None).await.status().as_u16(), 204);
        app.stop().await;
    }
}

#[actix_web::test]
async fn bad_create_bodies_are_refused() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let base = |token: &str, config: Value| json!({"lang": "python3", "clientSessionToken": token, "config": config});
    for (token, config, problem) in [
        ("ab", json!({}), "invalid-api-params"),
        ("ab!cd", json!({}), "invalid-api-params"),
        (".abcd", json!({}), "invalid-api-params"),
        ("okay-token", json!({"mounts": ["nope"]}), "folder-not-found"),
        ("okay-token", json!({"mounts": ["../etc"]}), "folder-not-found"),
        ("okay-token", json!({"environ": {"BAD NAME": "x"}}), "invalid-api-params"),
        ("okay-token", json!({"environ": {"A": 5}}), "invalid-api-params"),
        ("okay-token", json!({"instanceMemory": "lots"}), "invalid-api-params"),
        ("okay-token", json!({"instanceCores": "-1"}), "invalid-api-params"),
    ] {
        let response = v4(&app, "POST", "/kernel", Some(base(token, config.clone()))).await;
        let status = if problem == "folder-not-found" { 404 } else { 400 };
        assert_problem(response, status, problem).await;
        assert!(crate::helpers::sessions_named(&app, token).await.is_empty(), "{token} {config}");
    }
    // v1 to v3 keep their token rule, 4 to 80 characters.
    let response = app.send(app.signed("POST", "/v3/kernel/create", Some(base("abc", json!({}))))).await;
    assert_problem(response, 400, "invalid-api-params").await;
    app.stop().await;
}

#[actix_web::test]
async fn a_read_only_share_is_mounted_read_only() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let bob = crate::helpers::add_user_key(&app, "bob@example.com").await;
    ok_json(v4(&app, "POST", "/folders", Some(json!({"name": "pub"}))).await, 201).await;
    assert_eq!(folder_upload(&app, "pub", &[("readme", b"read me")]).await.status(), 201);
    let body = json!({"perm": "ro", "user_ids": ["bob@example.com"]});
    ok_json(v4(&app, "POST", "/folders/pub/invite", Some(body)).await, 201).await;
    let list = ok_json(v4(&bob, "GET", "/folders/invitations/list", None).await, 200).await;
    let body = json!({"inv_id": list["invitations"][0]["id"], "inv_ak": bob.access_key});
    ok_json(v4(&bob, "POST", "/folders/invitations/accept", Some(body)).await, 201).await;
    let token = "bob-session";
    let create = json!({"lang": "python3", "clientSessionToken": token, "config": {"mounts": ["pub"]}});
    ok_json(v4(&bob, "POST", "/kernel", Some(create)).await, 201).await;
    let code = "print(open('pub/readme').read())\ntry:\n    open('pub/new', 'w').write('x')\n    print('WROTE')\n\
                except OSError as e:\n    print('REFUSED', e.errno)";
    let (_, out) = drive(&bob, token, json!({"mode": "query", "code": code, "runId": null})).await;
    assert!(out.starts_with("read me\n"), "{out}");
    let sandboxed = std::process::Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    if sandboxed {
        // EROFS: a read-only bind inside bubblewrap.
        assert!(out.contains("REFUSED 30"), "{out}");
        let root = ok_json(v4(&app, "GET", "/folders/pub/files", None).await, 200).await;
        assert!(!root["files"].as_str().unwrap().contains("\"new\""), "{root}");
    } else {
        // Without bubblewrap a share is a symlink: read-only is not enforced (README).
        assert!(out.contains("WROTE"), "{out}");
    }
    assert_eq!(v4(&bob, "DELETE", &format!("/kernel/{token}"), None).await.status().as_u16(), 200);
    app.stop().await;
}
