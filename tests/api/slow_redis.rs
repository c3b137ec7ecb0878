//! A slow or silent Redis: requests slow down but lose nothing, and none waits past the
//! call timeout (503 instead).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::helpers::{assert_problem, services, spawn_app_with, Backend, TestApp};

/// A TCP forwarder that adds latency to every chunk, in both directions, and can
/// freeze (hold every byte, keep every connection).
struct Laggy {
    addr: String,
    delay_ms: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
    /// While set, connections are closed as they come, and cut when set.
    refusing: Arc<AtomicBool>,
    pipes: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Laggy {
    async fn to(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (delay_ms, frozen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        type Pipes = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;
        let (refusing, pipes): (Arc<AtomicBool>, Pipes) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let (delay, freeze, refuse, piped) = (delay_ms.clone(), frozen.clone(), refusing.clone(), Arc::clone(&pipes));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let mut piped = piped.lock().unwrap();
                piped.push(tokio::spawn(Self::pipe(in_read, out_write, delay.clone(), freeze.clone())));
                piped.push(tokio::spawn(Self::pipe(out_read, in_write, delay.clone(), freeze.clone())));
            }
        });
        Self { addr, delay_ms, frozen, refusing, pipes }
    }

    /// Redis goes away: every connection is cut, and new ones are closed at once.
    fn sever(&self) {
        self.refusing.store(true, Ordering::Relaxed);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Copies `from` to `to`, each chunk `delay` after it was read (in order).
    async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>, frozen: Arc<AtomicBool>) {
        let (chunks, mut queue) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((due, chunk)) = queue.recv().await {
                tokio::time::sleep_until(due.into()).await;
                while frozen.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
            if chunks.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(chunks);
        let _ = writer.await;
    }
}

async fn app_behind(proxy: &Laggy, call_timeout: f64) -> TestApp {
    let addr = proxy.addr.clone();
    spawn_app_with(Backend::Services, move |s| {
        s.redis.addr = Some(addr);
        s.redis.call_timeout = call_timeout;
    })
    .await
    .unwrap()
}

/// Signed requests at once; their answers' statuses and remaining-request counts.
async fn burst(app: &TestApp, n: usize) -> Vec<(u16, Option<u64>)> {
    join_all((0..n).map(|_| async {
        let response = app.send(app.signed("GET", "/v3/authorize", None)).await;
        let remaining = response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        (response.status().as_u16(), remaining)
    }))
    .await
}

/// Polls for up to `polls` tenths of a second until a signed request succeeds; the
/// last status.
async fn answers_again(app: &TestApp, polls: usize) -> u16 {
    let mut status = 0;
    for _ in 0..polls {
        status = burst(app, 1).await[0].0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// With 50 ms added to every Redis exchange, concurrent requests all succeed, and the
/// rate limit still counts each of them exactly once.
#[actix_web::test]
#[cfg_attr(not(services), ignore = "needs BACKENDAI_TEST_* (PostgreSQL, Redis, etcd)")]
async fn a_slow_redis_slows_requests_but_loses_no_count() {
    let Some(services) = services() else { return };
    let proxy = Laggy::to(services.redis_addr).await;
    let app = app_behind(&proxy, 1.0).await;
    proxy.delay_ms.store(50, Ordering::Relaxed);
    let answers = burst(&app, 200).await;
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    let mut remaining: Vec<u64> = answers.iter().map(|(_, remaining)| remaining.unwrap()).collect();
    remaining.sort_unstable();
    // The test key allows 1,000 a window: 200 requests take the counts 1 to 200.
    assert_eq!(remaining, (800..1000).collect::<Vec<_>>());
    app.stop().await;
}

/// A Redis that stops answering (the connection stays open, nothing comes back) costs
/// each request at most the call timeout: 503 service-unavailable, never a hang; and
/// requests succeed again once it answers.
#[actix_web::test]
#[cfg_attr(not(services), ignore = "needs BACKENDAI_TEST_* (PostgreSQL, Redis, etcd)")]
async fn a_silent_redis_answers_503_within_the_call_timeout() {
    let Some(services) = services() else { return };
    let proxy = Laggy::to(services.redis_addr).await;
    let app = app_behind(&proxy, 0.5).await;
    assert!(burst(&app, 1).await.iter().all(|(status, _)| *status == 200));
    proxy.frozen.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let answers = join_all((0..20).map(|_| app.send(app.signed("GET", "/v3/authorize", None)))).await;
    let waited = started.elapsed();
    for response in answers {
        assert_problem(response, 503, "service-unavailable").await;
    }
    // 0.5 s each, at once: far from the minutes a client would wait without a timeout.
    assert!(waited < Duration::from_secs(5), "20 requests to a silent Redis took {waited:?}");
    proxy.frozen.store(false, Ordering::Relaxed);
    assert_eq!(answers_again(&app, 50).await, 200, "requests after Redis answers again");
    let _ = tokio::time::timeout(Duration::from_secs(15), app.stop()).await;
}

/// Redis goes away (connections cut, new ones closed) and comes back: requests answer
/// 503 meanwhile, and the store reconnects by itself afterwards.
#[actix_web::test]
#[cfg_attr(not(services), ignore = "needs BACKENDAI_TEST_* (PostgreSQL, Redis, etcd)")]
async fn the_store_reconnects_after_redis_comes_back() {
    let Some(services) = services() else { return };
    let proxy = Laggy::to(services.redis_addr).await;
    let app = app_behind(&proxy, 0.5).await;
    assert!(burst(&app, 1).await.iter().all(|(status, _)| *status == 200));
    proxy.sever();
    for response in join_all((0..10).map(|_| app.send(app.signed("GET", "/v3/authorize", None)))).await {
        assert_problem(response, 503, "service-unavailable").await;
    }
    proxy.refusing.store(false, Ordering::Relaxed);
    assert_eq!(answers_again(&app, 100).await, 200, "requests after Redis came back");
    let _ = tokio::time::timeout(Duration::from_secs(15), app.stop()).await;
}
