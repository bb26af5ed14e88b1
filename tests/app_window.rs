//! The real window: `volt chat` under Xvfb on the shipped model, a message typed with xdotool, the reply
//! saved to disk, and a screenshot of the screen (`import` from ImageMagick). `UPDATE_SNAPSHOTS=1` copies
//! the screenshot to docs/images/volt-chat.png for the README. Without Xvfb, xdotool or import: SKIP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ends the child when the test ends, however it ends: SIGTERM, so Xvfb removes its lock and socket.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let terminated = Command::new("kill").arg(self.0.id().to_string()).status();
        if !terminated.is_ok_and(|s| s.success()) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn xdotool(display: &str, args: &[&str]) {
    let status = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .status()
        .unwrap();
    assert!(status.success(), "xdotool {args:?}");
}

/// The saved conversation's question and reply, once the reply is complete.
fn saved_exchange(data: &Path) -> Option<(String, String)> {
    for entry in std::fs::read_dir(data.join("conversations")).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            let messages = v["messages"].as_array()?;
            if messages.len() == 2 && messages[1]["reply"].is_object() {
                let text = |m: &serde_json::Value| m["content"].as_str().map(str::to_string);
                return Some((text(&messages[0])?, text(&messages[1])?));
            }
        }
    }
    None
}

const QUESTION: &str = "Good morning! How is your sister?";

#[test]
fn the_window_converses_with_the_shipped_model() {
    let missing: Vec<&str> = ["Xvfb", "xdotool", "import"].into_iter().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        println!(
            "SKIP: {} not installed (apt-get install xvfb xdotool imagemagick)",
            missing.join(", ")
        );
        return;
    }
    // Xvfb picks a free display and writes its number to stdout once it accepts connections. The screen
    // is the window's size, so the screenshot is the window.
    let mut xvfb = Running(
        Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1180x760x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut number = String::new();
    BufReader::new(xvfb.0.stdout.take().unwrap())
        .read_line(&mut number)
        .unwrap();
    assert!(!number.trim().is_empty(), "Xvfb did not start");
    let display = format!(":{}", number.trim());

    let data = tempfile::tempdir().unwrap();
    // Saved settings as a user would leave them: the experts panel open, replies of up to 60 tokens.
    std::fs::write(
        data.path().join("settings.json"),
        r#"{"show_experts": true, "sampling": {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "max_tokens": 60, "seed": 1}}"#,
    )
    .unwrap();
    let log = std::fs::File::create(data.path().join("volt.log")).unwrap();
    let _app = Running(
        Command::new(env!("CARGO_BIN_EXE_volt"))
            .args(["chat", "--backend", "cpu"])
            .env("DISPLAY", &display)
            .env("VOLT_DATA_DIR", data.path())
            .env_remove("WAYLAND_DISPLAY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let app_log = || std::fs::read_to_string(data.path().join("volt.log")).unwrap_or_default();
    // The window is up once xdotool finds it; the model loads meanwhile.
    wait_for("the window", Duration::from_secs(60), || {
        assert!(!app_log().contains("error:"), "volt chat failed: {}", app_log());
        Command::new("xdotool")
            .args(["search", "--name", "^Volt$"])
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    std::thread::sleep(Duration::from_secs(3));
    // No window manager gives the window the keyboard: focus it, then click into the message box (it spans
    // the bottom of the 1180x760 window).
    xdotool(&display, &["search", "--name", "^Volt$", "windowfocus", "--sync"]);
    xdotool(&display, &["mousemove", "640", "733", "click", "1"]);
    // The box takes keys once the click's frame has run.
    std::thread::sleep(Duration::from_millis(500));
    xdotool(&display, &["type", "--delay", "30", QUESTION]);
    xdotool(&display, &["key", "Return"]);
    wait_for("the reply saved", Duration::from_secs(120), || {
        assert!(!app_log().contains("error:"), "volt chat failed: {}", app_log());
        saved_exchange(data.path()).is_some()
    });
    let (question, reply) = saved_exchange(data.path()).unwrap();
    assert_eq!(question, QUESTION, "typed keys were lost");
    assert!(!reply.trim().is_empty(), "an empty reply; app log:\n{}", app_log());
    std::thread::sleep(Duration::from_secs(1));

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("volt-window.png");
    let status = Command::new("import")
        .args(["-window", "root", shot.to_str().unwrap()])
        .env("DISPLAY", &display)
        .status()
        .unwrap();
    assert!(status.success());
    // A drawn window has many colours; a blank or failed screen has one or two.
    let colours = Command::new("identify")
        .args(["-format", "%k", shot.to_str().unwrap()])
        .output()
        .unwrap();
    let colours: usize = String::from_utf8_lossy(&colours.stdout).trim().parse().unwrap_or(0);
    assert!(
        colours > 20,
        "the screenshot has {colours} colours; app log:\n{}",
        app_log()
    );
    println!("reply: {reply:?}; screenshot {} ({colours} colours)", shot.display());
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images/volt-chat.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&shot, &docs).unwrap();
    }
}
