//! The agent against real etcd (finding the manager's events address) and Redis (kernel
//! stats in database 0). Skipped when the servers are not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_redis::redis::AsyncCommands;
use serde_json::json;
use support::{test_config, EventSink, TestAgent};

/// A server process of this test, killed (by pid) when dropped.
struct Server(Child, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn installed(binary: &str) -> bool {
    ["/usr/bin", "/usr/local/bin"].iter().any(|d| std::path::Path::new(d).join(binary).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_address_from_etcd_and_stats_to_redis() {
    if !installed("etcd") || !installed("redis-server") {
        assert!(
            std::env::var("BACKENDAI_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "BACKENDAI_REQUIRE_SERVICES=1 but etcd or redis-server is not installed"
        );
        // Straight to the process's stderr: libtest would swallow eprintln! of a passing test.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: etcd or redis-server not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bai-backends-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (client_port, peer_port, redis_port) = (free_port(), free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let _etcd = Server(
        Command::new("etcd")
            .args(["--data-dir", dir.join("etcd").to_str().unwrap()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir.clone(),
    );
    let _redis = Server(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        dir.clone(),
    );

    let sink = EventSink::start().await;
    let namespace = format!("test{}", uuid::Uuid::new_v4().simple());
    let etcd_addr = format!("127.0.0.1:{client_port}");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let put = async {
            let mut c = etcd_client::Client::connect([etcd_addr.as_str()], None).await?;
            c.put(format!("/sorna/{namespace}/nodes/manager/event_addr"), sink.addr.to_string(), None).await
        };
        match put.await {
            Ok(_) => break,
            Err(e) if Instant::now() < end => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd did not come up: {e}"),
        }
    }

    let mut config = test_config();
    config.etcd_addr = Some(etcd_addr);
    config.namespace = namespace;
    config.redis_addr = Some(format!("127.0.0.1:{redis_port}"));
    // Events to the events port found in etcd (with Redis for the stats only).
    config.event_bus = backendai_agent::config::BusKind::Http;
    let agent = TestAgent::spawn_with(config).await;
    sink.wait_for(Duration::from_secs(5), |e| e["event"] == "instance_started")
        .await
        .expect("instance_started delivered to the address found in etcd");
    let k = agent.create("python", json!({})).await;
    agent.run_to_end(&k, "x = bytearray(4 * 1024**2)").await;

    let pool = deadpool_redis::Config::from_url(format!("redis://127.0.0.1:{redis_port}/0"))
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let mem: u64 = loop {
        let mem: Option<u64> = conn.hget(&k, "mem_cur_bytes").await.unwrap();
        match mem {
            Some(mem) => break mem,
            None if Instant::now() < end => tokio::time::sleep(Duration::from_millis(100)).await,
            None => panic!("no stats in Redis"),
        }
    };
    assert!(mem > 4 * 1024 * 1024, "{mem}");
    let ttl: i64 = conn.ttl(&k).await.unwrap();
    assert!(ttl > 0 && ttl <= 120, "{ttl}");
    let cpu: Option<u64> = conn.hget(&k, "cpu_used").await.unwrap();
    assert!(cpu.is_some());
    agent.stop().await;
    sink.stop().await;
}
