//! No secret leaves the process when a provider repeats it: every emulator is told to echo the
//! credential it rejects (`echo_credentials`), and for every provider the binary's every exit —
//! stdout and stderr of `plan` and `apply` in each format with logs at TRACE, the audit log,
//! the daemon's log, `/status` and `/metrics` — is searched for every secret and every
//! credential derived from one.

use std::path::Path;
use std::time::Duration;

use rosterd::provider::Kind;
use rosterd::provider::tencent::usersig;
use rosterd::sandbox::{Sandbox, SandboxState};

use crate::support::{bounded, start};

/// One provider's world: the instance entry, the files it reads, and what must never be shown.
struct Case {
    name: &'static str,
    kind: Kind,
    /// The `providers: p:` entry's own keys (indented by 4), without `base_url`.
    entry: String,
    /// Files beside rosterd.yaml: secrets and token files.
    files: Vec<(&'static str, String)>,
    group_id: &'static str,
    /// Every secret the instance reads and every credential derived from one.
    secrets: Vec<String>,
    /// What the emulator's echo looks like once masked, seen in the plan's errors.
    masked_echo: &'static str,
}

fn cases() -> Vec<(Case, SandboxState)> {
    use rosterd::sandbox::{bitrix24, cometchat, tencent, waha};
    let cc_key = "cc-sent-key-0123456789abcdef".to_string();
    let cc = SandboxState {
        cometchat: cometchat::State {
            apps: [(
                "it".to_string(),
                cometchat::App {
                    api_key: "cc-right-key-0123456789".into(),
                    users: Default::default(),
                    groups: Default::default(),
                },
            )]
            .into(),
            echo_credentials: true,
            ..Default::default()
        },
        ..SandboxState::default()
    };
    let wa_key = "waha-sent-key-0123456789".to_string();
    let wa = SandboxState {
        waha: waha::State {
            api_key: "waha-right-key-0123456789".into(),
            echo_credentials: true,
            ..Default::default()
        },
        ..SandboxState::default()
    };
    let tc_key = "tencent-sent-secret-key-0123456789".to_string();
    let tc = SandboxState {
        tencent: tencent::State {
            apps: [(
                1400000001,
                tencent::App {
                    secret_key: "tencent-right-key-0123456789".into(),
                    admin: "administrator".into(),
                    accounts: Default::default(),
                    bans_enabled: true,
                    limits: Default::default(),
                    groups: Default::default(),
                },
            )]
            .into(),
            echo_credentials: true,
            ..Default::default()
        },
        ..SandboxState::default()
    };
    let bx_code = "sentwebhookcode0123";
    let bx = || SandboxState {
        bitrix24: bitrix24::State {
            webhooks: [("rightwebhookcode0123".to_string(), 1)].into(),
            oauth: Some(bitrix24::OAuthApp {
                client_id: "app.it".into(),
                client_secret: "right-client-secret-0123".into(),
                user: 1,
                access_token: "right-access-token-0123".into(),
                refresh_token: "right-refresh-token-0123".into(),
                token_ttl: Duration::from_secs(3600),
                expired: false,
            }),
            echo_credentials: true,
            ..Default::default()
        },
        ..SandboxState::default()
    };
    let (access, refresh, client_secret) = (
        "sent-access-token-0123456789",
        "sent-refresh-token-0123456789",
        "right-client-secret-0123",
    );
    vec![
        (
            Case {
                name: "cometchat",
                kind: Kind::Cometchat,
                entry: "    kind: cometchat\n    app_id: it\n    region: eu\n    api_key: { file: key }\n".into(),
                files: vec![("key", cc_key.clone())],
                group_id: "team",
                secrets: vec![cc_key],
                masked_echo: "The apiKey *** provided",
            },
            cc,
        ),
        (
            Case {
                name: "waha",
                kind: Kind::Waha,
                entry: "    kind: waha\n    api_key: { file: key }\n    interval: 0s\n".into(),
                files: vec![("key", wa_key.clone())],
                group_id: "12036@g.us",
                secrets: vec![wa_key],
                masked_echo: "X-Api-Key *** is not valid",
            },
            wa,
        ),
        (
            Case {
                name: "tencent",
                kind: Kind::Tencent,
                entry: "    kind: tencent\n    sdk_app_id: 1400000001\n    identifier: administrator\n    secret_key: { file: key }\n".into(),
                files: vec![("key", tc_key.clone())],
                group_id: "@TGS#team",
                // The UserSig derived from the key is found by decoding (below).
                secrets: vec![tc_key],
                masked_echo: "UserSig *** verification failed",
            },
            tc,
        ),
        (
            Case {
                name: "bitrix24-webhook",
                kind: Kind::Bitrix24,
                entry: "    kind: bitrix24\n    webhook_url: { file: hook }\n".into(),
                files: vec![(
                    "hook",
                    format!("https://portal.example/rest/1/{bx_code}/"),
                )],
                group_id: "chat1",
                secrets: vec![
                    bx_code.to_string(),
                    format!("/rest/1/{bx_code}/"),
                    format!("https://portal.example/rest/1/{bx_code}/"),
                ],
                masked_echo: "Invalid request credentials for ***",
            },
            bx(),
        ),
        (
            Case {
                name: "bitrix24-oauth",
                kind: Kind::Bitrix24,
                entry: "    kind: bitrix24\n    oauth:\n      endpoint: https://portal.example/rest/\n      client_id: app.it\n      client_secret: { file: client-secret }\n      token_file: tokens.json\n".into(),
                files: vec![
                    ("client-secret", client_secret.to_string()),
                    (
                        "tokens.json",
                        format!(r#"{{"access_token":"{access}","refresh_token":"{refresh}"}}"#),
                    ),
                ],
                group_id: "chat1",
                secrets: vec![
                    access.to_string(),
                    refresh.to_string(),
                    client_secret.to_string(),
                ],
                // The refresh is refused; the client quotes only the code.
                masked_echo: "HTTP 400 invalid_grant",
            },
            bx(),
        ),
    ]
}

fn tree(dir: &Path, sb: &Sandbox, case: &Case, listen: u16) -> std::path::PathBuf {
    let base = sb.base_url(case.kind).unwrap();
    for (name, text) in &case.files {
        std::fs::write(dir.join(name), text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
    }
    let root = format!(
        "manifests: groups/\naudit_log: audit.jsonl\nlisten: 127.0.0.1:{listen}\nresync: 1h\nproviders:\n  p:\n{}    base_url: {base}\n    rate: 500/s\n    timeout: 5s\n",
        case.entry
    );
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    std::fs::write(dir.join("rosterd.yaml"), root).unwrap();
    std::fs::write(
        dir.join("groups/g.yaml"),
        format!("group: g\nprovider: p\nid: \"{}\"\n", case.group_id),
    )
    .unwrap();
    dir.join("rosterd.yaml")
}

/// stdout and stderr of one run of the binary, at TRACE.
fn run(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rosterd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("-vv")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    format!(
        "$ rosterd {args:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's `/status`, `/metrics` and log once its first run failed.
async fn daemon_outputs(config: &Path, port: u16) -> String {
    let log = config.with_file_name("daemon.log");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("rosterd"))
        .args(["run", "-vv", "--config"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(config.with_file_name("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            match reqwest::get(url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    let status = crate::support::poll(30, "the daemon to report the failure", || async {
        let s = get("/status").await;
        (s.contains("last_error") && !s.contains("\"last_error\":null")).then_some(s)
    })
    .await;
    let metrics = get("/metrics").await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    format!(
        "{status}\n{metrics}\n{}\n{}",
        std::fs::read_to_string(&log).unwrap(),
        std::fs::read_to_string(config.with_file_name("daemon.out")).unwrap()
    )
}

/// Every word of `text` that decodes as a Tencent UserSig: there must be none.
fn usersigs_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "*-_".contains(c)))
        .filter(|w| w.len() > 40 && usersig::decode(w).is_ok())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echoed_credential_reaches_any_output_of_any_provider() {
    bounded(240, async {
        for (case, state) in cases() {
            let sb = start(state).await;
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let cfg = tree(dir.path(), &sb, &case, port);
            let mut shown = Vec::new();
            for format in ["text", "json", "markdown"] {
                shown.push(run(&cfg, &["plan", "--format", format]));
            }
            for format in ["text", "json"] {
                shown.push(run(&cfg, &["apply", "--format", format]));
            }
            // The plan shows the provider's message, echo masked: the mask did the work.
            let plan_json = &shown[1];
            assert!(
                plan_json.contains(case.masked_echo),
                "{}: the echo is not in the plan's errors:\n{plan_json}",
                case.name
            );
            shown.push(std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default());
            shown.push(daemon_outputs(&cfg, port).await);
            // The tokens a refresh wrote back, if any, are credentials too.
            let mut secrets = case.secrets.clone();
            if let Ok(t) = std::fs::read_to_string(dir.path().join("tokens.json")) {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                for k in ["access_token", "refresh_token"] {
                    secrets.extend(v[k].as_str().map(String::from));
                }
            }
            for text in &shown {
                for s in &secrets {
                    assert!(
                        !text.contains(s.as_str()),
                        "{}: secret {s:?} shown:\n{text}",
                        case.name
                    );
                }
                let sigs = usersigs_in(text);
                assert!(sigs.is_empty(), "{}: UserSig shown: {sigs:?}", case.name);
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_emulators_really_echo_what_they_reject() {
    // Without the mask the test above would fail: the answers carry the credential.
    let _ = rustls::crypto::ring::default_provider().install_default();
    for (case, state) in cases().into_iter().take(2) {
        let sb = start(state).await;
        let base = sb.base_url(case.kind).unwrap().to_string();
        let key = &case.secrets[0];
        let url = match case.kind {
            Kind::Cometchat => format!("{base}/groups/team"),
            _ => format!("{base}/api/sessions/default"),
        };
        let body = reqwest::Client::new()
            .get(url)
            .header("apikey", key)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains(key.as_str()), "{}: {body}", case.name);
    }
}
