//! Black-box tests of the manager: the real application on port 0, against the
//! embedded stores and, when `BACKENDAI_TEST_*` are set, real PostgreSQL, Redis
//! and etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
#[path = "../common/agent_binary.rs"]
mod agent_binary;
mod bus;
mod cli;
mod cluster;
mod faults;
mod gateway;
mod helpers;
mod kernel;
mod later_clients;
mod lifecycle;
mod pty;
mod ratelimit;
mod sdk;
mod slow_redis;
mod stores;
mod streams;
mod v4;
mod vfolders;
