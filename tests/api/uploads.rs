//! Kernel uploads: what is checked, and the memory all uploads hold at once.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    assert_problem, create_session as create, eventually, spawn_app, spawn_app_with, unique, Backend,
};
use crate::kernel::execute;

#[actix_web::test]
async fn uploads_are_checked() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("tok");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    let upload = |files: Vec<(&str, Vec<u8>)>| {
        let boundary = "XyZboundary";
        let mut body = Vec::new();
        for (name, data) in files {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"src\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let path = format!("/v3/kernel/{token}/upload");
        let app = &app;
        async move {
            // Multipart bodies are signed as empty.
            let mut request = app.signed("POST", &path, None);
            request.content_type = "multipart/form-data";
            let mut builder = app.client.post(format!("{}{path}", app.address));
            for (name, value) in app.signature_headers(&request) {
                if name != "Content-Type" {
                    builder = builder.header(name, value);
                }
            }
            builder
                .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let response = upload(vec![("a.txt", b"alpha".to_vec()), ("dir/b.txt", b"beta".to_vec())]).await;
    // Signed as the 1.0 SDK (v2.20170315): 200 with an empty body instead of 204.
    assert_eq!(response.status().as_u16(), 200, "{:?}", response.text().await);
    let read = execute(&app, &token, "print(open('a.txt').read() + open('dir/b.txt').read())", "r1").await;
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["result"]["console"], json!([["stdout", "alphabeta\n"]]));
    for name in ["../escape.txt", "/etc/passwd", "a/../../b"] {
        assert_problem(upload(vec![(name, b"x".to_vec())]).await, 400, "invalid-api-params").await;
    }
    assert_problem(upload(vec![("big.bin", vec![0u8; (1 << 20) + 1])]).await, 400, "invalid-api-params").await;
    let names: Vec<String> = (0..21).map(|i| format!("f{i}.txt")).collect();
    let many: Vec<(&str, Vec<u8>)> = names.iter().map(|name| (name.as_str(), b"x".to_vec())).collect();
    assert_problem(upload(many).await, 400, "invalid-api-params").await;
    let mixed = vec![("good.txt", b"x".to_vec()), ("../bad.txt", b"x".to_vec())];
    assert_problem(upload(mixed).await, 400, "invalid-api-params").await;
    // A refused upload writes nothing, not even the files before the fault.
    let code = "import os\nprint(os.path.exists('f0.txt'), os.path.exists('good.txt'))";
    let read: Value = execute(&app, &token, code, "r2").await.json().await.unwrap();
    assert_eq!(read["result"]["console"], json!([["stdout", "False False\n"]]));

    // Checked as the body streams in: a file past the limit is refused while the rest of
    // the body (declared, never sent) is still to come.
    let mut stream = start_upload(&app, &token, (1 << 20) + 4096).await;
    let mut answer = vec![0u8; 4096];
    // Generous: a server that waited for the whole body would never answer.
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer)).await;
    let read = read.expect("an answer before the body ends").unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid-api-params"), "{answer}");
    app.stop().await;
}

/// Opens an upload to `token` and sends its head and `bytes` of a file, not the rest.
async fn start_upload(app: &crate::helpers::TestApp, token: &str, bytes: usize) -> tokio::net::TcpStream {
    let path = format!("/v3/kernel/{token}/upload");
    let mut request = app.signed("POST", &path, None);
    request.content_type = "multipart/form-data";
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", app.host);
    for (name, value) in app.signature_headers(&request) {
        if name != "Content-Type" {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Content-Type: multipart/form-data; boundary=B0undary\r\nContent-Length: 8388608\r\n\r\n");
    head.push_str("--B0undary\r\nContent-Disposition: form-data; name=\"src\"; filename=\"part.bin\"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(&app.host).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; bytes]).await.unwrap();
    stream
}

/// What all uploads hold at once is bounded (`manager.upload_memory`): past it an
/// upload answers 503 with Retry-After at once, and the budget comes back when the
/// uploads holding it end.
#[actix_web::test]
async fn uploads_together_hold_a_bounded_amount_of_memory() {
    let app = spawn_app_with(Backend::Embedded, |s| s.manager.upload_memory = 1 << 20).await.unwrap();
    app.wait_for_agent().await;
    let token = unique("budget");
    assert_eq!(create(&app, "python3", &token).await.status().as_u16(), 201);
    let holding = start_upload(&app, &token, 900 << 10).await;
    // Once the server read enough of what was sent that 300 KiB more do not fit.
    eventually("the first upload holds the budget", Duration::from_secs(30), || async {
        (app.state.upload_budget.available_permits() < 300).then_some(())
    })
    .await;
    let mut refused = start_upload(&app, &token, 300 << 10).await;
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), refused.read(&mut buf)).await;
    let read = read.expect("an answer before the body ends").unwrap();
    let answer = String::from_utf8_lossy(&buf[..read]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("service-unavailable"), "{answer}");

    // The upload holding the budget goes away: the budget comes back.
    drop(holding);
    drop(refused);
    let mut accepted = false;
    for _ in 0..50 {
        let mut small = start_upload(&app, &token, 0).await;
        small.write_all(&vec![b'y'; 600 << 10]).await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(300), small.read(&mut buf)).await;
        // No answer yet: the server waits for the rest of the body, having accepted this much.
        if read.is_err() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the budget did not come back");
    app.stop().await;
}
