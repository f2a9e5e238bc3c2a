//! `nodepass import` at scale: writes a Go master state file with N instances (Go gob, the
//! layout of master/src/import.rs's `GoInstance`, encoded with gobwire), then times the
//! whole import (read, decode, check every URL, one sled transaction, backup) into a fresh
//! state directory. Not a test: `cargo bench -p nodepass-master --bench import [N...]`
//! (default 100 1000 10000). Results go into benches/RESULTS.md by hand.

use std::collections::HashMap;
use std::time::Instant;

use nodepass_master::import::{import_into, GoInstance, GoMeta, GoPeer};

fn state_file(n: usize) -> Vec<u8> {
    let mut m: HashMap<String, GoInstance> = HashMap::new();
    m.insert(
        "********".into(),
        GoInstance {
            id: "********".into(),
            url: "0123456789abcdef0123456789abcdef".into(),
            config: "0123456789abcdef".into(),
            ..Default::default()
        },
    );
    for i in 0..n {
        let id = format!("{:08x}", i + 1);
        let port = 20000 + (i % 40000);
        let tags = HashMap::from([("env".to_string(), "prod".to_string())]);
        m.insert(
            id.clone(),
            GoInstance {
                id,
                alias: format!("tunnel {i}"),
                kind: "server".into(),
                status: "running".into(),
                url: format!(
                    "server://key{i}@127.0.0.1:{port}/127.0.0.1:{}?log=info",
                    port + 1
                ),
                restart: i % 2 == 0,
                meta: GoMeta {
                    peer: GoPeer {
                        sid: String::new(),
                        kind: "2".into(),
                        alias: "peer".into(),
                    },
                    tags,
                },
                tcprx: i as u64 * 1000,
                ..Default::default()
            },
        );
    }
    gobwire::Encoder::new()
        .encode(&m)
        .expect("encode the state file")
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 10000]
    } else {
        sizes
    };
    println!("| instances | gob KiB | import ms (median of 3) |");
    println!("|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let gob = dir.path().join("nodepass.gob");
        let bytes = state_file(n);
        std::fs::write(&gob, &bytes).expect("write the state file");
        let mut times = Vec::new();
        for round in 0..3 {
            let state = dir.path().join(format!("state{round}"));
            let started = Instant::now();
            let done = import_into(&gob, &state, false).expect("import");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(done.instances, n);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!("| {n} | {} | {:.1} |", bytes.len() / 1024, times[1]);
    }
}
