//! nodepass-master: the supervisor with the REST + SSE API.

use nodepass_proto::url::MasterUrl;

/// Runs the master until SIGTERM/SIGINT.
pub fn run(url: MasterUrl) -> anyhow::Result<()> {
    let _ = url;
    anyhow::bail!("the master role (master://) is not available in this build yet")
}
