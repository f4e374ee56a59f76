//! Checks that a binary's command line covers its settings struct.
//!
//! The list of settings is not written down anywhere: it is read from the struct's
//! derived `Debug` (`format!("{:#?}", Config::default())`), which names every field. So a
//! field added to the struct without a flag fails the check until it gets one (or is
//! exempted with a reason). The flags come from the binary's `--help`.
//!
//! A setting `foo_bar` is expected as `--foo-bar`, or `--foo-bar-ms` when its value is a
//! [`Duration`](std::time::Duration) (or an `Option` of one): every duration on the
//! command line is a whole number of milliseconds, named `…-ms`, its environment variable
//! (if any) `…_MS`. Where a flag is spelled like its setting, its `[default: …]` must be
//! the struct's default (durations in milliseconds, `None` as no default or 0), so the
//! flag's default cannot drift from the struct's. Fields of a nested struct (a field whose
//! value prints as `Name { … }`) are settings of their own, by their own names.
//!
//! The struct's `Debug` must be derived: a hand-written one could leave fields out. A
//! duration whose default is `None` cannot be told from its value: list it in `renamed`
//! with its `-ms` flag.

/// One setting: its name (`parent.field` inside a nested struct) and its default value as
/// `Debug` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// `field`, or `parent.field` for a field of a nested struct.
    pub name: String,
    /// The value as `{:#?}` prints it, without the trailing comma.
    pub value: String,
}

impl Setting {
    /// The field's own name, without its parent's.
    pub fn leaf(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// The value in milliseconds, when it is a duration or `Some` duration.
    pub fn duration_ms(&self) -> Option<u128> {
        duration_ms(unwrap_some(&self.value))
    }
}

/// The settings of a struct, from its pretty `Debug` (`{:#?}`): the fields at the first
/// level of indentation, and those of a struct nested one level down. A value spread over
/// several lines (`Some(\n 30s,\n)`) is put back on one (`Some(30s)`).
pub fn settings(debug: &str) -> Vec<Setting> {
    let lines: Vec<(usize, &str)> = debug.lines().map(|l| (l.len() - l.trim_start().len(), l.trim())).collect();
    let mut out = Vec::new();
    fields(&lines, 4, "", true, &mut out);
    out
}

/// The fields at `indent` in `lines`; with `nest`, a field whose value is a struct stands
/// for its own fields.
fn fields(lines: &[(usize, &str)], indent: usize, prefix: &str, nest: bool, out: &mut Vec<Setting>) {
    let mut i = 0;
    while i < lines.len() {
        let (at, text) = lines[i];
        i += 1;
        let Some((name, first)) = text.split_once(": ") else { continue };
        if at != indent
            || name.is_empty()
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let start = i;
        while i < lines.len() && lines[i].0 > indent {
            i += 1;
        }
        let body = &lines[start..i];
        let name = format!("{prefix}{name}");
        if nest && first.ends_with(" {") {
            fields(body, indent + 4, &format!("{name}."), false, out);
            continue;
        }
        let mut value: String = std::iter::once(first).chain(body.iter().map(|(_, t)| *t)).collect();
        if let Some((_, closer)) = lines.get(i).filter(|(at, t)| *at == indent && t.starts_with([')', ']', '}'])) {
            value.push_str(closer);
            i += 1;
        }
        let value = value.strip_suffix(',').unwrap_or(&value);
        let value = value.replace(",)", ")").replace(",]", "]").replace(",}", "}");
        out.push(Setting { name, value });
    }
}

/// One flag of a `--help` text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// `--name`.
    pub long: String,
    /// Its environment variable, if it has one.
    pub env: Option<String>,
    /// What its last `[default: …]` says (clap's own comes last).
    pub default: Option<String>,
}

/// The long flags of a clap `--help` text.
pub fn flags(help: &str) -> Vec<Flag> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if (2..=6).contains(&indent) && text.starts_with('-') {
            let long = text.split_whitespace().find(|t| t.starts_with("--")).map(|t| t.trim_end_matches(','));
            if let Some(long) = long {
                // Clap puts a short help on the flag's own line: it is part of the body.
                entries.push((long.to_owned(), text.to_owned()));
                continue;
            }
        }
        if let Some((_, body)) = entries.last_mut() {
            body.push(' ');
            body.push_str(text);
        }
    }
    entries
        .into_iter()
        .map(|(long, body)| {
            let env = body.find("[env: ").map(|at| {
                let rest = &body[at + "[env: ".len()..];
                rest[..rest.find(['=', ']']).unwrap_or(rest.len())].to_owned()
            });
            let default = body.rfind("[default: ").map(|at| {
                let rest = &body[at + "[default: ".len()..];
                rest[..rest.find(']').unwrap_or(rest.len())].to_owned()
            });
            Flag { long, env, default }
        })
        .collect()
}

/// Last words of a flag name that say it is a duration: such a flag must end in `-ms`.
const DURATION_WORDS: [&str; 12] =
    ["secs", "seconds", "sec", "minutes", "timeout", "interval", "delay", "grace", "window", "ttl", "duration", "wait"];

/// Everything wrong with how `help` covers the settings in `config_debug`:
/// `renamed` gives the flags of settings not spelled like their field (setting name →
/// flags), `exempt` the settings deliberately without a flag (setting name → why).
/// Empty when all is well.
pub fn problems(config_debug: &str, help: &str, renamed: &[(&str, &[&str])], exempt: &[(&str, &str)]) -> Vec<String> {
    let settings = settings(config_debug);
    let flags = flags(help);
    let flag = |long: &str| flags.iter().find(|f| f.long == long);
    let mut problems = Vec::new();
    if settings.is_empty() {
        problems.push(format!("no settings found in the struct's Debug (is it derived?):\n{config_debug}"));
    }
    for name in renamed.iter().map(|(n, _)| n).chain(exempt.iter().map(|(n, _)| n)) {
        if !settings.iter().any(|s| s.name == *name) {
            problems.push(format!("{name} is listed as renamed or exempt, but the struct has no such setting"));
        }
    }
    for setting in &settings {
        if exempt.iter().any(|(n, _)| *n == setting.name) {
            continue;
        }
        let duration = setting.duration_ms();
        let (expected, spelled_like_field) = match renamed.iter().find(|(n, _)| *n == setting.name) {
            Some((_, longs)) => (longs.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(), false),
            None => {
                let base = format!("--{}", setting.leaf().replace('_', "-"));
                (vec![if duration.is_some() { format!("{base}-ms") } else { base }], true)
            }
        };
        for long in &expected {
            let Some(found) = flag(long) else {
                problems.push(format!(
                    "setting {} (default {}) has no flag {long}: add one, or list it as exempt with a reason",
                    setting.name, setting.value
                ));
                continue;
            };
            if duration.is_some() && !long.ends_with("-ms") {
                problems
                    .push(format!("setting {} is a duration, but its flag {long} does not end in -ms", setting.name));
            }
            if !spelled_like_field {
                continue;
            }
            let want = match duration {
                Some(ms) => Some(ms.to_string()),
                None => {
                    let v = unwrap_some(&setting.value);
                    v.chars().all(|c| c.is_ascii_digit()).then(|| v.to_owned())
                }
            };
            let Some(want) = want else { continue };
            if found.default.as_deref() != Some(want.as_str()) {
                problems.push(format!(
                    "{long} defaults to {:?}, but {} defaults to {} ({want})",
                    found.default, setting.name, setting.value
                ));
            }
        }
    }
    for f in &flags {
        let last = f.long.rsplit('-').next().unwrap_or_default();
        if DURATION_WORDS.contains(&last) {
            problems.push(format!("{} looks like a duration: durations are milliseconds, named -ms", f.long));
        }
        if f.long.ends_with("-ms")
            && let Some(env) = &f.env
            && !env.ends_with("_MS")
        {
            problems
                .push(format!("{} is in milliseconds, but its environment variable {env} does not end in _MS", f.long));
        }
    }
    problems
}

fn unwrap_some(value: &str) -> &str {
    value.strip_prefix("Some(").and_then(|v| v.strip_suffix(')')).unwrap_or(value)
}

/// Milliseconds of a `Duration`'s `Debug` (`1.5s`, `100ms`, `0ns`), if it is one.
fn duration_ms(text: &str) -> Option<u128> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "µs" => 1e3,
        "ns" => 1.0,
        _ => return None,
    };
    let number: f64 = number.parse().ok()?;
    Some((number * nanos_per_unit / 1e6).round() as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)] // read only through Debug
    struct Inner {
        max_things: u64,
    }

    #[derive(Debug)]
    #[allow(dead_code)] // read only through Debug
    struct Config {
        idle_timeout: std::time::Duration,
        wait: Option<std::time::Duration>,
        url: String,
        limits: Inner,
        names: Vec<String>,
        cap: Option<u32>,
    }

    fn config() -> String {
        format!(
            "{:#?}",
            Config {
                idle_timeout: std::time::Duration::from_millis(1500),
                wait: None,
                url: "ws://h: 1".into(),
                limits: Inner { max_things: 7 },
                names: vec!["a: b".into()],
                cap: Some(3),
            }
        )
    }

    #[test]
    fn settings_are_read_from_the_debug_output() {
        let names: Vec<_> = settings(&config()).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["idle_timeout", "wait", "url", "limits.max_things", "names", "cap"]);
        let values: Vec<_> = settings(&config()).into_iter().map(|s| s.value).collect();
        assert_eq!(values, ["1.5s", "None", "\"ws://h: 1\"", "7", "[\"a: b\"]", "Some(3)"]);
        let idle = &settings(&config())[0];
        assert_eq!(idle.duration_ms(), Some(1500));
        assert_eq!(duration_ms("3600s"), Some(3_600_000));
        assert_eq!(duration_ms("0ns"), Some(0));
        assert_eq!(duration_ms("\"5s\""), None);
    }

    const HELP: &str = "Usage: x [OPTIONS]

Options:
      --idle-timeout-ms <MS>
          Milliseconds [env: X_IDLE_TIMEOUT_MS=] [default: 1500]
      --wait-ms <W>
          Wait [default: 0]
      --url <URL>
          Url [default: ws://h: 1]
      --max-things <N>
          Things
          
          [default: 7]
      --names <N>
          Names
      --cap <N>
          Cap [env: X_CAP=] [default: 3]
  -h, --help
          Print help
";

    #[test]
    fn a_short_help_on_the_flags_own_line_keeps_its_default() {
        // Clap lays a section out this way when every help in it is short.
        let help = "Identity:\n      --grace-ms <MS>  How long [env: X_GRACE_MS=] [default: 10000]\n      --insecure       Allow\n";
        let flags = flags(help);
        assert_eq!(flags.len(), 2);
        assert_eq!(flags[0].long, "--grace-ms");
        assert_eq!(flags[0].default.as_deref(), Some("10000"));
        assert_eq!(flags[0].env.as_deref(), Some("X_GRACE_MS"));
        assert_eq!(flags[1].default, None);
    }

    #[test]
    fn a_missing_flag_a_wrong_default_and_a_seconds_flag_are_problems() {
        let renamed: &[(&str, &[&str])] = &[("wait", &["--wait-ms"])];
        let exempt = [("names", "set by the program")];
        assert_eq!(problems(&config(), HELP, renamed, &exempt), Vec::<String>::new());
        let without_cap = HELP.replace("--cap", "--capacity");
        let found = problems(&config(), &without_cap, renamed, &exempt);
        assert!(found.len() == 1 && found[0].contains("no flag --cap"), "{found:?}");
        let wrong_default = HELP.replace("[default: 7]", "[default: 8]");
        assert_eq!(problems(&config(), &wrong_default, renamed, &exempt).len(), 1);
        let seconds = HELP.replace("--wait-ms <W>", "--wait-ms <W>\n      --grace-secs <S>");
        assert_eq!(problems(&config(), &seconds, renamed, &exempt).len(), 1);
        let stale = [("names", "x"), ("gone", "y")];
        assert_eq!(problems(&config(), HELP, renamed, &stale).len(), 1);
    }
}
