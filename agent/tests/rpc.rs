//! The agent RPC surface: authentication, problem bodies, uploads, the PTY WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use support::{stream, TestAgent, SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_cluster_secret_are_refused() {
    let agent = TestAgent::spawn().await;
    for auth in [None, Some("Bearer wrong"), Some(SECRET)] {
        let mut req = agent.client.get(agent.url("/health"));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "https://api.backend.ai/probs/auth-failed");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_describes_the_agent() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("shell", json!({})).await;
    let (status, body) = agent.call(Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    assert!(body["agent_id"].as_str().unwrap().starts_with("i-test-"));
    assert_eq!(body["region"], "local");
    assert_eq!(body["addr"], agent.addr.to_string());
    assert_eq!(body["kernels"], json!([k]));
    assert_eq!(body["slots"]["gpu"], 0.0);
    let (status, body) = agent.call(Method::GET, "/kernels", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["kernels"][0]["id"], k);
    assert_eq!(body["kernels"][0]["status"], "running");
    assert!(body["kernels"][0]["pid"].as_u64().unwrap() > 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_problem_bodies() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({})).await;
    let bad = |status: u16, body: &Value, name: &str| {
        assert_eq!(body["type"], format!("https://api.backend.ai/probs/{name}"), "{body}");
        status
    };
    let resp = agent
        .client
        .post(agent.url(&format!("/kernels/{k}/execute")))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (s, b) = agent
        .call(Method::POST, &format!("/kernels/{k}/execute"), Some(json!({"run_id": "r", "mode": "dance", "code": ""})))
        .await;
    assert_eq!(bad(s, &b, "invalid-api-params"), 400);
    let (s, b) = agent.call(Method::POST, "/kernels", Some(json!({"kernel_id": "x"}))).await;
    assert_eq!(bad(s, &b, "invalid-api-params"), 400);
    let (s, b) = agent
        .call(
            Method::POST,
            "/kernels",
            Some(json!({"kernel_id": "../../etc", "image": {"name": "bash", "runner": "shell"}})),
        )
        .await;
    assert_eq!(bad(s, &b, "invalid-api-params"), 400);
    let (s, b) = agent
        .call(Method::POST, "/kernels", Some(json!({"kernel_id": k, "image": {"name": "bash", "runner": "shell"}})))
        .await;
    assert_eq!(bad(s, &b, "kernel-exists"), 409);
    for (method, path) in [
        (Method::DELETE, "/kernels/nope".to_owned()),
        (Method::POST, "/kernels/nope/restart".to_owned()),
        (Method::POST, "/kernels/nope/interrupt".to_owned()),
    ] {
        let (s, b) = agent.call(method, &path, None).await;
        assert_eq!(bad(s, &b, "kernel-not-found"), 404);
    }
    let (s, b) = agent
        .call(Method::POST, "/kernels/nope/execute", Some(json!({"run_id": "r", "mode": "query", "code": "1"})))
        .await;
    assert_eq!(bad(s, &b, "kernel-not-found"), 404);
    let (s, b) = agent.call(Method::GET, "/no/such/route", None).await;
    assert_eq!(bad(s, &b, "generic-not-found"), 404);
    agent.stop().await;
}

async fn put_file(agent: &TestAgent, k: &str, path: &str, body: Vec<u8>) -> u16 {
    agent
        .client
        .put(agent.url(&format!("/kernels/{k}/files?path={}", encode(path))))
        .bearer_auth(SECRET)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_in_the_scratch_dir_and_never_leave_it() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({})).await;
    assert_eq!(put_file(&agent, &k, "data/in.txt", b"hello".to_vec()).await, 204);
    let results =
        agent.run_to_end(&k, "print(open('data/in.txt').read())\n_ = open('data/in.txt', 'a').write('!')").await;
    assert_eq!(stream(&results, "stdout"), "hello\n");
    assert_eq!(stream(&results, "stderr"), "", "the kernel can write its own upload");

    for path in ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt", ""] {
        assert_eq!(put_file(&agent, &k, path, b"x".to_vec()).await, 400, "{path}");
    }
    assert!(!agent.scratch_root.join("escape.txt").exists());
    // Symlinks planted by the kernel are not followed, neither as directory nor as file.
    let outside = std::env::temp_dir().join(format!("bai-outside-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim.txt"), "original").unwrap();
    let plant = format!(
        "import os\nos.symlink({:?}, 'linkdir')\nos.symlink({:?}, 'linkfile')",
        outside.to_str().unwrap(),
        outside.join("victim.txt").to_str().unwrap()
    );
    agent.run_to_end(&k, &plant).await;
    assert_eq!(put_file(&agent, &k, "linkdir/victim.txt", b"pwned".to_vec()).await, 400);
    assert_eq!(put_file(&agent, &k, "linkfile", b"pwned".to_vec()).await, 400);
    assert_eq!(std::fs::read_to_string(outside.join("victim.txt")).unwrap(), "original");
    std::fs::remove_dir_all(&outside).unwrap();

    assert_eq!(put_file(&agent, &k, "big.bin", vec![0u8; (1 << 20) + 1]).await, 413);
    assert_eq!(put_file(&agent, &k, "ok.bin", vec![0u8; 1 << 20]).await, 204);
    agent.stop().await;
}

/// User code cannot freeze the agent through an upload target: a FIFO (with or
/// without a reader) is refused at once, never blocking an agent thread, and hundreds of
/// such uploads leave the agent serving other kernels' uploads and destroys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_onto_a_fifo_is_refused_at_once_and_blocks_nothing() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({})).await;
    let other = agent.create("python", json!({})).await;
    agent.run_to_end(&k, "import os\nos.mkfifo('pipe')\nos.mkdir('d')\nos.mkfifo('d/pipe')").await;
    let started = std::time::Instant::now();
    let attempts = (0..300).map(|i| {
        let target = if i % 2 == 0 { "pipe" } else { "d/pipe" };
        put_file(&agent, &k, target, b"x".to_vec())
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "refused, not timed out");
    // Another kernel's upload and destroy are served as usual.
    assert_eq!(put_file(&agent, &other, "fine.txt", b"ok".to_vec()).await, 204);
    let (status, _) = agent.call(reqwest::Method::DELETE, &format!("/kernels/{other}"), None).await;
    assert_eq!(status, 200);
    // A FIFO the kernel is reading from is refused too (open would not block, the type does).
    let reader =
        "import threading, os\nt = threading.Thread(target=lambda: open('pipe').read(), daemon=True)\nt.start()";
    agent.run_to_end(&k, reader).await;
    assert_eq!(put_file(&agent, &k, "pipe", b"x".to_vec()).await, 400);
    agent.stop().await;
}

/// A minimal WebSocket client: enough for text frames to and from the PTY endpoint.
struct Ws {
    stream: tokio::net::TcpStream,
}

impl Ws {
    async fn connect(agent: &TestAgent, path: &str) -> Ws {
        let mut stream = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {SECRET}\r\n\r\n",
            agent.addr
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Ws { stream }
    }

    async fn send(&mut self, value: Value) {
        let payload = value.to_string().into_bytes();
        let mut frame = vec![0x81u8];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: payload unchanged
        frame.extend_from_slice(&payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame: (opcode, payload).
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.stream.read_exact(&mut h).await.unwrap();
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            self.stream.read_exact(&mut b).await.unwrap();
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.stream.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).await.unwrap();
        (h[0] & 0x0f, payload)
    }

    /// Collects terminal output until it contains `needle`.
    async fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let mut out = String::new();
        while !out.contains(needle) {
            let left = end.saturating_duration_since(Instant::now());
            let (op, payload) =
                tokio::time::timeout(left, self.recv()).await.unwrap_or_else(|_| panic!("no {needle:?} in {out:?}"));
            if op == 1 {
                let frame: Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(frame["type"], "out");
                let data = base64::engine::general_purpose::STANDARD.decode(frame["data"].as_str().unwrap()).unwrap();
                out.push_str(&String::from_utf8_lossy(&data));
            } else if op == 8 {
                break;
            }
        }
        out
    }
}

fn stdin(text: &str) -> Value {
    json!({"type": "stdin", "chars": base64::engine::general_purpose::STANDARD.encode(text)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pty_runs_a_shell_in_the_scratch_dir() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({})).await;
    let mut ws = Ws::connect(&agent, &format!("/kernels/{k}/pty")).await;
    ws.send(json!({"type": "resize", "rows": 40, "cols": 100})).await;
    ws.send(json!({"type": "ping"})).await;
    ws.send(stdin("echo \"$((6 * 7))-$PWD\"; stty size\n")).await;
    let out = ws.read_until("40 100", Duration::from_secs(10)).await;
    // Inside bubblewrap the scratch dir is mounted at /home/work.
    let host = format!("42-{}", agent.scratch_root.join(&k).display());
    assert!(out.contains(&host) || out.contains("42-/home/work"), "{out}");
    ws.send(json!({"type": "restart"})).await;
    ws.send(stdin("echo again-$((1 + 1))\n")).await;
    ws.read_until("again-2", Duration::from_secs(10)).await;
    // Destroying the kernel ends the stream.
    let (status, _) = agent.call(Method::DELETE, &format!("/kernels/{k}"), None).await;
    assert_eq!(status, 200);
    // Generous: the machine may be busy with other tests.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (op, _) =
            tokio::time::timeout(end.saturating_duration_since(Instant::now()), ws.recv()).await.expect("close frame");
        if op == 8 {
            break;
        }
    }
    let (status, _) = agent.call(Method::GET, "/kernels/nope/pty", None).await;
    assert_eq!(status, 404);
    agent.stop().await;
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The manager embeds an agent inside its own actix System (current-thread runtime).
#[actix_web::test]
async fn an_agent_runs_embedded_in_an_actix_system() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({})).await;
    let results = agent.run_to_end(&k, "print(6 * 7)").await;
    assert_eq!(stream(&results, "stdout"), "42\n");
    let (status, _) = agent.call(Method::DELETE, &format!("/kernels/{k}"), None).await;
    assert_eq!(status, 200);
    agent.stop().await;
}

/// A kernel holds no fd of the agent's but its stdio and runner pipes, even when it is
/// spawned while the agent holds a terminal of another kernel open (an inherited terminal
/// would let one kernel read and write another's, and keep it from ever closing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_inherits_no_fd_of_the_agent() {
    let agent = TestAgent::spawn().await;
    let first = agent.create("python", json!({})).await;
    let mut ws = Ws::connect(&agent, &format!("/kernels/{first}/pty")).await;
    ws.send(stdin("echo ready-$((1 + 1))\n")).await;
    ws.read_until("ready-2", Duration::from_secs(10)).await;
    let code = "import os\nfds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n\
                print([(f, os.readlink(f'/proc/self/fd/{f}')) for f in fds if f > 4])";
    for runner in ["python", "shell"] {
        let k = agent.create(runner, json!({})).await;
        let code = if runner == "python" {
            code.to_owned()
        } else {
            format!("python3 -c \"{}\"", code.replace('\n', ";").replace('"', "\\\""))
        };
        let results = agent.run_to_end(&k, &code).await;
        let out = stream(&results, "stdout");
        // Only the listing's own descriptor (of /proc/self/fd) may show.
        assert!(
            !out.contains("pts") && !out.contains("ptmx") && !out.contains("socket") && !out.contains("pipe"),
            "{runner}: {out}"
        );
    }
    agent.stop().await;
}
