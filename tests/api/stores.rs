//! The config store and counter stores, each implementation against the same checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backendai_manager::stores::{
    ConfigStore, EmbeddedConfigStore, EtcdConfigStore, MemoryCounters, RateLimitStore, RedisStore, StatStore,
};
use futures_util::future::join_all;

use serde_json::json;

use crate::helpers::{assert_problem, create_session, services, start_app, test_settings, unique, Backend};

async fn config_stores() -> Vec<Box<dyn ConfigStore>> {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut stores: Vec<Box<dyn ConfigStore>> = vec![
        Box::new(EmbeddedConfigStore::ephemeral()),
        Box::new(EmbeddedConfigStore::open(dir.join("store.json")).unwrap()),
    ];
    if let Some(services) = services() {
        stores.push(Box::new(EtcdConfigStore::connect(&services.etcd_addr, &unique("test")).await.unwrap()));
    }
    stores
}

#[actix_web::test]
async fn config_stores_get_put_prefix_and_delete() {
    for store in config_stores().await {
        let kind = store.kind();
        assert_eq!(store.get("images/python3/cpu").await.unwrap(), None, "{kind}");
        let pairs: Vec<(String, String)> = (0..200).map(|i| (format!("images/img{i:03}/cpu"), i.to_string())).collect();
        store.put_many(&pairs).await.unwrap();
        store.put("images_other", "x").await.unwrap();
        assert_eq!(store.get("images/img007/cpu").await.unwrap().as_deref(), Some("7"), "{kind}");
        let found = store.get_prefix("images/").await.unwrap();
        assert_eq!(found.len(), 200, "{kind}");
        assert_eq!(found[0], ("images/img000/cpu".to_owned(), "0".to_owned()), "{kind}");
        store.delete("images/img000/cpu", false).await.unwrap();
        assert_eq!(store.get("images/img000/cpu").await.unwrap(), None, "{kind}");
        store.delete("images/", true).await.unwrap();
        assert!(store.get_prefix("images/").await.unwrap().is_empty(), "{kind}");
        assert_eq!(
            store.get("images_other").await.unwrap().as_deref(),
            Some("x"),
            "{kind}: prefix delete went too far"
        );
        store.ping().await.unwrap();
    }
}

#[actix_web::test]
async fn the_embedded_config_store_is_shared_through_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    let server = EmbeddedConfigStore::open(path.clone()).unwrap();
    server.put("nodes/manager", "m1").await.unwrap();
    // Another process (the CLI) writes while the server runs.
    let cli = EmbeddedConfigStore::open(path).unwrap();
    assert_eq!(cli.get("nodes/manager").await.unwrap().as_deref(), Some("m1"));
    // Fixed on purpose: the server notices the file's change by its modification time,
    // which must tick past the one it last saw.
    tokio::time::sleep(Duration::from_millis(20)).await;
    cli.put("config/overbook/cpu", "4").await.unwrap();
    assert_eq!(server.get("config/overbook/cpu").await.unwrap().as_deref(), Some("4"));
}

async fn counters() -> Vec<(Arc<dyn RateLimitStore>, Arc<dyn StatStore>)> {
    let memory = Arc::new(MemoryCounters::default());
    let mut stores: Vec<(Arc<dyn RateLimitStore>, Arc<dyn StatStore>)> = vec![(memory.clone(), memory)];
    if let Some(services) = services() {
        stores.push((
            Arc::new(RedisStore::connect(&services.redis_addr, 1, Duration::from_secs(1)).await.unwrap()),
            Arc::new(RedisStore::connect(&services.redis_addr, 0, Duration::from_secs(1)).await.unwrap()),
        ));
    }
    stores
}

#[actix_web::test]
async fn rate_limit_counts_are_exact_under_concurrency() {
    for (store, _) in counters().await {
        let key = unique("ratelimit:test:");
        let windows = join_all((0..200).map(|_| store.hit(&key, 60_000))).await;
        let mut counts: Vec<u64> = windows.iter().map(|w| w.as_ref().unwrap().count).collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=200).collect::<Vec<_>>(), "{}", store.kind());
        let peek = store.peek(&key).await.unwrap();
        assert_eq!(peek.count, 200);
        assert!(peek.reset_ms > 0 && peek.reset_ms <= 60_000);
    }
}

/// Two managers count one key at once, each coalescing its concurrent requests: every
/// request still gets a count of its own, and none is lost.
#[actix_web::test]
async fn rate_limit_counts_are_exact_across_managers() {
    let Some(services) = services() else { return };
    let a = RedisStore::connect(&services.redis_addr, 1, Duration::from_secs(1)).await.unwrap();
    let b = RedisStore::connect(&services.redis_addr, 1, Duration::from_secs(1)).await.unwrap();
    let key = unique("ratelimit:test:");
    let hits = (0..300).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        store.hit(&key, 60_000)
    });
    let mut counts: Vec<u64> = join_all(hits).await.into_iter().map(|w| w.unwrap().count).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=300).collect::<Vec<_>>());
    assert_eq!(a.peek(&key).await.unwrap().count, 300);
}

#[actix_web::test]
async fn a_rate_limit_window_resets() {
    for (store, _) in counters().await {
        let key = unique("ratelimit:test:");
        store.hit(&key, 100).await.unwrap();
        store.hit(&key, 100).await.unwrap();
        // Fixed on purpose: real time must pass the 100 ms window (it expires by the clock).
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.peek(&key).await.unwrap().count, 0, "{}", store.kind());
        assert_eq!(store.hit(&key, 100).await.unwrap().count, 1, "{}", store.kind());
    }
}

#[actix_web::test]
async fn kernel_stats_are_stored_and_expire() {
    for (_, stats) in counters().await {
        let kernel = unique("kernel-");
        let values = HashMap::from([("cpu_used".to_owned(), 120), ("mem_cur_bytes".to_owned(), 1 << 20)]);
        stats.set_kernel_stats(&kernel, &values, Duration::from_secs(60)).await.unwrap();
        assert_eq!(stats.kernel_stats(&kernel).await.unwrap(), values);
        assert_eq!(
            stats.kernel_stat_fields(&kernel, &["mem_cur_bytes", "unknown", "cpu_used"]).await.unwrap(),
            vec![values.get("mem_cur_bytes").copied(), None, values.get("cpu_used").copied()]
        );
        stats.remove_kernel_stats(&kernel).await.unwrap();
        assert!(stats.kernel_stats(&kernel).await.unwrap().is_empty());
        assert_eq!(stats.kernel_stat_fields(&kernel, &["cpu_used"]).await.unwrap(), vec![None]);
        stats.set_kernel_stats(&kernel, &values, Duration::from_millis(100)).await.unwrap();
        // Fixed on purpose: real time must pass the 100 ms TTL (it expires by the clock).
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(stats.kernel_stats(&kernel).await.unwrap().is_empty());
    }
}

/// A TCP forwarder to PostgreSQL that can be cut: the database "goes down" for the app
/// behind it, while the server itself stays up for the other tests.
struct Cuttable {
    addr: std::net::SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cuttable {
    async fn to(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = Self { addr, tasks: Default::default() };
        this.forward(listener, target);
        this
    }

    fn forward(&self, listener: tokio::net::TcpListener, target: String) {
        let registry = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Connections are accepted again, at the same address.
    async fn restore(&self, target: String) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.forward(listener, target);
    }

    /// Every connection is dropped and no new one is accepted.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// While PostgreSQL is unreachable every route answers 503 service-unavailable (as for
/// Redis and etcd), never a 500.
#[actix_web::test]
async fn a_database_outage_answers_503_not_500() {
    let Some((mut settings, _dir)) = test_settings(Backend::Services).await else { return };
    let url = settings.db.url.as_ref().unwrap().expose().to_owned();
    let (head, rest) = url.split_once('@').unwrap();
    let (host, name) = rest.split_once('/').unwrap();
    let proxy = Cuttable::to(host.to_owned()).await;
    settings.db.url = Some(backendai_manager::config::Secret::new(format!("{head}@{}/{name}", proxy.addr)));
    let app = start_app(settings).await;
    app.wait_for_agent().await;
    let token = unique("outage");
    assert_eq!(create_session(&app, "python3", &token).await.status().as_u16(), 201);

    proxy.cut();
    let other = unique("outage");
    assert_problem(create_session(&app, "python3", &other).await, 503, "service-unavailable").await;
    // Once the outage is known, every route answers at once, well before the pool's
    // 5 s acquire timeout: a client is not kept waiting for a database that is gone.
    let query = json!({"query": "{ compute_sessions { sess_id } }"});
    let started = std::time::Instant::now();
    assert_problem(app.send(app.signed("POST", "/v3/admin/graphql", Some(query))).await, 503, "service-unavailable")
        .await;
    assert_problem(app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await, 503, "service-unavailable")
        .await;
    assert_problem(create_session(&app, "python3", &unique("outage")).await, 503, "service-unavailable").await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "three requests in the outage took {waited:?}");

    // And the gate opens again once the database answers.
    proxy.restore(host.to_owned()).await;
    let mut answer = 0;
    for _ in 0..100 {
        answer = app.send(app.signed("GET", &format!("/v3/kernel/{token}"), None)).await.status().as_u16();
        if answer == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, 200, "the session's info after the database came back");
    // Its shutdown cannot write to the database: do not wait for it long.
    let _ = tokio::time::timeout(Duration::from_secs(15), app.stop()).await;
}
