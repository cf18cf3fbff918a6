//! Private CAs and proxies: a CometChat emulator behind TLS on loopback with a certificate from a
//! test CA is refused without `ca_file` and reached with it; every request goes through a real
//! CONNECT proxy on loopback when `proxy` is set, and over TLS the proxy sees only host and port.

use std::sync::{Arc, Mutex};

use rosterd::config::secret::Secret;
use rosterd::model::Role;
use rosterd::provider::cometchat::CometChat;
use rosterd::sandbox::cometchat::Scope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A CONNECT proxy on loopback; its log holds the first line of every request it carried.
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let first = head.lines().next().unwrap_or("").to_string();
                seen.lock().unwrap().push(first.clone());
                let Some(target) = first
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
                    return;
                };
                let target = target.replace("localhost", "127.0.0.1");
                let Ok(mut up) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
        }
    });
    (port, log)
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
        let base = format!("https://localhost:{port}/v3");

        let refused = plan_error(&sb, base.clone(), None, None).await;
        let refused = refused.expect("an unknown CA is refused");
        assert!(refused.to_lowercase().contains("cert"), "{refused}");

        let reached = plan_error(&sb, base.clone(), Some(ca.clone()), None).await;
        assert_eq!(reached, None, "with ca_file the emulator is reached");

        let (proxy_port, log) = connect_proxy().await;
        let before = sb.cometchat.requests().len();
        let via = plan_error(
            &sb,
            base,
            Some(ca),
            Some(format!("http://127.0.0.1:{proxy_port}")),
        )
        .await;
        assert_eq!(via, None);
        let lines = log.lock().unwrap().clone();
        assert!(!lines.is_empty(), "nothing went through the proxy");
        assert!(sb.cometchat.requests().len() > before);
        for l in &lines {
            // Only the host and port: no path, no key, no query.
            assert_eq!(
                l,
                &format!("CONNECT localhost:{port} HTTP/1.1"),
                "{lines:?}"
            );
        }
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
