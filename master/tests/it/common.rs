//! Starts an in-process master on 127.0.0.1 (port 0) with a temporary sled directory, on its
//! own runtime, so a test body can drive it with plain blocking sockets.

use std::path::PathBuf;
use std::time::Duration;

use nodepass_master::{MasterOptions, RunningMaster};
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::parse_master_url;

use nodepass_testkit::api::Api;

pub struct TestMaster {
    pub rt: tokio::runtime::Runtime,
    pub running: Option<RunningMaster>,
    pub dir: tempfile::TempDir,
    pub api: Api,
}

pub fn options(url: &str, state_dir: PathBuf, worker_exe: PathBuf) -> MasterOptions {
    let tunables = Tunables {
        report_interval: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(2),
        ..Tunables::default()
    };
    // Port 0 (any free port) is not a valid URL port; take the URL's and override it.
    let mut url = parse_master_url(&url.replace(":0/", ":1/")).expect("master URL");
    url.listen.port = 0;
    MasterOptions {
        url,
        state_dir,
        worker_exe,
        tunables,
        colour: false,
    }
}

impl TestMaster {
    /// A master whose instances run `worker_exe` (a path that does not exist makes every
    /// start fail, which the API tests that do not need a tunnel accept).
    pub fn start_with(url: &str, worker_exe: PathBuf) -> TestMaster {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(url, dir, worker_exe)
    }

    pub fn start_in(url: &str, dir: tempfile::TempDir, worker_exe: PathBuf) -> TestMaster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let opts = options(url, dir.path().join("state"), worker_exe);
        let running = rt
            .block_on(nodepass_master::start(opts))
            .expect("master starts");
        let api = Api {
            addr: running.addr,
            base: running.master.settings.url.api_base(),
            key: running.api_key(),
        };
        TestMaster {
            rt,
            running: Some(running),
            dir,
            api,
        }
    }

    /// A master without usable workers.
    pub fn start() -> TestMaster {
        Self::start_with(
            "master://127.0.0.1:0/api?log=warn",
            PathBuf::from("/nonexistent/nodepass-worker"),
        )
    }

    pub fn key(&self) -> String {
        self.running.as_ref().unwrap().api_key()
    }

    /// Stops it as SIGTERM would; returns the state directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown()).expect("clean shutdown");
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = self.rt.block_on(r.shutdown());
        }
    }
}
