//! nodepass-worker: runs one NodePass instance (server, client or single-end forwarder).

use nodepass_proto::url::TunnelUrl;

/// Runs one tunnel instance until SIGTERM/SIGINT. `report_mode` = `nodepass worker`:
/// JSON report lines on stdout instead of human logs.
pub fn run(url: TunnelUrl, report_mode: bool) -> anyhow::Result<()> {
    let _ = (url, report_mode);
    anyhow::bail!("the tunnel roles (server://, client://) are not available in this build yet")
}
