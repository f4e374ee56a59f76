//! The plugin's task ids: `<session>:p:<tick>` (physics), `<session>:ai:<tick>` (AI),
//! `<session>:probe:<n>` (fallback probes), `<session>:c:<n>` (custom tasks).

/// What a task id refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    Physics(u64),
    Ai(u64),
    Probe,
    Custom,
    Unknown,
}

/// Reads a task id issued by this plugin for `session`.
pub(crate) fn classify(session: &str, task_id: &str) -> Tag {
    let Some(rest) = task_id.strip_prefix(session).and_then(|r| r.strip_prefix(':')) else {
        return Tag::Unknown;
    };
    let (kind, n) = rest.split_once(':').unwrap_or((rest, ""));
    match (kind, n.parse::<u64>()) {
        ("p", Ok(t)) => Tag::Physics(t),
        ("ai", Ok(t)) => Tag::Ai(t),
        ("probe", Ok(_)) => Tag::Probe,
        ("c", Ok(_)) => Tag::Custom,
        _ => Tag::Unknown,
    }
}

pub(crate) fn physics_id(session: &str, tick: u64) -> String {
    format!("{session}:p:{tick}")
}

pub(crate) fn ai_id(session: &str, tick: u64) -> String {
    format!("{session}:ai:{tick}")
}

pub(crate) fn probe_id(session: &str, n: u64) -> String {
    format!("{session}:probe:{n}")
}

pub(crate) fn custom_id(session: &str, n: u64) -> String {
    format!("{session}:c:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_through_classify() {
        assert_eq!(classify("s:1", &physics_id("s:1", 42)), Tag::Physics(42));
        assert_eq!(classify("s:1", &ai_id("s:1", 7)), Tag::Ai(7));
        assert_eq!(classify("s:1", &probe_id("s:1", 3)), Tag::Probe);
        assert_eq!(classify("s:1", &custom_id("s:1", 9)), Tag::Custom);
        assert_eq!(classify("s:1", "other:p:1"), Tag::Unknown);
        assert_eq!(classify("s", "s:p:x"), Tag::Unknown);
        assert_eq!(classify("s", "sx:p:1"), Tag::Unknown);
    }
}
