//! kill -9 of control while changes stream in: after a restart on the same
//! data directory, no acknowledged change is lost and the state is whole.
//!
//! The control server runs in a child process: this test binary itself,
//! re-run with only `child_control_server` selected and the data directory
//! in `TANDEM_KILL9_CHILD_DIR`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_api::pb::{
    self, Change, GetStateRequest, ListAuditRequest, Tier, WatchRequest, admin_client::AdminClient,
    change, watch_client::WatchClient, watch_request,
};
use tokio_stream::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHILD_ENV: &str = "TANDEM_KILL9_CHILD_DIR";

/// Not a test of its own: the body of the child process.
#[test]
fn child_control_server() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = Path::new(&dir);
        let state = control::State::open(dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let tmp = dir.join("url.tmp");
        std::fs::write(&tmp, &url)?;
        std::fs::rename(&tmp, dir.join("url"))?;
        control::serve(listener, state, tokio_util::sync::CancellationToken::new()).await?;
        Ok(())
    })
}

struct Child {
    child: tokio::process::Child,
    url: String,
}

async fn start_child(dir: &Path) -> Result<Child, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_file(dir.join("url"));
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_control_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(url) = std::fs::read_to_string(dir.join("url")) {
            return Ok(Child { child, url });
        }
        if Instant::now() > deadline {
            return Err("child control never started".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node(i: u64) -> Change {
    Change {
        change: Some(change::Change::PutNode(pb::Node {
            id: format!("n{i}"),
            address: format!("127.0.0.1:{}", 20_000 + i),
            weight: 100,
            pool: "default".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut acked: u64 = 0; // highest version control acknowledged
    for round in 0..3u64 {
        let mut child = start_child(dir.path()).await?;
        let mut admin = AdminClient::connect(child.url.clone()).await?;
        // Whatever was acknowledged before the kill is there, whole.
        let s = admin
            .get_state(GetStateRequest::default())
            .await?
            .into_inner();
        assert!(
            s.version >= acked,
            "round {round}: version {} < acknowledged {acked}",
            s.version
        );
        assert_eq!(s.nodes.len() as u64, s.version, "round {round}: torn state");
        for (i, n) in s.nodes.iter().enumerate() {
            assert_eq!(n.id, format!("n{i}"));
        }
        let audit = admin
            .list_audit(ListAuditRequest { limit: 10_000 })
            .await?
            .into_inner()
            .records;
        assert_eq!(
            audit.len() as u64,
            s.version,
            "one audit record per version"
        );
        let next = s.version; // index of the next node to add

        // A subscriber mid-stream.
        let mut watch = WatchClient::connect(child.url.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(WatchRequest {
            msg: Some(watch_request::Msg::Hello(pb::Hello {
                id: "w".into(),
                tier: Tier::Node as i32,
            })),
        })
        .await?;
        let mut inbound = watch
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let watcher = tokio::spawn(async move {
            while let Some(Ok(s)) = inbound.next().await {
                let ack = WatchRequest {
                    msg: Some(watch_request::Msg::Ack(pb::Ack {
                        version: s.version,
                        error: String::new(),
                    })),
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });

        // Changes stream in, one at a time; kill -9 after a few dozen, at
        // a moment that differs per round, while one is in flight.
        let writer_acked = Arc::new(std::sync::atomic::AtomicU64::new(acked));
        let w = writer_acked.clone();
        let mut writer_admin = admin.clone();
        let writer = tokio::spawn(async move {
            let mut i = next;
            loop {
                let r = writer_admin
                    .apply(pb::ApplyRequest {
                        changes: vec![node(i)],
                        expected_version: i,
                    })
                    .await;
                match r {
                    Ok(resp) => {
                        w.fetch_max(
                            resp.into_inner().version,
                            std::sync::atomic::Ordering::SeqCst,
                        );
                        i += 1;
                    }
                    Err(_) => return i,
                }
            }
        });
        let target = next + 20 + round * 7;
        let deadline = Instant::now() + Duration::from_secs(30);
        while writer_acked.load(std::sync::atomic::Ordering::SeqCst) < target {
            if Instant::now() > deadline {
                return Err("writer made no progress".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.child.start_kill()?; // SIGKILL
        child.child.wait().await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await?;
        watcher.abort();
        acked = writer_acked.load(std::sync::atomic::Ordering::SeqCst);
    }
    // A final check after the last kill.
    let child = start_child(dir.path()).await?;
    let mut admin = AdminClient::connect(child.url.clone()).await?;
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert!(s.version >= acked && s.nodes.len() as u64 == s.version);
    println!(
        "kill -9 x3: {acked} acknowledged changes, all present (state at version {})",
        s.version
    );
    drop(child);
    Ok(())
}
