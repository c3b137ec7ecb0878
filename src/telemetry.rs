//! Log output through tracing.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingSettings};

/// Installs the global subscriber; a second call is a no-op (tests).
pub fn init(settings: &LoggingSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
