//! How the binaries' command lines spell values their settings hold in other types: every
//! duration a whole number of milliseconds (a flag named `…-ms`), and an optional limit's
//! `None` as 0. Both directions live here, so a flag's shown default and its parsing
//! cannot disagree.

use std::time::Duration;

/// A duration given in milliseconds.
pub fn millis(text: &str) -> Result<Duration, String> {
    text.parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{e}: a whole number of milliseconds"))
}

/// A duration given in milliseconds that must not be zero (a zero heartbeat period or
/// idle timeout makes no sense), and at most about 11.5 days.
pub fn positive_millis(text: &str) -> Result<Duration, String> {
    match millis(text)? {
        d if d.is_zero() || d.as_millis() > 1_000_000_000 => Err("must be 1 to 1000000000 milliseconds".to_owned()),
        d => Ok(d),
    }
}

/// A duration given in milliseconds, 0 for none.
pub fn optional_millis(text: &str) -> Result<Option<Duration>, String> {
    millis(text).map(|d| (!d.is_zero()).then_some(d))
}

/// A limit, 0 for none.
pub fn zero_is_none<T>(text: &str) -> Result<Option<T>, String>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let value: T = text.parse().map_err(|e: T::Err| e.to_string())?;
    Ok((value != T::default()).then_some(value))
}

/// A default duration as its flag shows it.
pub fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// A default optional duration as its flag shows it (none: 0).
pub fn optional_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), ms)
}

/// A default optional limit as its flag shows it (none: 0).
pub fn zero_or<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "0".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_flag_shows_it_reads_back() {
        let d = Duration::from_millis(1500);
        assert_eq!(millis(&ms(d)), Ok(d));
        assert_eq!(optional_millis(&optional_ms(None)), Ok(None));
        assert_eq!(optional_millis(&optional_ms(Some(d))), Ok(Some(d)));
        assert_eq!(zero_is_none::<u32>(&zero_or(Some(7u32))), Ok(Some(7)));
        assert_eq!(zero_is_none::<u32>(&zero_or::<u32>(None)), Ok(None));
        assert!(millis("0.5").unwrap_err().contains("milliseconds"));
        assert!(positive_millis("0").is_err());
        assert_eq!(positive_millis("1"), Ok(Duration::from_millis(1)));
    }
}
