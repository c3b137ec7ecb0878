//! The official Python SDK `backend.ai-client==1.0.6` signs requests against the
//! real application: its signatures are the ground truth.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{skip, spawn_app, Backend, BACKENDS};

/// The Python with the SDK: `BACKENDAI_SDK_PYTHON`, else `.venv/bin/python` in the repository.
pub fn sdk_python() -> Option<PathBuf> {
    let python = std::env::var_os("BACKENDAI_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")));
    let has_sdk =
        Command::new(&python).args(["-c", "import ai.backend.client"]).output().is_ok_and(|o| o.status.success());
    if has_sdk {
        Some(python)
    } else {
        skip("the official SDK is not installed (.ci/run makes .venv with backend.ai-client==1.0.6)");
        None
    }
}

/// Runs `tests/sdk/<script>` against `endpoint`, without blocking the test's runtime.
pub async fn run_script(python: &Path, script: &str, endpoint: &str, access_key: &str, secret_key: &str) -> String {
    let output = tokio::process::Command::new(python)
        .arg(format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR")))
        .env("BACKEND_ENDPOINT", endpoint)
        .env("BACKEND_ACCESS_KEY", access_key)
        .env("BACKEND_SECRET_KEY", secret_key)
        .output()
        .await
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{text}");
    text
}

#[actix_web::test]
async fn the_official_sdk_signs_authorize_requests() {
    let Some(python) = sdk_python() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        let output = run_script(&python, "authorize.py", &app.address, &app.access_key, &app.secret_key).await;
        assert!(output.contains("OK authorize"), "{output}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn the_sdk_example_keypair_works_embedded() {
    let Some(python) = sdk_python() else { return };
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let output = run_script(
        &python,
        "authorize.py",
        &app.address,
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    .await;
    assert!(output.contains("OK authorize"), "{output}");
    app.stop().await;
}

/// The whole kernel session API through the SDK's Python API.
#[actix_web::test]
async fn the_sdk_drives_every_kernel_call() {
    let Some(python) = sdk_python() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let output = run_script(&python, "kernel_api.py", &app.address, &app.access_key, &app.secret_key).await;
        assert!(output.contains("OK kernel_api"), "{backend:?}: {output}");
        app.stop().await;
    }
}

/// `backend.ai run` with python3 and bash, input() and continuation.
#[actix_web::test]
async fn the_sdk_cli_runs_code() {
    let Some(python) = sdk_python() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let output = run_script(&python, "cli_run.py", &app.address, &app.access_key, &app.secret_key).await;
        assert!(output.contains("OK cli_run"), "{backend:?}: {output}");
        app.stop().await;
    }
}
