//! The template helpers of the pages: `fill` (a string's `{placeholders}`), `datetime` and
//! `date` (milliseconds since the epoch, UTC), `number` (digit groups in the page's language),
//! `json` (a value pretty-printed), and the `link(path, key=value…)` function (a query string of
//! the non-empty values, percent-encoded).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

/// Adds the helpers to `env`.
pub fn register(env: &mut Environment<'static>) {
    env.add_filter("fill", fill);
    env.add_filter("datetime", datetime);
    env.add_filter("date", date);
    env.add_filter("number", number);
    env.add_filter("json", json);
    env.add_function("link", link);
}

fn fill(text: String, kwargs: Kwargs) -> Result<String, Error> {
    let mut out = text;
    for key in kwargs.args() {
        let value: Value = kwargs.get(key)?;
        let shown = match value.as_str() {
            Some(s) => s.to_owned(),
            None => value.to_string(),
        };
        out = out.replace(&format!("{{{key}}}"), &shown);
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn ms_arg(value: &Value) -> Result<i64, Error> {
    i64::try_from(value.clone())
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "expected milliseconds"))
}

/// `2026-12-02`.
pub fn format_date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-12-02 14:05 UTC`.
pub fn format_datetime(ms: i64) -> String {
    let secs_of_day = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{} {:02}:{:02} UTC",
        format_date(ms),
        secs_of_day / 3600,
        secs_of_day % 3600 / 60
    )
}

fn datetime(value: Value) -> Result<String, Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(String::new());
    }
    Ok(format_datetime(ms_arg(&value)?))
}

fn date(value: Value) -> Result<String, Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(String::new());
    }
    Ok(format_date(ms_arg(&value)?))
}

/// Groups digits: `12 345` (French, narrow no-break space), `12,345`, `12.345` (German).
pub fn format_number(n: i64, lang: &str) -> String {
    let sep = match lang {
        "fr" => "\u{202f}",
        "de" => ".",
        _ => ",",
    };
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push_str(sep);
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn number(state: &State, value: Value) -> Result<String, Error> {
    let lang = state
        .lookup("lang")
        .and_then(|l| l.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(format_number(ms_arg(&value)?, &lang))
}

fn json(value: Value) -> Result<String, Error> {
    let as_json: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    serde_json::to_string_pretty(&as_json)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// Percent-encodes a query value.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn link(path: String, kwargs: Kwargs) -> Result<String, Error> {
    let mut pairs = Vec::new();
    for key in kwargs.args() {
        let value: Value = kwargs.get(key)?;
        let shown = match value.kind() {
            ValueKind::Undefined | ValueKind::None => continue,
            _ => match value.as_str() {
                Some(s) => s.to_owned(),
                None => value.to_string(),
            },
        };
        if shown.is_empty() {
            continue;
        }
        pairs.push(format!("{key}={}", encode_query_value(&shown)));
    }
    if pairs.is_empty() {
        Ok(path)
    } else {
        Ok(format!("{path}?{}", pairs.join("&")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers() {
        assert_eq!(format_datetime(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_datetime(1_800_000_000_000), "2027-01-15 08:00 UTC");
        assert_eq!(format_date(951_782_400_000), "2000-02-29");
        assert_eq!(format_number(1_234_567, "de"), "1.234.567");
        assert_eq!(format_number(1_234_567, "en"), "1,234,567");
        assert_eq!(format_number(999, "fr"), "999");
        assert_eq!(format_number(-1000, "fr"), "-1\u{202f}000");
    }

    #[test]
    fn helpers_in_templates() {
        let mut env = Environment::new();
        register(&mut env);
        let out = env
            .render_str(
                "{{ 'Hello {name}, {n}'|fill(name='Ana', n=3) }} {{ link('/x', a='é&', b='', c=none, d=2) }}",
                minijinja::context! {},
            )
            .unwrap();
        assert_eq!(out, "Hello Ana, 3 /x?a=%C3%A9%26&d=2");
    }
}
