//! A small flag parser: `--name value`, `--name=value` and switches, checked against what each command
//! accepts, so a typo is a one-line error instead of being ignored.

use std::collections::HashMap;
use std::str::FromStr;

use volt_runtime::{bail, Error, Result};

pub struct Flags {
    values: HashMap<&'static str, String>,
    switches: Vec<&'static str>,
}

impl Flags {
    /// `valued` flags take a value; `switches` take none.
    pub fn parse(args: &[String], valued: &[&'static str], switches: &[&'static str]) -> Result<Flags> {
        let mut flags = Flags {
            values: HashMap::new(),
            switches: Vec::new(),
        };
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some(body) = arg.strip_prefix("--") else {
                bail!("unexpected argument `{arg}` (flags start with --)");
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if let Some(&known) = switches.iter().find(|s| **s == name) {
                if inline.is_some() {
                    bail!("--{name} takes no value");
                }
                flags.switches.push(known);
            } else if let Some(&known) = valued.iter().find(|s| **s == name) {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.clone(),
                            None => bail!("--{name} needs a value"),
                        }
                    }
                };
                if flags.values.insert(known, value).is_some() {
                    bail!("--{name} given twice");
                }
            } else {
                let mut all: Vec<&str> = valued.iter().chain(switches).copied().collect();
                all.sort();
                bail!("unknown flag --{name} (this command takes: --{})", all.join(", --"));
            }
            i += 1;
        }
        Ok(flags)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    pub fn get<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::msg(format!("--{name}: `{v}` is not a valid value"))),
        }
    }

    pub fn get_or<T: FromStr>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.get(name)?.unwrap_or(default))
    }
}

/// `3,17,42` → ids; spaces allowed around commas.
pub fn parse_ids(list: &str) -> Result<Vec<u32>> {
    if list.trim().is_empty() {
        bail!("empty input: --ids lists no token ids");
    }
    list.split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| Error::msg(format!("--ids: `{}` is not a token id", s.trim())))
        })
        .collect()
}
