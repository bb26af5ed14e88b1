//! Hugging Face chat templates rendered with minijinja, matching transformers' `apply_chat_template`:
//! trim_blocks and lstrip_blocks, `raise_exception`, a `tojson` like Python's `json.dumps`, `strftime_now`,
//! Python string/dict methods, and booleans and none printed the Python way (`True`, `None`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::bail;
use crate::error::{Error, Result, ResultExt};
use crate::tokenizer::TokenizerConfig;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template and the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
}

const TEMPLATE_NAME: &str = "chat_template";

/// What the template sees; special tokens left unset are undefined (rendering as ""), as in transformers.
#[derive(Serialize)]
struct RenderContext<'a> {
    messages: &'a [ChatMessage],
    add_generation_prompt: bool,
    /// Always none: Volt passes no tool schemas or documents.
    tools: Option<()>,
    documents: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bos_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eos_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unk_token: Option<&'a str>,
}

impl ChatTemplate {
    /// From a model folder: `chat_template.jinja` first, else `chat_template.json` ({"chat_template": ...}), else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of {name, template} where "default" is
    /// used); from a GGUF file: `tokenizer.chat_template`. Ok(None) if there is none. bos/eos/unk strings
    /// come from tokenizer_config.json (the GGUF tokenizer's).
    pub fn open(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config = TokenizerConfig::load(dir)?;
        let Some((source, file)) = find_source(dir, &config)? else {
            return Ok(None);
        };
        let template = ChatTemplate::from_source(&source, config.bos_token, config.eos_token, config.unk_token)
            .with_context(|| file.display())?;
        Ok(Some(template))
    }

    pub fn from_source(
        source: &str,
        bos: Option<String>,
        eos: Option<String>,
        unk: Option<String>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_error(&e))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos,
            eos_token: eos,
            unk_token: unk,
        })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let context = RenderContext {
            messages,
            add_generation_prompt,
            tools: None,
            documents: None,
            bos_token: self.bos_token.as_deref(),
            eos_token: self.eos_token.as_deref(),
            unk_token: self.unk_token.as_deref(),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| template_error(&e))?;
        template.render(context).map_err(|e| template_error(&e))
    }
}

/// The template source of a model folder and the file it is in, in transformers' order of precedence.
fn find_source(dir: &Path, config: &TokenizerConfig) -> Result<Option<(String, PathBuf)>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source = std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?;
        return Ok(Some((source, jinja)));
    }
    let json_path = dir.join("chat_template.json");
    if json_path.is_file() {
        let text = std::fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json_path.display()))?;
        let Some(source) = json.get("chat_template").and_then(|t| t.as_str()) else {
            bail!("{}: no \"chat_template\" string", json_path.display());
        };
        return Ok(Some((source.to_string(), json_path)));
    }
    let Some(template) = &config.chat_template else {
        return Ok(None);
    };
    let config_path = if crate::checkpoint::is_gguf(dir) {
        dir.to_path_buf()
    } else {
        dir.join("tokenizer_config.json")
    };
    match template {
        serde_json::Value::String(source) => Ok(Some((source.clone(), config_path))),
        serde_json::Value::Array(named) => {
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
            match default.and_then(|t| t.get("template")).and_then(|t| t.as_str()) {
                Some(source) => Ok(Some((source.to_string(), config_path))),
                None => bail!("{}: chat_template lists no \"default\" template", config_path.display()),
            }
        }
        _ => bail!(
            "{}: chat_template is neither a string nor a list of {{name, template}}",
            config_path.display()
        ),
    }
}

/// One line: the template's own message for `raise_exception`, the error kind and detail otherwise.
fn template_error(e: &minijinja::Error) -> Error {
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        (kind, Some(detail)) => format!("{kind}: {detail}"),
        (kind, None) => kind.to_string(),
    };
    match e.line() {
        Some(line) => Error::msg(format!("chat template, line {line}: {what}")),
        None => Error::msg(format!("chat template: {what}")),
    }
}

/// Prints values as Jinja2 under Python does: `True`/`False`/`None` rather than minijinja's `true`/`false`/``.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" })?,
        ValueKind::None => out.write_str("None")?,
        _ => minijinja::escape_formatter(out, state, value)?,
    }
    Ok(())
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// The current time (UTC; transformers uses local time) formatted with a strftime pattern.
fn strftime_now(format: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime_utc(now, format)
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `strftime` of the UTC time `unix_secs` for the C-locale directives templates use; a `-` flag (`%-d`)
/// drops the zero padding as in glibc, and unknown directives are kept as written.
fn strftime_utc(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let weekday = WEEKDAYS[(days + 4).rem_euclid(7) as usize]; // 1970-01-01 was a Thursday
    let month_name = MONTHS[month as usize - 1];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.next_if_eq(&'-').is_some();
        let number = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        let text = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => number(year.rem_euclid(100), 2),
            Some('m') => number(month as i64, 2),
            Some('d') => number(day as i64, 2),
            Some('e') => {
                if unpadded {
                    day.to_string()
                } else {
                    format!("{day:2}")
                }
            }
            Some('j') => number(day_of_year, 3),
            Some('H') => number(hour, 2),
            Some('I') => number(hour12, 2),
            Some('M') => number(minute, 2),
            Some('S') => number(second, 2),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_string(),
            Some('A') => weekday.to_string(),
            Some('a') => weekday[..3].to_string(),
            Some('B') => month_name.to_string(),
            Some('b') | Some('h') => month_name[..3].to_string(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('Z') => "UTC".to_string(),
            Some('z') => "+0000".to_string(),
            Some('%') => "%".to_string(),
            Some(other) => format!("%{}{other}", if unpadded { "-" } else { "" }),
            None => "%".to_string(),
        };
        out.push_str(&text);
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date; the inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month as i64 + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// transformers' `tojson`: `json.dumps(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// Unlike minijinja's built-in it does not HTML-escape, and it keeps Python's separators (`", "`, `": "`).
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        Some(indent) if !indent.is_none() => Some(usize::try_from(indent)?),
        _ => None,
    };
    let (item_separator, key_separator) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => (item, key),
            Err(_) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be (item, key)",
                ))
            }
        },
        // Python drops the space after "," when indenting: the newline separates items.
        None => (
            (if indent.is_some() { "," } else { ", " }).to_string(),
            ": ".to_string(),
        ),
    };
    let style = JsonStyle {
        indent,
        item_separator,
        key_separator,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(Value::from(out))
}

/// The output options of Python's `json.dumps`.
struct JsonStyle {
    indent: Option<usize>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn write(&self, value: &serde_json::Value, depth: usize, out: &mut String) {
        match value {
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, depth + 1, out);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            serde_json::Value::Object(map) if !map.is_empty() => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    self.separate(i, depth + 1, out);
                    self.write_string(key, out);
                    out.push_str(&self.key_separator);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
            serde_json::Value::String(s) => self.write_string(s, out),
            // Numbers, booleans, null, and the empty [] and {}.
            other => out.push_str(&other.to_string()),
        }
    }

    /// What precedes the `index`-th item of a container.
    fn separate(&self, index: usize, depth: usize, out: &mut String) {
        if index > 0 {
            out.push_str(&self.item_separator);
        }
        self.newline(depth, out);
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(indent) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * depth));
        }
    }

    /// Python's escaping: control characters, `"` and `\` always; everything outside ' '..='~' with ensure_ascii.
    fn write_string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if c < ' ' || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer_tiny");

    fn expected() -> serde_json::Value {
        let text = std::fs::read_to_string(Path::new(FIXTURE).join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn messages(json: &serde_json::Value) -> Vec<ChatMessage> {
        serde_json::from_value(json.clone()).unwrap()
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::from_source(source, None, None, None)?.render(messages, false)
    }

    /// A fresh empty folder under the system temp dir, unique to this test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volt-chat-template-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fixture_matches_transformers() {
        let template = ChatTemplate::open(Path::new(FIXTURE))
            .unwrap()
            .expect("fixture has a chat template");
        let exp = &expected()["chat"];
        let conversation = messages(&exp["messages"]);
        assert_eq!(
            template.render(&conversation[..2], true).unwrap(),
            exp["with_generation_prompt"].as_str().unwrap()
        );
        assert_eq!(
            template.render(&conversation, false).unwrap(),
            exp["without_generation_prompt"].as_str().unwrap()
        );
    }

    #[test]
    fn extra_templates_match_transformers() {
        let exp = expected();
        let conversation = messages(&exp["extra_messages"]);
        let cases = exp["templates"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let template = ChatTemplate::from_source(case["template"].as_str().unwrap(), None, None, None).unwrap();
            let rendered = template
                .render(&conversation, case["add_generation_prompt"].as_bool().unwrap())
                .unwrap();
            assert_eq!(rendered, case["output"].as_str().unwrap(), "template {}", case["name"]);
        }
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let template = ChatTemplate::open(Path::new(FIXTURE)).unwrap().unwrap();
        let err = template.render(&[msg("tool", "x")], true).unwrap_err();
        assert_eq!(err.message(), "chat template, line 4: Unknown role: tool");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn template_errors_are_one_line() {
        let err = ChatTemplate::from_source("{% for m in messages %}", None, None, None)
            .err()
            .unwrap();
        assert!(err.message().starts_with("chat template"), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = render("{{ messages | no_such_filter }}", &[]).unwrap_err();
        assert!(err.message().contains("no_such_filter"), "{err}");
    }

    #[test]
    fn special_tokens_and_context() {
        let template = ChatTemplate::from_source(
            "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ tools is none }}|{{ add_generation_prompt }}",
            Some("<s>".into()),
            Some("</s>".into()),
            None,
        )
        .unwrap();
        // An unset special token is undefined (empty), as in transformers; booleans print the Python way.
        assert_eq!(template.render(&[], true).unwrap(), "<s>|</s>||True|True");
        assert_eq!(render("{{ none }}{{ false }}", &[]).unwrap(), "NoneFalse");
    }

    #[test]
    fn tojson_follows_python_json_dumps() {
        let m = [msg("user", "é<&>\"\u{1}")];
        assert_eq!(
            render("{{ messages | tojson }}", &m).unwrap(),
            r#"[{"role": "user", "content": "é<&>\"\u0001"}]"#
        );
        assert_eq!(
            render(
                "{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=[',', ':']) }}",
                &[msg("user", "é🦀")]
            )
            .unwrap(),
            r#"{"content":"\u00e9\ud83e\udd80","role":"user"}"#
        );
        assert_eq!(
            render("{{ [] | tojson(indent=2) }}{{ {'a': {}} | tojson(2) }}", &[]).unwrap(),
            "[]{\n  \"a\": {}\n}"
        );
        assert!(render("{{ 1 | tojson(colour=1) }}", &[]).is_err());
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2023-11-14 22:13:20 UTC; checked against Python's datetime.strftime.
        assert_eq!(
            strftime_utc(1_700_000_000, "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I %p %e|%-d %-m|%%"),
            "2023-11-14 22:13:20 Tue Tuesday Nov November 318 23 10 PM 14|14 11|%"
        );
        assert_eq!(
            strftime_utc(951_782_400 + 3 * 86_400, "%Y-%m-%d %a %j"),
            "2000-03-03 Fri 063"
        );
        assert_eq!(
            strftime_utc(-365 * 86_400, "%Y-%m-%d %a %j %I %p"),
            "1969-01-01 Wed 001 12 AM"
        );
        let year = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert!(year.len() == 4 && year.parse::<u32>().unwrap() >= 2024, "{year}");
    }

    #[test]
    fn open_sources_in_order() {
        let dir = temp_dir("sources");
        assert!(ChatTemplate::open(&dir).unwrap().is_none());

        let config = r#"{"eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "config{{ eos_token }}"}]}"#;
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
        assert_eq!(
            ChatTemplate::open(&dir).unwrap().unwrap().render(&[], false).unwrap(),
            "config</s>"
        );

        std::fs::write(
            dir.join("chat_template.json"),
            r#"{"chat_template": "json{{ eos_token }}"}"#,
        )
        .unwrap();
        assert_eq!(
            ChatTemplate::open(&dir).unwrap().unwrap().render(&[], false).unwrap(),
            "json</s>"
        );

        std::fs::write(dir.join("chat_template.jinja"), "jinja{{ eos_token }}\n").unwrap();
        assert_eq!(
            ChatTemplate::open(&dir).unwrap().unwrap().render(&[], false).unwrap(),
            "jinja</s>"
        );

        std::fs::write(dir.join("chat_template.jinja"), "{% if %}").unwrap();
        let err = ChatTemplate::open(&dir).err().unwrap();
        let expected = "chat_template.jinja: chat template, line 1: syntax error";
        assert!(err.message().contains(expected), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_list_without_default_is_an_error() {
        let dir = temp_dir("no-default");
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
        )
        .unwrap();
        let err = ChatTemplate::open(&dir).err().unwrap();
        assert!(err.message().contains("default"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
