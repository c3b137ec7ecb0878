//! Black-box tests of the manager: the real application on port 0, against the
//! embedded stores and, when `BACKENDAI_TEST_*` are set, real PostgreSQL, Redis
//! and etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod actors;
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
mod reclaim;
mod scheduler;
mod sdk;
mod slow_redis;
mod stores;
mod streams;
mod uploads;
mod v4;
mod vfolders;

// Skips show in the summary line: each of these is ignored (with its reason) when the
// build was not given the services or SDKs it names, and the tests that need them
// skipped those parts (see `helpers::skip`); with `BACKENDAI_REQUIRE_SERVICES=1` a
// missing one fails instead.

#[test]
#[cfg_attr(
    not(services),
    ignore = "BACKENDAI_TEST_* unset: the PostgreSQL, Redis and etcd parts of the tests were skipped"
)]
fn the_real_services_are_configured() {
    assert!(helpers::services().is_some(), "BACKENDAI_TEST_* were set at build time but not now");
}

#[test]
#[cfg_attr(not(sdk), ignore = "BACKENDAI_SDK_PYTHON unset: the SDK 1.0.6 tests ran only where .venv exists")]
fn the_sdk_1_0_6_is_installed() {
    assert!(sdk::sdk_python().is_some(), "BACKENDAI_SDK_PYTHON names no SDK 1.0.6");
}

#[test]
#[cfg_attr(
    not(sdk151),
    ignore = "BACKENDAI_SDK151_PYTHON unset: the client 1.5.1 tests ran only where .venv151 exists"
)]
fn the_client_1_5_1_is_installed() {
    assert!(later_clients::client_1_5_1().is_some(), "BACKENDAI_SDK151_PYTHON names no client 1.5.1");
}

#[test]
#[cfg_attr(
    not(sdk142),
    ignore = "BACKENDAI_SDK142_PYTHON unset: the client 1.4.2 tests ran only where .venv142 exists"
)]
fn the_client_1_4_2_is_installed() {
    assert!(later_clients::client_1_4_2().is_some(), "BACKENDAI_SDK142_PYTHON names no client 1.4.2");
}
