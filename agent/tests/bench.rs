//! Benchmark of the agent (not a timed test; ignored by default). Run it with
//! `scripts/bench_agent.sh` (release build). Prints medians and p99 of:
//! - raw: spawning `python3` until its first response, and one pipe round trip to it;
//! - agent: create-to-first-result of a python3 kernel (back to back, and 200 ms apart so
//!   that a warm interpreter is ready), and the execute round trip of `print(1)` over the
//!   agent RPC.
//!
//! `BENCH_BWRAP=off` measures without bubblewrap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::TestAgent;

/// The PATH kernels get (the same python3 is measured on both sides).
const KERNEL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn python3() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env_clear()
        .env("PATH", KERNEL_PATH)
        .env("LANG", "C.UTF-8")
        .args(["-u", "-I", "-c", ECHO])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

const ECHO: &str = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n";

fn summary(name: &str, mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = ms(samples[samples.len() / 2]);
    let p99 = ms(samples[((samples.len() * 99) / 100).min(samples.len() - 1)]);
    println!("{name:<48} n={:<5} p50 {p50:>9.3} ms   p99 {p99:>9.3} ms", samples.len());
    (p50, p99)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run scripts/bench_agent.sh"]
async fn bench_agent() {
    let spawns = env_usize("BENCH_SPAWNS", 40);
    let round_trips = env_usize("BENCH_ROUND_TRIPS", 2000);

    // Raw: spawn python3 and get its first response.
    let mut raw_spawn = Vec::new();
    for _ in 0..spawns {
        let t = Instant::now();
        let mut child = python3().spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdin.write_all(b"1\n").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        raw_spawn.push(t.elapsed());
        drop(stdin);
        child.wait().unwrap();
    }
    // Raw: one pipe round trip to a running python3.
    let mut child = python3().spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut raw_rtt = Vec::new();
    let mut line = String::new();
    for i in 0..round_trips + 100 {
        line.clear();
        let t = Instant::now();
        stdin.write_all(b"1\n").unwrap();
        stdout.read_line(&mut line).unwrap();
        if i >= 100 {
            raw_rtt.push(t.elapsed());
        }
    }
    drop(stdin);
    child.wait().unwrap();

    // Agent: create-to-first-result, then execute round trips.
    let mut config = support::test_config();
    if std::env::var("BENCH_BWRAP").as_deref() == Ok("off") {
        config.sandbox.use_bwrap = backendai_agent::config::BwrapMode::Off;
    }
    println!("sandbox: bwrap {:?}", config.sandbox.use_bwrap);
    let cold_config = config.clone();
    let agent = TestAgent::spawn_with(config).await;
    let mut create = Vec::new();
    for _ in 0..spawns {
        let id = uuid::Uuid::new_v4().to_string();
        let t = Instant::now();
        let (status, _) = agent
            .call(
                Method::POST,
                "/kernels",
                Some(json!({"kernel_id": id, "image": {"name": "python3", "runner": "python"}, "limits": {"mem_slot": 1024}})),
            )
            .await;
        assert_eq!(status, 201);
        let r = agent.execute(&id, "r", "query", "print(1)", Value::Null).await;
        create.push(t.elapsed());
        assert_eq!(r["console"], json!([["stdout", "1\n"]]));
        agent.call(Method::DELETE, &format!("/kernels/{id}"), None).await;
    }
    // The same, with creations 200 ms apart: the warm interpreter is always ready.
    let mut create_spaced = Vec::new();
    for _ in 0..spawns {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = uuid::Uuid::new_v4().to_string();
        let t = Instant::now();
        agent
            .call(
                Method::POST,
                "/kernels",
                Some(json!({"kernel_id": id, "image": {"name": "python3", "runner": "python"}, "limits": {"mem_slot": 1024}})),
            )
            .await;
        agent.execute(&id, "r", "query", "print(1)", Value::Null).await;
        create_spaced.push(t.elapsed());
        agent.call(Method::DELETE, &format!("/kernels/{id}"), None).await;
    }
    let k = agent.create("python", json!({"mem_slot": 1024})).await;
    let exec = execute_round_trips(&agent, &k, round_trips).await;
    agent.stop().await;

    // Without warm interpreters: every creation spawns one.
    let mut config = cold_config;
    config.warm_kernels = 0;
    let agent = TestAgent::spawn_with(config).await;
    let mut create_cold = Vec::new();
    for _ in 0..spawns {
        let id = uuid::Uuid::new_v4().to_string();
        let t = Instant::now();
        agent
            .call(
                Method::POST,
                "/kernels",
                Some(json!({"kernel_id": id, "image": {"name": "python3", "runner": "python"}, "limits": {"mem_slot": 1024}})),
            )
            .await;
        agent.execute(&id, "r", "query", "print(1)", Value::Null).await;
        create_cold.push(t.elapsed());
        agent.call(Method::DELETE, &format!("/kernels/{id}"), None).await;
    }
    agent.stop().await;
    report(Samples { raw_spawn, raw_rtt, create, create_spaced, create_cold, exec });
}

async fn execute_round_trips(agent: &TestAgent, k: &str, round_trips: usize) -> Vec<Duration> {
    let mut exec = Vec::new();
    for i in 0..round_trips + 100 {
        let run_id = format!("r{i}");
        let t = Instant::now();
        let r = agent.execute(k, &run_id, "query", "print(1)", Value::Null).await;
        if i >= 100 {
            exec.push(t.elapsed());
        }
        assert_eq!(r["status"], "finished");
    }
    exec
}

struct Samples {
    raw_spawn: Vec<Duration>,
    raw_rtt: Vec<Duration>,
    create: Vec<Duration>,
    create_spaced: Vec<Duration>,
    create_cold: Vec<Duration>,
    exec: Vec<Duration>,
}

fn report(s: Samples) {
    println!();
    let (spawn50, _) = summary("raw: spawn python3 + first response", s.raw_spawn);
    let (rtt50, _) = summary("raw: pipe round trip to python3", s.raw_rtt);
    let (create50, _) = summary("agent: create python3 kernel + print(1) result", s.create);
    let (spaced50, _) = summary("agent: the same, creations 200 ms apart", s.create_spaced);
    let (cold50, _) = summary("agent: the same, no warm interpreters", s.create_cold);
    let (exec50, _) = summary("agent: execute print(1) round trip over RPC", s.exec);
    println!();
    println!(
        "create / raw spawn = {:.2}x back to back, {:.2}x spaced, {:.2}x without warm interpreters \
         (target <= 1.3x); execute p50 - raw round trip = {:.3} ms (target <= 0.5 ms)",
        create50 / spawn50,
        spaced50 / spawn50,
        cold50 / spawn50,
        exec50 - rtt50
    );
}
