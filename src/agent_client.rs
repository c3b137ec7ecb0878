//! The manager's side of the agent RPC: HTTP/JSON calls to an agent's RPC
//! server, authenticated with the cluster secret.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{problem_type, ApiError, Problem};
use protocol::{KernelSpec, Secret};

/// How an agent call failed, in the contract's terms (`agent-details.type`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent did not answer in time.
    #[error("the agent did not answer in time")]
    Timeout,
    /// The agent refused the input (a 4xx other than 404).
    #[error("the agent refused the request: {0}")]
    InvalidInput(String),
    /// The agent does not know the kernel.
    #[error("the agent does not know the kernel")]
    KernelNotFound,
    /// The agent failed.
    #[error("the agent failed: {0}")]
    Failure(String),
    /// No connection to the agent could be made: the request never reached it.
    #[error("the agent failed: cannot reach the agent: {0}")]
    Unreachable(String),
}

impl AgentError {
    /// The `agent-details` object of an API error.
    pub fn details(&self) -> Value {
        let (name, title) = match self {
            Self::Timeout => ("agent-timeout", self.to_string()),
            Self::InvalidInput(_) | Self::KernelNotFound => ("agent-invalid-input", self.to_string()),
            Self::Failure(_) | Self::Unreachable(_) => ("agent-failure", self.to_string()),
        };
        json!({"type": problem_type(name), "title": title})
    }

    /// The API error for a failed call of the given kind.
    pub fn into_api(self, problem: Problem) -> ApiError {
        if matches!(self, Self::KernelNotFound) {
            return ApiError::new(Problem::KernelNotFound);
        }
        let mut error = ApiError::new(problem);
        error.agent_details = Some(Box::new(self.details()));
        error
    }

    /// Whether the agent itself is unreachable or broken (not the input).
    pub fn is_agent_fault(&self) -> bool {
        matches!(self, Self::Timeout | Self::Failure(_) | Self::Unreachable(_))
    }
}

/// A client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    base: String,
    secret: Secret,
    http: reqwest::Client,
    timeouts: AgentTimeouts,
}

/// How long the agent may take: creation starts a process; an execute returns
/// within about 2 seconds by the continuation rule.
#[derive(Clone, Copy, Debug)]
pub struct AgentTimeouts {
    /// Starting or restarting a kernel.
    pub create: Duration,
    /// Any other call.
    pub call: Duration,
}

impl AgentClient {
    /// A client of the agent whose RPC server is at `addr` (`host:port`).
    pub fn new(http: reqwest::Client, addr: &str, secret: Secret, timeouts: AgentTimeouts) -> Self {
        let base = if addr.contains("://") { addr.trim_end_matches('/').to_owned() } else { format!("http://{addr}") };
        Self { base, secret, http, timeouts }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
        timeout: Duration,
    ) -> Result<Value, AgentError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.secret.expose())
            .timeout(timeout);
        request = match body {
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Raw(bytes)) => request.header("content-type", "application/octet-stream").body(bytes),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                AgentError::Timeout
            } else if e.is_connect() {
                AgentError::Unreachable(e.to_string())
            } else {
                AgentError::Failure(format!("cannot reach the agent: {e}"))
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                AgentError::Timeout
            } else {
                AgentError::Failure(e.to_string())
            }
        })?;
        let value: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let title = || value.get("title").and_then(Value::as_str).unwrap_or_default().to_owned();
        match status.as_u16() {
            200..=299 => Ok(value),
            404 => Err(AgentError::KernelNotFound),
            400..=499 => Err(AgentError::InvalidInput(format!("{status}: {}", title()))),
            _ => Err(AgentError::Failure(format!("{status}: {}", title()))),
        }
    }

    /// Starts a kernel; returns the agent's runtime information.
    pub async fn create_kernel(&self, spec: &KernelSpec) -> Result<Value, AgentError> {
        let body = serde_json::to_value(spec).map_err(|e| AgentError::InvalidInput(e.to_string()))?;
        self.call(reqwest::Method::POST, "/kernels", Some(Body::Json(body)), self.timeouts.create).await
    }

    /// Destroys a kernel; returns its last stats.
    pub async fn destroy_kernel(&self, kernel_id: &str) -> Result<Value, AgentError> {
        let value =
            self.call(reqwest::Method::DELETE, &format!("/kernels/{kernel_id}"), None, self.timeouts.call).await?;
        Ok(value.get("stats").cloned().unwrap_or(Value::Null))
    }

    /// Gives a kernel a fresh interpreter with the same resources.
    pub async fn restart_kernel(&self, kernel_id: &str) -> Result<(), AgentError> {
        self.call(reqwest::Method::POST, &format!("/kernels/{kernel_id}/restart"), None, self.timeouts.create).await?;
        Ok(())
    }

    /// Runs (or resumes) code; returns the contract's v2 result.
    pub async fn execute(&self, kernel_id: &str, request: &Value) -> Result<Value, AgentError> {
        let path = format!("/kernels/{kernel_id}/execute");
        self.call(reqwest::Method::POST, &path, Some(Body::Json(request.clone())), self.timeouts.call).await
    }

    /// Interrupts the running code.
    pub async fn interrupt(&self, kernel_id: &str) -> Result<(), AgentError> {
        self.call(reqwest::Method::POST, &format!("/kernels/{kernel_id}/interrupt"), None, self.timeouts.call).await?;
        Ok(())
    }

    /// Completions at a cursor.
    pub async fn complete(&self, kernel_id: &str, code: &str, options: &Value) -> Result<Value, AgentError> {
        let body = json!({"code": code, "options": options});
        self.call(
            reqwest::Method::POST,
            &format!("/kernels/{kernel_id}/complete"),
            Some(Body::Json(body)),
            self.timeouts.call,
        )
        .await
    }

    /// Writes one file into the kernel's working directory.
    pub async fn upload_file(&self, kernel_id: &str, path: &str, data: bytes::Bytes) -> Result<(), AgentError> {
        let url_path = format!("/kernels/{kernel_id}/files?path={}", percent_encode(path));
        self.call(reqwest::Method::PUT, &url_path, Some(Body::Raw(data)), self.timeouts.call).await?;
        Ok(())
    }
}

impl AgentClient {
    /// The kernel's recent console output.
    pub async fn logs(&self, kernel_id: &str) -> Result<Value, AgentError> {
        self.call(reqwest::Method::GET, &format!("/kernels/{kernel_id}/logs"), None, self.timeouts.call).await
    }

    /// The listing of a directory of the kernel.
    pub async fn list_files(&self, kernel_id: &str, path: &str) -> Result<Value, AgentError> {
        let url_path = format!("/kernels/{kernel_id}/files?path={}", percent_encode(path));
        self.call(reqwest::Method::GET, &url_path, None, self.timeouts.call).await
    }

    /// A tar archive of a file or directory of the kernel.
    pub async fn download(&self, kernel_id: &str, path: &str) -> Result<bytes::Bytes, AgentError> {
        use base64::Engine;
        let url_path = format!("/kernels/{kernel_id}/download?path={}", percent_encode(path));
        let value = self.call(reqwest::Method::GET, &url_path, None, self.timeouts.call).await?;
        let encoded = value.get("tar").and_then(Value::as_str).unwrap_or_default();
        let tar = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| AgentError::Failure(format!("a malformed archive: {e}")))?;
        Ok(bytes::Bytes::from(tar))
    }
}

enum Body {
    Json(Value),
    Raw(bytes::Bytes),
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_names_intact() {
        assert_eq!(percent_encode("src/main.py"), "src%2Fmain.py");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn agent_errors_map_to_the_contract() {
        let error = AgentError::Timeout.into_api(Problem::KernelCreationFailed);
        assert_eq!(error.problem, Problem::KernelCreationFailed);
        assert_eq!(error.body()["agent-details"]["type"], "https://api.backend.ai/probs/agent-timeout");
        let error = AgentError::InvalidInput("x".into()).into_api(Problem::KernelExecutionFailed);
        assert_eq!(error.body()["agent-details"]["type"], "https://api.backend.ai/probs/agent-invalid-input");
        assert_eq!(
            AgentError::KernelNotFound.into_api(Problem::KernelExecutionFailed).problem,
            Problem::KernelNotFound
        );
    }
}
