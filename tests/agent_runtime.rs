//! The process runtime through the agent RPC, against real python3 and bash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{stream, TestAgent};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_query_prints_and_finishes() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({"mem_slot": 512})).await;
    let results = agent.run_to_end(&k, "print(1)").await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["status"], "finished");
    assert_eq!(results[0]["console"], json!([["stdout", "1\n"]]));
    assert_eq!(results[0]["files"], json!([]));
    assert_eq!(results[0]["completions"], Value::Null);
    agent.stop().await;
}
