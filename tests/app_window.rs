//! The real window: `volt chat` under Xvfb on the shipped model, a message typed with xdotool, the reply
//! saved to disk, and a screenshot of the screen (`import` from ImageMagick). `UPDATE_SNAPSHOTS=1` copies
//! the screenshot to docs/images/volt-chat.png for the README. Without Xvfb, xdotool or import: SKIP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
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

/// The saved conversation's assistant reply, once it is complete.
fn saved_reply(data: &Path) -> Option<String> {
    for entry in std::fs::read_dir(data.join("conversations")).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            let messages = v["messages"].as_array()?;
            if let Some(m) = messages
                .iter()
                .find(|m| m["role"] == "assistant" && m["reply"].is_object())
            {
                return m["content"].as_str().map(str::to_string);
            }
        }
    }
    None
}

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
    // A display number no other X server holds (its lock file names it).
    let number = (90..400)
        .map(|n| n + std::process::id() % 100)
        .find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists())
        .expect("a free X display number");
    let display = format!(":{number}");
    // The screen is the window's size, so the screenshot is the window.
    let mut xvfb = Running(
        Command::new("Xvfb")
            .args([display.as_str(), "-screen", "0", "1180x760x24", "-nolisten", "tcp"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
    wait_for("Xvfb", Duration::from_secs(20), || {
        assert!(xvfb.0.try_wait().unwrap().is_none(), "Xvfb {display} exited");
        socket.exists()
    });

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
    xdotool(
        &display,
        &["type", "--delay", "30", "Good morning! How is your sister?"],
    );
    xdotool(&display, &["key", "Return"]);
    wait_for("the reply saved", Duration::from_secs(120), || {
        assert!(!app_log().contains("error:"), "volt chat failed: {}", app_log());
        saved_reply(data.path()).is_some()
    });
    let reply = saved_reply(data.path()).unwrap();
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
