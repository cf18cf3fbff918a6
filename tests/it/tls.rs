//! Private CAs and proxies: a CometChat emulator behind TLS on loopback with a certificate from a
//! test CA is refused without `ca_file` and reached with it; every request goes through a real
//! CONNECT proxy on loopback (Debian's tinyproxy) when `proxy` is set or `HTTPS_PROXY` names
//! it, `NO_PROXY` goes around it, and over TLS the proxy sees only host and port.

use std::sync::Arc;

use rosterd::config::secret::Secret;
use rosterd::model::Role;
use rosterd::provider::cometchat::CometChat;
use rosterd::sandbox::cometchat::Scope;
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A test CA, and a server certificate it signed for `localhost` and 127.0.0.1: (CA PEM,
/// server config).
fn test_ca() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// TLS on a loopback port in front of the emulator at `plain` (127.0.0.1:port).
async fn tls_front(config: Arc<rustls::ServerConfig>, plain: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut up) = TcpStream::connect(&plain).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    port
}

/// Debian's tinyproxy on a loopback port, logging every connection and request line.
struct Tinyproxy {
    port: u16,
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// `None` (with the reason printed) where tinyproxy is not installed outside CI; in CI
    /// (`CI=true`, which `.ci/run` sets) a missing proxy fails the test: `.ci/run` installs it.
    async fn start() -> Option<Tinyproxy> {
        let bin = std::path::Path::new("/usr/bin/tinyproxy");
        if !bin.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tinyproxy is missing; .ci/run installs it (apt-get install -y tinyproxy-bin)"
            );
            eprintln!(
                "SKIPPED: the proxy tests need Debian's tinyproxy (apt-get install -y tinyproxy-bin)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // tinyproxy takes no port 0: a port the kernel just handed out and let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("tinyproxy.log");
        let child = std::process::Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        poll(10, "tinyproxy listening", || async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Some(Tinyproxy {
            port,
            child,
            log,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines tinyproxy logged (`CONNECT host:port HTTP/1.1`, or a plain request's).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor ").map(|(_, r)| r))
            .filter_map(|r| r.split_once("): ").map(|(_, line)| line.to_string()))
            .collect()
    }

    /// Every line of the log, for the secret checks.
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator behind TLS with a test CA: (base URL on `localhost`, the CA file, its folder).
async fn tls_emulator(
    sb: &rosterd::sandbox::Sandbox,
) -> (u16, std::path::PathBuf, tempfile::TempDir) {
    let plain = sb.base_url(rosterd::provider::Kind::Cometchat).unwrap();
    let addr = plain
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (ca_pem, config) = test_ca();
    let port = tls_front(config, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    (port, ca, dir)
}

/// Plan one group through a client built with `ca_file` / `proxy`; the group's read error.
async fn plan_error(
    sb: &rosterd::sandbox::Sandbox,
    base: String,
    ca_file: Option<std::path::PathBuf>,
    proxy: Option<String>,
) -> Option<String> {
    let mut instance = cc_instance(sb, None);
    instance.common.base_url = Some(base);
    instance.common.ca_file = ca_file;
    instance.common.proxy = proxy;
    let client = CometChat::with_key(&instance, Secret::new(CC_KEY)).expect("client builds");
    let targets = one_target(instance, client);
    let d = desired("team", Some("alice"), &[("alice", Role::Admin)], None);
    let report = rosterd::reconcile::run(&ctx(), &[d], &targets, &run_opts(false), None).await;
    report.groups[0].error.clone()
}

fn world() -> rosterd::sandbox::cometchat::State {
    cc_state(
        ["alice"].map(String::from),
        vec![(
            "team",
            group(Some("alice"), &[("alice", Scope::Admin)], &[]),
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_is_reached_only_with_ca_file_and_through_the_proxy() {
    bounded(60, async {
        let sb = sandbox(world()).await;
        let (port, ca, _dir) = tls_emulator(&sb).await;
        let base = format!("https://localhost:{port}/v3");

        let refused = plan_error(&sb, base.clone(), None, None).await;
        let refused = refused.expect("an unknown CA is refused");
        assert!(refused.to_lowercase().contains("cert"), "{refused}");

        let reached = plan_error(&sb, base.clone(), Some(ca.clone()), None).await;
        assert_eq!(reached, None, "with ca_file the emulator is reached");

        let Some(proxy) = Tinyproxy::start().await else {
            return;
        };
        let before = sb.cometchat.requests().len();
        let via = plan_error(&sb, base, Some(ca), Some(proxy.url())).await;
        assert_eq!(via, None);
        let lines = proxy.requests();
        assert!(
            !lines.is_empty(),
            "nothing went through the proxy: {}",
            proxy.text()
        );
        assert!(sb.cometchat.requests().len() > before);
        for l in &lines {
            // Only the host and port: no path, no key, no query.
            assert_eq!(
                l,
                &format!("CONNECT localhost:{port} HTTP/1.1"),
                "{lines:?}"
            );
        }
        assert!(!proxy.text().contains(CC_KEY), "{}", proxy.text());
    })
    .await
}

/// Without `proxy:`, the standard variables decide, as the README says: `HTTPS_PROXY` carries
/// every request of the CLI, and `NO_PROXY` takes a host back out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_carries_the_cli_requests_and_no_proxy_bypasses_it() {
    bounded(120, async {
        let sb = sandbox(world()).await;
        let (port, ca, dir) = tls_emulator(&sb).await;
        let Some(proxy) = Tinyproxy::start().await else {
            return;
        };
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(
            dir.path().join("rosterd.yaml"),
            format!(
                "manifests: groups/\nproviders:\n  cc:\n    kind: cometchat\n    app_id: itapp\n    \
                 region: eu\n    api_key: {{ env: IT_CC_KEY }}\n    base_url: https://localhost:{port}/v3\n    \
                 ca_file: {}\n",
                ca.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("groups/team.yaml"),
            "group: team\nprovider: cc\nid: team\nowner: alice\nadmins: [alice]\n",
        )
        .unwrap();
        let config = dir.path().join("rosterd.yaml");
        let plan = |env: Vec<(&'static str, String)>| {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                let mut cmd = assert_cmd::Command::cargo_bin("rosterd").unwrap();
                cmd.arg("plan")
                    .arg("--config")
                    .arg(&config)
                    .env("IT_CC_KEY", CC_KEY)
                    .env("NO_COLOR", "1")
                    .env_remove("RUST_LOG");
                for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
                    cmd.env_remove(k);
                }
                cmd.envs(env);
                let out = cmd.timeout(std::time::Duration::from_secs(60)).output().unwrap();
                (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
            })
        };
        let (code, out) = plan(vec![("HTTPS_PROXY", proxy.url())]).await.unwrap();
        assert_eq!(code, Some(0), "{out}");
        let carried = proxy.requests();
        assert!(!carried.is_empty(), "HTTPS_PROXY carried nothing: {}", proxy.text());
        assert!(
            carried.iter().all(|l| l == &format!("CONNECT localhost:{port} HTTP/1.1")),
            "{carried:?}"
        );
        let (code, out) = plan(vec![
            ("HTTPS_PROXY", proxy.url()),
            ("NO_PROXY", "localhost".into()),
        ])
        .await
        .unwrap();
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(proxy.requests(), carried, "NO_PROXY=localhost goes around the proxy");
        assert!(!proxy.text().contains(CC_KEY));
    })
    .await
}

#[test]
fn ca_file_and_proxy_are_validated_at_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-pem.txt"), "hello\n").unwrap();
    let root = "manifests: groups/\nproviders:\n  cc:\n    kind: cometchat\n    app_id: a\n    region: eu\n    api_key: { env: K }\n    ca_file: not-pem.txt\n    proxy: proxy.internal:3128\n";
    std::fs::create_dir_all(dir.path().join("groups")).unwrap();
    std::fs::write(dir.path().join("rosterd.yaml"), root).unwrap();
    let e = rosterd::config::load(&dir.path().join("rosterd.yaml")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("rosterd.yaml:8:14: error: provider cc: ca_file")
            && text.contains("holds no PEM certificate"),
        "{text}"
    );
    assert!(
        text.contains("rosterd.yaml:9:12: error: provider cc: proxy"),
        "{text}"
    );
}
