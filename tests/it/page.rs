//! The status page in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver) by fantoccini, against a daemon running the demo tree on the sandbox
//! emulators. WebDriver rather than `--dump-dom`: the test clicks the filter form and a group's
//! link like a person would, asks the page itself whether injected markup ran, and takes the
//! screenshot from the same session.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use rosterd::provider::Kind;
use rosterd::sandbox::cometchat::Scope;
use rosterd::sandbox::{Ports, Sandbox, SandboxState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, start};
use crate::support::bounded;

/// A group name that would run code or add elements if the page did not escape it.
pub const HTML_NAME: &str =
    "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">&amp;";
/// A Tencent group id (any non-space characters are valid) that the emulator does not know, so
/// the group's error message carries markup too.
const HTML_ID: &str = "@TGS#<img/src=x/onerror=window.pwned=3><b>x</b>";

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// The demo's rosterd.yaml pointed at this sandbox, with the seed's keys in files, an audit
/// log, and the pace raised (as `rosterd demo` does) so the run takes seconds.
pub fn write_demo_tree(dir: &Path, sb: &Sandbox, state: &SandboxState) -> PathBuf {
    let text = std::fs::read_to_string(demo_dir().join("rosterd.yaml")).unwrap();
    let mut root: Value = serde_saphyr::from_str(&text).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let secret = |name: &str, value: &str| {
        std::fs::write(dir.join("keys").join(name), value).unwrap();
        json!({ "file": format!("keys/{name}") })
    };
    let cc_key = secret("cc", &state.cometchat.apps.values().next().unwrap().api_key);
    let tim_key = secret(
        "tim",
        &state.tencent.apps.values().next().unwrap().secret_key,
    );
    let wa_key = secret("wa", &state.waha.api_key);
    let (code, user) = state.bitrix24.webhooks.iter().next().unwrap();
    let b24_base = sb.base_url(Kind::Bitrix24).unwrap();
    let b24_url = secret("b24", &format!("{b24_base}/rest/{user}/{code}/"));
    for (_, p) in root["providers"].as_object_mut().unwrap().iter_mut() {
        let kind = Kind::parse(p["kind"].as_str().unwrap()).unwrap();
        let p = p.as_object_mut().unwrap();
        p.insert("rate".into(), json!("200/s"));
        p.insert("interval".into(), json!("0s"));
        match kind {
            Kind::Cometchat => p.insert("api_key".into(), cc_key.clone()),
            Kind::Tencent => p.insert("secret_key".into(), tim_key.clone()),
            Kind::Waha => p.insert("api_key".into(), wa_key.clone()),
            Kind::Bitrix24 => p.insert("webhook_url".into(), b24_url.clone()),
        };
        if kind != Kind::Bitrix24 {
            p.insert("base_url".into(), json!(sb.base_url(kind).unwrap()));
        }
    }
    let root = root.as_object_mut().unwrap();
    root.remove("listen");
    root.insert("audit_log".into(), json!("audit.jsonl"));
    root.insert("manifests".into(), json!("groups/"));
    // JSON is YAML.
    std::fs::write(
        dir.join("rosterd.yaml"),
        Value::from(root.clone()).to_string(),
    )
    .unwrap();
    std::fs::copy(demo_dir().join("people.yaml"), dir.join("people.yaml")).unwrap();
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    for e in std::fs::read_dir(demo_dir().join("groups")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("groups").join(e.file_name())).unwrap();
    }
    dir.join("rosterd.yaml")
}

/// The demo's seed, with members added outside git to `support-desk`: more removals than its
/// `max_removals: 3`, so the group stays blocked with drift pending.
pub fn demo_state() -> SandboxState {
    let mut state = SandboxState::load(&demo_dir().join("sandbox-state.yaml")).unwrap();
    let app = state.cometchat.apps.values_mut().next().unwrap();
    for u in ["intruder1", "intruder2", "intruder3", "intruder4"] {
        app.users.insert(u.to_string());
        app.groups
            .get_mut("support-desk")
            .unwrap()
            .members
            .insert(u.to_string(), Scope::Participant);
    }
    state
}

/// A daemon (resync 1 h) on the demo tree and `demo_state`, with `extra` manifests
/// (file name, contents) in its groups folder. Keep the sandbox and the folder alive with it.
pub async fn demo_daemon(extra: &[(&str, String)]) -> (Sandbox, tempfile::TempDir, Daemon) {
    let state = demo_state();
    let sb = Sandbox::start(state.clone(), Ports::EPHEMERAL, CancellationToken::new())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_demo_tree(dir.path(), &sb, &state);
    for (name, text) in extra {
        std::fs::write(dir.path().join("groups").join(name), text).unwrap();
    }
    let d = start(&cfg, Duration::from_secs(3600));
    (sb, dir, d)
}

/// chromedriver on an ephemeral port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver, or `None` (with the reason printed) where it is not installed outside CI.
/// In CI (`CI=true`) a missing browser fails the test: `.ci/run` installs it.
fn chromedriver() -> Option<Driver> {
    let installed = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| Path::new(p).exists());
    if !installed {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium and chromedriver are missing; .ci/run installs them \
             (apt-get install -y chromium chromium-driver)"
        );
        eprintln!(
            "SKIPPED: the browser test needs Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver)"
        );
        return None;
    }
    let mut child = Command::new("/usr/bin/chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let stdout = child.stdout.take().unwrap();
    let mut port = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(p) = line
            .split("started successfully on port ")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
        {
            port = Some(p);
            break;
        }
    }
    let port = port.expect("chromedriver printed its port");
    Some(Driver { child, port })
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-quic",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// The text of every row's group cell, as the browser renders it.
async fn listed(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for cell in c
        .find_all(Locator::Css("#groups tbody tr[data-group] td.name"))
        .await
        .unwrap()
    {
        out.push(cell.text().await.unwrap());
    }
    out
}

async fn injected(c: &Client) -> Value {
    c.execute(
        "return [window.pwned === undefined, document.querySelectorAll('img, script, b').length];",
        vec![],
    )
    .await
    .unwrap()
}

/// Poll /status until `ok` holds of its JSON.
async fn status_until(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) {
    d.get_until("/status", what, |body| {
        serde_json::from_str(body).is_ok_and(|st: Value| ok(&st))
    })
    .await;
}

/// The rendered text of the first element `css` selects.
async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// From the overview, follow the link in the group's `row`, as a person would.
async fn open_group(c: &Client, base: &str, row: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    c.find(Locator::Css(&format!("{row} a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click does not wait for the navigation it starts.
    for _ in 0..200 {
        if c.current_url().await.is_ok_and(|u| u.path() == "/group") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the group page did not open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_headless_browser_shows_groups_errors_and_drift_and_escapes_html() {
    let Some(driver) = chromedriver() else {
        return;
    };
    bounded(150, async {
        let untrusted = format!(
            "group: {}\nprovider: tim\nid: {}\nadmins: [alice]\n",
            serde_json::to_string(HTML_NAME).unwrap(),
            serde_json::to_string(HTML_ID).unwrap()
        );
        let (_sb, dir, d) = demo_daemon(&[("untrusted.yaml", untrusted)]).await;
        let demo_groups: Vec<String> = ["eng-oncall", "eng-announce", "family-chat", "game-lobby"]
            .into_iter()
            .chain(["sales-floor", "partner-onboarding", "support-desk"])
            .map(String::from)
            .collect();
        // Every group has run once.
        status_until(&d, "every group ran", |st| {
            st["groups"].as_object().is_some_and(|g| {
                g.len() == demo_groups.len() + 1
                    && g.values()
                        .all(|s| s["running"] == false && !s["result"].is_null())
            })
        })
        .await;
        // A broken edit after start: the last valid version stays, the error shows.
        std::fs::write(
            dir.path().join("groups/sales.yaml"),
            "group: sales-floor\nprovider: b24\nid: chat42\n\"<i>oops</i>\": [alice\n",
        )
        .unwrap();
        status_until(&d, "the file error is seen", |st| {
            st["file_errors"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;

        let profile = tempfile::tempdir().unwrap();
        let c = browser(&driver, profile.path()).await;
        let base = format!("http://127.0.0.1:{}", d.port);
        c.goto(&format!("{base}/")).await.unwrap();

        // Every group is listed, the untrusted name as plain text.
        let mut names = listed(&c).await;
        names.sort();
        let mut want = demo_groups.clone();
        want.push(HTML_NAME.to_string());
        want.sort();
        assert_eq!(names, want);
        assert_eq!(
            injected(&c).await,
            json!([true, 0]),
            "no markup from the files ran or rendered"
        );

        // The broken manifest's error, with file, line and column, at the top.
        let errors = text_of(&c, "#file-errors").await;
        assert!(errors.contains("sales.yaml:4:"), "{errors}");
        assert!(errors.contains("1 file error"), "{errors}");

        // The drift of the blocked group, and the untrusted group's error as text.
        let row = |name: &str| {
            format!(
                "#groups tr[data-group=\"{}\"]",
                name.replace('\\', "\\\\").replace('"', "\\\"")
            )
        };
        let support = text_of(&c, &row("support-desk")).await;
        assert!(support.contains("blocked"), "{support}");
        let drift = text_of(&c, &format!("{} td.num", row("support-desk"))).await;
        assert!(
            drift.parse::<usize>().unwrap() >= 4,
            "pending drift {drift}"
        );
        let untrusted = text_of(&c, &format!("{} td.err", row(HTML_NAME))).await;
        assert!(untrusted.contains(HTML_ID), "{untrusted}");
        let applied = text_of(&c, &row("eng-oncall")).await;
        assert!(
            applied.contains("applied") && applied.contains("s ago"),
            "{applied}"
        );

        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();
        eprintln!("screenshot: {}", shot.display());

        // Filters, through the form: provider, then state.
        c.find(Locator::Css("select[name=provider]"))
            .await
            .unwrap()
            .select_by_value("cc")
            .await
            .unwrap();
        c.find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The click does not wait for the form's navigation: wait until the filtered page is
        // the one loaded, or the rows read may belong to the page being left.
        c.wait()
            .for_url(&format!("{base}/?provider=cc&state=").parse().unwrap())
            .await
            .unwrap();
        c.wait()
            .for_element(Locator::Css(
                "select[name=provider] option[value=cc][selected]",
            ))
            .await
            .unwrap();
        let mut cc = listed(&c).await;
        cc.sort();
        assert_eq!(cc, ["eng-announce", "eng-oncall", "support-desk"]);
        c.goto(&format!("{base}/?state=failed")).await.unwrap();
        assert_eq!(listed(&c).await, [HTML_NAME]);
        c.goto(&format!("{base}/?state=attention")).await.unwrap();
        let mut attention = listed(&c).await;
        attention.sort();
        assert_eq!(attention, [HTML_NAME, "support-desk"]);

        // A group's page, by its link: the blocked plan with people's names, and the audit log.
        open_group(&c, &base, &row("support-desk")).await;
        let plan = text_of(&c, "#plan").await;
        assert!(plan.contains("- intruder1 participant"), "{plan}");
        assert!(plan.contains("BLOCKED"), "{plan}");
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-group.png");
        std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();
        open_group(&c, &base, &row("family-chat")).await;
        let plan = text_of(&c, "#plan").await;
        assert!(
            plan.contains("grace (491701000007@c.us)"),
            "people's names beside their ids: {plan}"
        );
        let ops = text_of(&c, "#operations").await;
        assert!(ops.contains("add") && ops.contains("done"), "{ops}");

        // The untrusted group's own page.
        open_group(&c, &base, &row(HTML_NAME)).await;
        let h1 = text_of(&c, "h1").await;
        assert_eq!(h1, format!("Group {HTML_NAME}"));
        assert_eq!(injected(&c).await, json!([true, 0]));

        // Nothing secret anywhere on the pages.
        for page in ["/", "/?state=failed", "/group?name=support-desk"] {
            c.goto(&format!("{base}{page}")).await.unwrap();
            let html = c.source().await.unwrap();
            for key in std::fs::read_dir(dir.path().join("keys")).unwrap() {
                let secret = std::fs::read_to_string(key.unwrap().path()).unwrap();
                assert!(!html.contains(&secret), "a secret on {page}");
            }
        }
        c.close().await.unwrap();
        d.stop().await;
    })
    .await
}
