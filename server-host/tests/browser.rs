//! End to end in a real browser: Debian's headless Chromium, driven through
//! ChromeDriver over WebDriver, against a real server serving the embedded WASM client
//! (`cargo xtask web` builds it; `cargo xtask test` does that first and installs
//! Chromium and ChromeDriver when they are missing).
//!
//! Every test saves a screenshot of each of its browsers when it fails, under
//! `$CARGO_TARGET_DIR/browser-screenshots/` (or the system temporary directory).

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};

/// How long anything may take to show up in a page.
const PATIENCE: Duration = Duration::from_secs(30);

/// Users' passphrases.
const ALICE: &str = "alice passphrase in the browser";
const BOB: &str = "bob passphrase in the browser";
const ROOT: &str = "root passphrase in the browser";

type Outcome<T = ()> = Result<T, String>;

/// A ChromeDriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is needed for the browser tests: `cargo xtask test` installs it, \
                 or run `sudo apt-get install -y chromium chromium-driver`",
            );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// A new headless browser with its own profile.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,900",
                    // The HTTPS test's server has a self-signed certificate; the
                    // transports suite checks that certificate itself.
                    "--ignore-certificate-errors",
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session from chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("browser-screenshots")
}

/// Runs `test` with `count` browsers; on failure saves a screenshot of each and fails
/// with the error. The browsers are closed either way.
async fn with_browsers<F, Fut>(name: &str, count: usize, test: F)
where
    F: FnOnce(Vec<Client>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let driver = Driver::start();
    let mut browsers = Vec::new();
    for _ in 0..count {
        browsers.push(driver.browser().await);
    }
    let outcome = test(browsers.clone()).await;
    if let Err(error) = &outcome {
        let dir = screenshot_dir();
        let _ = std::fs::create_dir_all(&dir);
        for (i, browser) in browsers.iter().enumerate() {
            if let Ok(png) = browser.screenshot().await {
                let path = dir.join(format!("{name}-{i}.png"));
                let _ = std::fs::write(&path, png);
                eprintln!("screenshot: {}", path.display());
            }
        }
        for browser in browsers {
            let _ = browser.close().await;
        }
        panic!("{name}: {error}");
    }
    for browser in browsers {
        let _ = browser.close().await;
    }
}

fn err(what: &str) -> impl Fn(fantoccini::error::CmdError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn find(browser: &Client, css: &str) -> Outcome<fantoccini::elements::Element> {
    browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .map_err(|e| format!("waiting for `{css}`: {e}"))
}

/// Waits until the text of the element `css` satisfies `check`; returns it.
async fn wait_text(browser: &Client, css: &str, check: impl Fn(&str) -> bool) -> Outcome<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if check(&last) {
                return Ok(last);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("`{css}` never matched; last text: {last:?}"))
}

/// Opens the page and logs in; returns once the chat shows "Connected" (or, with
/// `expect_refusal`, once the login error shows) and the time each step took.
async fn log_in(browser: &Client, url: &str, user: &str, passphrase: &str) -> Outcome<(Duration, Duration)> {
    let started = Instant::now();
    browser.goto(url).await.map_err(err("opening the page"))?;
    let user_field = find(browser, "#login-user").await?;
    let to_form = started.elapsed();
    user_field.send_keys(user).await.map_err(err("typing the user name"))?;
    type_into(browser, "#login-pass", passphrase).await?;
    let submitted = Instant::now();
    find(browser, "#login-submit").await?.click().await.map_err(err("clicking log in"))?;
    wait_text(browser, "#conn-state", |t| t == "Connected").await?;
    Ok((to_form, submitted.elapsed()))
}

/// Types `text` into the field `css`.
async fn type_into(browser: &Client, css: &str, text: &str) -> Outcome {
    find(browser, css).await?.send_keys(text).await.map_err(|e| format!("typing into `{css}`: {e}"))
}

/// Opens the direct conversation with `user` from the sidebar.
async fn open_direct(browser: &Client, user: &str) -> Outcome {
    type_into(browser, "#new-direct-name", user).await?;
    click(browser, "#new-direct button").await?;
    wait_text(browser, "#conv-title", |t| t.strip_prefix('@') == Some(user)).await.map(|_| ())
}

async fn send(browser: &Client, text: &str) -> Outcome {
    let draft = find(browser, "#draft").await?;
    draft.send_keys(text).await.map_err(err("typing a message"))?;
    find(browser, "#send").await?.click().await.map_err(err("clicking send"))
}

/// Waits for a stored line whose text contains `text` in the shown conversation.
async fn wait_for_line(browser: &Client, text: &str) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let lines = browser.find_all(Locator::Css("#messages li.msg.stored")).await.unwrap_or_default();
        for line in lines {
            if line.text().await.unwrap_or_default().contains(text) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = browser
        .find(Locator::Css("#messages"))
        .await
        .map_err(err("the message list"))?
        .text()
        .await
        .unwrap_or_default();
    Err(format!("no stored line with {text:?}; the list shows {shown:?}"))
}

async fn click(browser: &Client, css: &str) -> Outcome {
    find(browser, css).await?.click().await.map_err(|e| format!("clicking `{css}`: {e}"))
}

fn server() -> TestServer {
    // The default key derivation, as users get it: the login time below is real.
    TestServer::start_with(
        &[("alice", ALICE, false), ("bob", BOB, false), ("root", ROOT, true)],
        "kdf_iterations = 100000",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_users_chat_and_a_wrong_passphrase_is_refused() {
    let server = server();
    let url = format!("http://{}/", server.http);
    with_browsers("chat", 3, |browsers| async move {
        let [alice, bob, intruder] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        log_in(bob, &url, "bob", BOB).await?;

        send(alice, "hello from alice <b>not bold</b> https://example.org/x").await?;
        wait_for_line(alice, "hello from alice").await?;
        wait_for_line(bob, "hello from alice").await?;
        // Text stays text; the link is a link.
        let bold = bob.find_all(Locator::Css("#messages b")).await.map_err(err("looking for <b>"))?;
        if !bold.is_empty() {
            return Err("a <b> from a message became markup".into());
        }
        let link = find(bob, "#messages a[href='https://example.org/x']").await?;
        if link.attr("rel").await.map_err(err("rel"))?.as_deref() != Some("noopener noreferrer") {
            return Err("the link lacks rel=noopener".into());
        }
        send(bob, "hi alice, bob here").await?;
        wait_for_line(alice, "hi alice, bob here").await?;
        // Both see each other online.
        find(alice, "#online li.user[data-user='bob']").await?;
        find(bob, "#online li.user[data-user='alice']").await?;

        // A wrong passphrase: a clear message, and no chat.
        intruder.goto(&url).await.map_err(err("opening the page"))?;
        type_into(intruder, "#login-user", "alice").await?;
        find(intruder, "#login-pass")
            .await?
            .send_keys("not alice's passphrase")
            .await
            .map_err(err("typing"))?;
        click(intruder, "#login-submit").await?;
        wait_text(intruder, "#login-error", |t| t.contains("Wrong user name or passphrase")).await?;
        if intruder.find(Locator::Css("#messages")).await.is_ok() {
            return Err("a wrong passphrase reached the chat".into());
        }

        // The real user, on a fresh page: the figures for the note (not asserted).
        let started = Instant::now();
        let (to_form, to_chat) = log_in(intruder, &url, "bob", BOB).await?;
        wait_for_line(intruder, "hi alice, bob here").await?;
        let to_history = started.elapsed() - to_form;
        eprintln!(
            "figures: page load to login form {} ms; login (100,000 PBKDF2 iterations) to connected {} ms; \
             login to first history shown {} ms",
            to_form.as_millis(),
            to_chat.as_millis(),
            to_history.as_millis()
        );
        Ok(())
    })
    .await;
}

/// The newest message's sequence number, and the highest cursor of `user`'s devices.
fn newest_and_cursor(database: &std::path::Path, user: &str) -> (i64, Option<i64>) {
    let conn = rusqlite::Connection::open(database).expect("the server's database");
    let newest = conn.query_row("SELECT MAX(seq) FROM messages", [], |row| row.get(0)).expect("messages");
    let cursor = conn
        .query_row("SELECT MAX(seq) FROM cursors WHERE user = ?1", [user], |row| row.get(0))
        .expect("cursors");
    (newest, cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_to_an_offline_user_appears_after_they_log_in() {
    let server = server();
    let url = format!("http://{}/", server.http);
    let database = server.data.join("casataa.sqlite3");
    with_browsers("offline", 2, |browsers| async move {
        let [alice, bob] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        open_direct(alice, "bob").await?;
        send(alice, "are you there, bob?").await?;
        wait_for_line(alice, "are you there, bob?").await?;

        log_in(bob, &url, "bob", BOB).await?;
        // The conversation shows up with an unread mark; opening it shows the message.
        wait_text(bob, "#directs li.conv[data-key='@alice'] .unread", |t| t == "1").await?;
        click(bob, "#directs li.conv[data-key='@alice']").await?;
        wait_for_line(bob, "are you there, bob?").await?;
        if bob.find(Locator::Css("#directs li.conv[data-key='@alice'] .unread")).await.is_ok() {
            return Err("the unread mark stayed after opening the conversation".into());
        }
        // One acknowledgement covers up to 64 deliveries, so this one was held: the
        // page's timer sent it, and the server keeps bob's cursor at the message.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (newest, cursor) = newest_and_cursor(&database, "bob");
            if cursor == Some(newest) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("bob's cursor stayed at {cursor:?}; the newest message is {newest}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let server = server();
    let url = format!("http://{}/", server.http);
    with_browsers("csp", 1, |browsers| async move {
        let [browser] = &browsers[..] else { unreachable!() };
        browser.goto(&url).await.map_err(err("opening the page"))?;
        find(browser, "#login-form").await?;
        // An inline script is refused by the policy, so injected markup could not run.
        let ran = browser
            .execute(
                "const s = document.createElement('script'); s.textContent = 'window.__ran = true'; \
                 document.body.appendChild(s); return window.__ran === true;",
                vec![],
            )
            .await
            .map_err(err("running the probe"))?;
        if ran != serde_json::Value::Bool(false) {
            return Err(format!("an inline script ran: {ran}"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_page_logs_in_and_chats_over_a_secure_websocket() {
    let server = TestServer::start_with(
        &[("alice", ALICE, false), ("bob", BOB, false), ("root", ROOT, true)],
        "kdf_iterations = 100000\ntls = true",
    );
    let url = format!("https://{}/", server.http);
    with_browsers("https", 2, |browsers| async move {
        let [alice, bob] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        log_in(bob, &url, "bob", BOB).await?;
        let protocol =
            alice.execute("return location.protocol;", vec![]).await.map_err(err("the protocol"))?;
        if protocol != serde_json::json!("https:") {
            return Err(format!("the page was loaded over {protocol}"));
        }
        send(alice, "sent from a page served over https").await?;
        wait_for_line(bob, "sent from a page served over https").await
    })
    .await;
}

/// How many lines of the shown conversation contain `text`.
async fn count_lines(browser: &Client, text: &str) -> Outcome<usize> {
    let lines = browser.find_all(Locator::Css("#messages li.msg")).await.map_err(err("the lines"))?;
    let mut count = 0;
    for line in lines {
        if line.text().await.unwrap_or_default().contains(text) {
            count += 1;
        }
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_a_server_restart_and_sends_what_was_typed_meanwhile_once() {
    let mut server = server();
    let url = format!("http://{}/", server.http);
    with_browsers("reconnect", 2, |browsers| async move {
        let [alice, bob] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        send(alice, "before the restart").await?;
        wait_for_line(alice, "before the restart").await?;

        server.kill();
        wait_text(alice, "#conn-state", |t| t.starts_with("Offline")).await?;
        send(alice, "typed while the server was down").await?;
        find(alice, "#messages li.msg.pending").await?;

        server.respawn_on_same_ports();
        wait_text(alice, "#conn-state", |t| t == "Connected").await?;
        wait_for_line(alice, "typed while the server was down").await?;
        // Stored once, shown once, nothing left pending, nothing doubled.
        for text in ["before the restart", "typed while the server was down"] {
            let shown = count_lines(alice, text).await?;
            if shown != 1 {
                return Err(format!("{text:?} shown {shown} times after reconnecting"));
            }
        }
        if alice.find(Locator::Css("#messages li.msg.pending")).await.is_ok() {
            return Err("a line stayed pending after reconnecting".into());
        }
        log_in(bob, &url, "bob", BOB).await?;
        wait_for_line(bob, "typed while the server was down").await?;
        let shown = count_lines(bob, "typed while the server was down").await?;
        if shown != 1 {
            return Err(format!("bob sees the message {shown} times"));
        }
        Ok(())
    })
    .await;
}

/// The SHA-256 (hex) of what the link `css` points to, computed in the page.
async fn sha256_of_link(browser: &Client, css: &str) -> Outcome<String> {
    let script = "const [selector, done] = arguments;
        const href = document.querySelector(selector).href;
        fetch(href).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b))
            .then(d => done(Array.from(new Uint8Array(d)).map(x => x.toString(16).padStart(2, '0')).join('')))
            .catch(e => done('error: ' + e));";
    let value = browser
        .execute_async(script, vec![serde_json::Value::String(css.into())])
        .await
        .map_err(err("hashing the download"))?;
    value.as_str().map(str::to_owned).ok_or_else(|| format!("unexpected hash result {value}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sent_with_the_button_or_dropped_arrive_verified_with_the_same_bytes() {
    use sha2::Digest;
    let server = server();
    let url = format!("http://{}/", server.http);
    // Several chunks, and bytes that are not text.
    let picked: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let path = server.data.join("picked report.bin");
    std::fs::write(&path, &picked).unwrap();
    with_browsers("files", 2, |browsers| async move {
        let [alice, bob] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        log_in(bob, &url, "bob", BOB).await?;

        // With the button (the file input).
        type_into(alice, "#file-input", &path.to_string_lossy()).await?;
        wait_text(alice, "#transfers li.upload.done .status", |t| t == "sent").await?;
        // Dropped on the conversation (a real DragEvent carrying a File).
        alice
            .execute(
                "const data = new DataTransfer();
                 data.items.add(new File([new Uint8Array([1, 2, 3, 250, 0, 9])], 'dropped.bin'));
                 document.querySelector('section.conversation')
                     .dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));",
                vec![],
            )
            .await
            .map_err(err("dropping a file"))?;
        wait_text(alice, "#transfers", |t| t.matches("sent").count() == 2).await?;

        for (name, bytes) in [("picked report.bin", picked.clone()), ("dropped.bin", vec![1, 2, 3, 250, 0, 9])] {
            // Bob sees the announcement and downloads it.
            let deadline = Instant::now() + PATIENCE;
            let file = loop {
                let files = bob.find_all(Locator::Css("#messages .file")).await.unwrap_or_default();
                let mut found = None;
                for file in files {
                    if file.text().await.unwrap_or_default().contains(name) {
                        found = Some(file);
                    }
                }
                if let Some(file) = found {
                    break file;
                }
                if Instant::now() > deadline {
                    return Err(format!("bob never saw {name}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let id = file.attr("data-file").await.map_err(err("file id"))?.ok_or("no data-file")?;
            click(bob, &format!(".file[data-file='{id}'] button.download")).await?;
            let save = format!(".file[data-file='{id}'] a.save");
            find(bob, &save).await?;
            wait_text(bob, &format!(".file[data-file='{id}'] .verified"), |t| t.contains("verified")).await?;
            let offered = find(bob, &save).await?.attr("download").await.map_err(err("download name"))?;
            if offered.as_deref() != Some(name) {
                return Err(format!("offered as {offered:?}, not {name:?}"));
            }
            let got = sha256_of_link(bob, &save).await?;
            let expected = hex(&sha2::Sha256::digest(&bytes));
            if got != expected {
                return Err(format!("{name}: downloaded bytes hash to {got}, sent {expected}"));
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_sees_sessions_and_activity_and_creates_kicks_and_disables_users() {
    let server = server();
    let url = format!("http://{}/", server.http);
    with_browsers("admin", 3, |browsers| async move {
        let [root, alice, bob] = &browsers[..] else { unreachable!() };
        log_in(alice, &url, "alice", ALICE).await?;
        log_in(bob, &url, "bob", BOB).await?;
        log_in(root, &url, "root", ROOT).await?;
        if alice.find(Locator::Css("#admin-tab")).await.is_ok() {
            return Err("a user who is not an admin sees the admin view".into());
        }
        click(root, "#admin-tab").await?;
        find(root, "#sessions tr.session[data-user='alice']").await?;
        find(root, "#sessions tr.session[data-user='bob']").await?;
        // The activity log streams, and filters by user.
        find(root, "#activity li.activity[data-kind='connect']").await?;
        type_into(root, "#activity-user", "bob").await?;
        wait_text(root, "#activity", |t| t.contains("bob") && !t.contains("alice")).await?;

        // Create a user; the passphrase is shown once and works.
        type_into(root, "#create-user-name", "carol").await?;
        click(root, "#create-user button[type=submit]").await?;
        let passphrase = wait_text(root, "#created-passphrase", |t| t.len() >= 8).await?;
        find(root, "#users tr.user-row[data-user='carol']").await?;

        // Kick bob: his page says so and goes back to the login form.
        click(root, "#users tr.user-row[data-user='bob'] button.kick").await?;
        wait_text(bob, "#login-error", |t| t.contains("administrator ended this session")).await?;
        // Disable alice: her session ends, and the list says so.
        click(root, "#users tr.user-row[data-user='alice'] button.disable").await?;
        wait_text(root, "#users tr.user-row[data-user='alice'] td.state", |t| t == "disabled").await?;
        wait_text(alice, "#login-error", |t| t.contains("disabled")).await?;

        // The new user logs in with the passphrase the admin saw.
        log_in(bob, &url, "carol", &passphrase).await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_tab_notifies_direct_messages_and_mentions_only_and_the_page_fits_a_phone() {
    let server = server();
    let url = format!("http://{}/", server.http);
    with_browsers("notify", 2, |browsers| async move {
        let [alice, bob] = &browsers[..] else { unreachable!() };
        // A phone-sized window: the sidebar goes above the conversation, all usable.
        bob.set_window_size(390, 844).await.map_err(err("resizing"))?;
        log_in(alice, &url, "alice", ALICE).await?;
        log_in(bob, &url, "bob", BOB).await?;
        if !find(bob, "#draft").await?.is_displayed().await.map_err(err("visibility"))? {
            return Err("the message field is not visible on a phone-sized screen".into());
        }
        // Alice has allowed notifications and switched to another tab. The page is on
        // 127.0.0.1, a secure context; the browser's notification API is recorded.
        alice
            .execute(
                "window.__notes = [];
                 window.Notification = function (title, options) { window.__notes.push([title, options.body]); };
                 window.Notification.permission = 'granted';
                 Object.defineProperty(document, 'hidden', { get: () => true });",
                vec![],
            )
            .await
            .map_err(err("preparing the page"))?;
        send(bob, "just the room").await?;
        send(bob, "hey @alice, look").await?;
        open_direct(bob, "alice").await?;
        send(bob, "a direct one").await?;
        wait_for_line(bob, "a direct one").await?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let notes = alice.execute("return window.__notes;", vec![]).await.map_err(err("reading"))?;
            let notes: Vec<(String, String)> = serde_json::from_value(notes).map_err(|e| e.to_string())?;
            if notes.len() >= 2 {
                let expected = vec![
                    ("bob in #general".to_string(), "hey @alice, look".to_string()),
                    ("bob".to_string(), "a direct one".to_string()),
                ];
                return if notes == expected { Ok(()) } else { Err(format!("notifications: {notes:?}")) };
            }
            if Instant::now() > deadline {
                return Err(format!("notifications: {notes:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}
