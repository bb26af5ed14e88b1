//! Conversations and settings on disk: one JSON file per conversation under `<data dir>/conversations/`,
//! `settings.json` beside it. Writes go to a temporary file that is then renamed over the old one, on a
//! writer thread, so a crash leaves either the old or the new file and the UI never waits on the disk. A
//! file that cannot be read is renamed aside (`*.corrupt`) and reported, never fatal.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::state::{Conversation, Settings};

/// `$VOLT_DATA_DIR`, else the platform's per-user data folder + `volt`.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VOLT_DATA_DIR") {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if cfg!(windows) {
        std::env::var_os("APPDATA").map(|d| PathBuf::from(d).join("volt"))
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support/volt"))
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| home.map(|h| h.join(".local/share")))
            .map(|d| d.join("volt"))
    }
}

pub struct Store {
    dir: PathBuf,
    writes: Option<Sender<Write>>,
    /// Failed writes, as one-line messages for the UI.
    failures: Receiver<String>,
    writer: Option<JoinHandle<()>>,
}

enum Write {
    Replace(PathBuf, Vec<u8>),
    Remove(PathBuf),
}

impl Store {
    pub fn open(dir: &Path) -> Store {
        let (writes, inbox) = mpsc::channel::<Write>();
        let (report, failures) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("volt-store".into())
            .spawn(move || {
                for write in inbox {
                    let (path, result) = match write {
                        Write::Replace(path, bytes) => {
                            let r = replace_file(&path, &bytes);
                            (path, r)
                        }
                        Write::Remove(path) => {
                            let r = std::fs::remove_file(&path).or_else(|e| match e.kind() {
                                std::io::ErrorKind::NotFound => Ok(()),
                                _ => Err(e),
                            });
                            (path, r)
                        }
                    };
                    if let Err(e) = result {
                        let _ = report.send(format!("could not write {}: {e}", path.display()));
                    }
                }
            })
            .expect("spawning the store thread");
        Store {
            dir: dir.to_path_buf(),
            writes: Some(writes),
            failures,
            writer: Some(writer),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn conversations_dir(&self) -> PathBuf {
        self.dir.join("conversations")
    }

    fn conversation_path(&self, id: &str) -> PathBuf {
        self.conversations_dir().join(format!("{id}.json"))
    }

    /// Every saved conversation, most recently changed first, and a line for each file set aside.
    pub fn load_conversations(&self) -> (Vec<Conversation>, Vec<String>) {
        let mut conversations = Vec::new();
        let mut notices = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.conversations_dir()) else {
            return (conversations, notices);
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            match read_json::<Conversation>(&path) {
                Ok(Some(c)) => conversations.push(c),
                Ok(None) => {}
                Err(notice) => notices.push(notice),
            }
        }
        conversations.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| a.id.cmp(&b.id)));
        (conversations, notices)
    }

    /// The saved settings (defaults if none), and a line if the file was set aside.
    pub fn load_settings(&self) -> (Settings, Option<String>) {
        match read_json::<Settings>(&self.dir.join("settings.json")) {
            Ok(s) => (s.unwrap_or_default(), None),
            Err(notice) => (Settings::default(), Some(notice)),
        }
    }

    pub fn save_conversation(&self, conversation: &Conversation) {
        self.write(Write::Replace(
            self.conversation_path(&conversation.id),
            to_json(conversation),
        ));
    }

    pub fn delete_conversation(&self, id: &str) {
        self.write(Write::Remove(self.conversation_path(id)));
    }

    pub fn save_settings(&self, settings: &Settings) {
        self.write(Write::Replace(self.dir.join("settings.json"), to_json(settings)));
    }

    fn write(&self, write: Write) {
        if let Some(w) = &self.writes {
            let _ = w.send(write);
        }
    }

    /// Writes that failed since the last call.
    pub fn failures(&self) -> Vec<String> {
        self.failures.try_iter().collect()
    }
}

impl Drop for Store {
    /// Finishes the queued writes.
    fn drop(&mut self) {
        self.writes = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("conversations and settings serialize")
}

/// Writes `path.tmp`, flushes it to disk and renames it over `path`.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `Ok(None)` if there is no file; `Err(notice)` if it could not be read and was renamed aside.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    match serde_json::from_slice(&text) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let aside = set_aside(path);
            Err(match aside {
                Ok(to) => format!("{} is damaged ({e}); moved it to {}", path.display(), to.display()),
                Err(r) => format!("{} is damaged ({e}) and could not be moved aside: {r}", path.display()),
            })
        }
    }
}

/// Renames `x.json` to `x.json.corrupt` (or `.corrupt-2`, … if taken).
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut n = 1;
    loop {
        let suffix = if n == 1 { String::new() } else { format!("-{n}") };
        let to = path.with_file_name(format!("{name}.corrupt{suffix}"));
        if !to.exists() {
            std::fs::rename(path, &to)?;
            return Ok(to);
        }
        n += 1;
    }
}
