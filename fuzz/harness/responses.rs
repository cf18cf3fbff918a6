//! Every provider's response parsing, through its real client: a server on loopback answers
//! every request with the fuzz input (first byte: provider and status; the rest: the body),
//! and the client reads a group and applies a batch of adds. Any panic is a crash; errors are
//! the expected answer. Shared by the fuzz target and the test that replays the committed corpus
//! (`tests/it/fuzz_corpus.rs`).
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rosterd::model::{Batch, GroupId, MemberId, Op, OpKind, Role};
use rosterd::provider::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATUSES: [u16; 8] = [200, 200, 200, 400, 401, 404, 429, 500];

struct World {
    rt: tokio::runtime::Runtime,
    answer: Arc<Mutex<(u16, Vec<u8>)>>,
    clients: Vec<(Arc<dyn Provider>, GroupId, MemberId)>,
    _dir: tempfile::TempDir,
}

/// A minimal HTTP/1.1 server: reads a request (head and Content-Length body), answers with
/// the current fuzz answer, closes.
async fn serve(listener: tokio::net::TcpListener, answer: Arc<Mutex<(u16, Vec<u8>)>>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let (status, body) = answer.lock().unwrap().clone();
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
    }
}

fn world() -> &'static Mutex<World> {
    static W: OnceLock<Mutex<World>> = OnceLock::new();
    W.get_or_init(|| {
        // Paused time: retries, backoff and cooldowns cost no real time, so a 429 or a 500
        // is as cheap to fuzz as a 200 (the server runs on the same runtime, so the clock
        // only moves while every task waits on a timer).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let answer = Arc::new(Mutex::new((200, Vec::new())));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(serve(listener, answer.clone()));
        let dir = tempfile::tempdir().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        std::fs::write(dir.path().join("key"), "fuzz-secret-key-0123456789").unwrap();
        std::fs::write(dir.path().join("hook"), format!("{base}/rest/1/fuzzwebhookcode1/")).unwrap();
        let common = "    rate: 1000000/s\n    timeout: 2s\n    interval: 0s\n";
        let root = format!(
            "manifests: groups/\nproviders:\n\
             \x20 cc:\n    kind: cometchat\n    app_id: fuzz\n    region: eu\n    api_key: {{ file: key }}\n    base_url: {base}/v3\n{common}\
             \x20 tc:\n    kind: tencent\n    sdk_app_id: 1400000001\n    identifier: administrator\n    secret_key: {{ file: key }}\n    base_url: {base}\n{common}\
             \x20 wa:\n    kind: waha\n    api_key: {{ file: key }}\n    base_url: {base}\n{common}\
             \x20 bx:\n    kind: bitrix24\n    webhook_url: {{ file: hook }}\n    base_url: {base}\n{common}"
        );
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(dir.path().join("rosterd.yaml"), root).unwrap();
        let cfg = rosterd::config::load(&dir.path().join("rosterd.yaml")).unwrap();
        let members = [("cc", "team", "alice"), ("tc", "@TGS#team", "alice"), ("wa", "12036@g.us", "491701234567@c.us"), ("bx", "chat1", "7")];
        let clients = members
            .iter()
            .map(|(name, g, m)| {
                let _guard = rt.enter();
                let p = rosterd::provider::build(&cfg.instances[*name]).unwrap();
                (p, GroupId(g.to_string()), MemberId::new(*m))
            })
            .collect();
        Mutex::new(World { rt, answer, clients, _dir: dir })
    })
}

pub fn run(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let w = world().lock().unwrap();
    *w.answer.lock().unwrap() = (
        STATUSES[(first >> 2) as usize % STATUSES.len()],
        body.to_vec(),
    );
    let (client, group, member) = &w.clients[(first & 3) as usize];
    let ctx =
        w.rt.block_on(async { rosterd::ctx::Ctx::at(std::time::SystemTime::UNIX_EPOCH) });
    w.rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3600), client.fetch(&ctx, group)).await;
        let batch = Batch {
            kind: OpKind::Add,
            ops: vec![Op::new(OpKind::Add, member.clone()).with_role(Role::Participant)],
        };
        // Fewer outcomes than members is allowed (the engine fails the rest NO_RESULT).
        let _ = tokio::time::timeout(Duration::from_secs(3600), client.apply(&ctx, group, &batch))
            .await;
        // Past any cooldown the answer set (capped at an hour), so the next input is sent; the
        // generous timeouts above cost no real time and let a learned slow pace finish.
        tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    });
}
