//! Instants for `expires_at`: TOML offset date-times and RFC 3339 strings to and from milliseconds
//! since the Unix epoch, without a date crate (a days-from-civil conversion is all it takes).

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The parts of an offset date-time, as written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DateTimeParts {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanosecond: u32,
    /// Offset east of UTC, in minutes.
    pub offset_minutes: i64,
}

impl DateTimeParts {
    /// Milliseconds since the epoch, or why the parts do not name an instant.
    pub(crate) fn to_ms(self) -> Result<i64, String> {
        if !(1..=12).contains(&self.month) {
            return Err(format!("month {} does not exist", self.month));
        }
        if self.day == 0 || self.day > days_in_month(self.year, self.month) {
            return Err(format!(
                "day {} does not exist in {:04}-{:02}",
                self.day, self.year, self.month
            ));
        }
        // A leap second (:60) is accepted by RFC 3339; it counts as the next second.
        if self.hour > 23 || self.minute > 59 || self.second > 60 {
            return Err(format!(
                "time {:02}:{:02}:{:02} does not exist",
                self.hour, self.minute, self.second
            ));
        }
        if self.offset_minutes.abs() >= 24 * 60 {
            return Err("offset must be less than 24 hours".to_owned());
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let seconds = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - self.offset_minutes * 60;
        Ok(seconds * 1000 + i64::from(self.nanosecond / 1_000_000))
    }
}

/// Converts a TOML date-time to milliseconds; a local date-time (no offset) is refused because
/// its instant would depend on the server's time zone.
pub(crate) fn toml_datetime_to_ms(dt: &toml::value::Datetime) -> Result<i64, String> {
    let (Some(date), Some(time)) = (dt.date, dt.time) else {
        return Err(format!(
            "{dt} is not a full date-time: give a date, a time and an offset, e.g. 2026-12-31T23:59:59Z"
        ));
    };
    let offset_minutes = match dt.offset {
        Some(toml::value::Offset::Z) => 0,
        Some(toml::value::Offset::Custom { minutes }) => i64::from(minutes),
        None => {
            return Err(format!(
                "{dt} has no offset: add Z (UTC) or +01:00, e.g. 2026-12-31T23:59:59Z"
            ));
        }
    };
    DateTimeParts {
        year: i64::from(date.year),
        month: u32::from(date.month),
        day: u32::from(date.day),
        hour: u32::from(time.hour),
        minute: u32::from(time.minute),
        second: u32::from(time.second.unwrap_or(0)),
        nanosecond: time.nanosecond.unwrap_or(0),
        offset_minutes,
    }
    .to_ms()
}

/// Parses an RFC 3339 date-time string ("2026-12-31T23:59:59Z", "2026-12-31T23:59:59.5+01:00").
pub(crate) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad =
        || format!("{s:?} is not an RFC 3339 date-time with an offset, e.g. 2026-12-31T23:59:59Z");
    let b = s.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let digits = b.get(range).ok_or_else(bad)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        digits
            .iter()
            .try_fold(0u32, |acc, d| {
                acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
            })
            .ok_or_else(bad)
    };
    let sep = |i: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(i) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad()),
        }
    };
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt ")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let second = num(17..19)?;
    let mut i = 19;
    let mut nanosecond = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err(bad());
        }
        // Keep nanosecond precision; further digits cannot matter to a millisecond instant.
        let mut scale = 100_000_000u32;
        for d in &b[start..end.min(start + 9)] {
            nanosecond += u32::from(d - b'0') * scale;
            scale /= 10;
        }
        i = end;
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let h = num(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let m = num(i + 4..i + 6)?;
            if m > 59 {
                return Err(bad());
            }
            let total = i64::from(h * 60 + m);
            if *sign == b'-' { -total } else { total }
        }
        _ => return Err(bad()),
    };
    DateTimeParts {
        year: i64::from(year),
        month,
        day,
        hour,
        minute,
        second,
        nanosecond,
        offset_minutes,
    }
    .to_ms()
    .map_err(|e| format!("{s:?}: {e}"))
}

/// Formats an instant as RFC 3339 in UTC ("2026-12-31T23:59:59Z", milliseconds only when set);
/// also a valid TOML offset date-time, so exports parse back to the same instant.
pub(crate) fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, (in_day / 60_000) % 60);
    let (second, milli) = ((in_day / 1000) % 60, in_day % 1000);
    let date = if (0..=9999).contains(&year) {
        format!("{year:04}-{month:02}-{day:02}")
    } else {
        // Outside RFC 3339; only reachable through hand-made rules, shown rather than hidden.
        format!("{year}-{month:02}-{day:02}")
    };
    if milli == 0 {
        format!("{date}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{date}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn days_from_civil_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn rfc3339_parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00+01:00").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_rfc3339("2025-12-31T23:00:00-01:00").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(
            parse_rfc3339("2026-01-01t00:00:00.250z").unwrap(),
            1_767_225_600_250
        );
        assert_eq!(
            parse_rfc3339("2026-01-01 00:00:00.1234567891Z").unwrap(),
            1_767_225_600_123
        );
    }

    #[test]
    fn rfc3339_refuses_local_and_impossible_times() {
        for s in [
            "2026-01-01T00:00:00",
            "2026-01-01",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+1:00",
            "2026-01-01T00:00:00+01:60",
            "2026-01-01T00:00:00Zjunk",
            "tomorrow",
            "",
        ] {
            assert!(parse_rfc3339(s).is_err(), "{s}");
        }
    }

    #[test]
    fn toml_local_datetime_is_refused() {
        let v: toml::Table =
            toml::from_str("a = 2026-01-01T00:00:00\nb = 2026-01-01\nc = 2026-01-01T00:00:00Z")
                .unwrap();
        let dt = |k: &str| match &v[k] {
            toml::Value::Datetime(d) => *d,
            _ => unreachable!(),
        };
        assert!(
            toml_datetime_to_ms(&dt("a"))
                .unwrap_err()
                .contains("no offset")
        );
        assert!(toml_datetime_to_ms(&dt("b")).is_err());
        assert_eq!(toml_datetime_to_ms(&dt("c")).unwrap(), 1_767_225_600_000);
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(ms in -62_135_596_800_000i64..253_402_300_799_999i64) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(ms)).unwrap(), ms);
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse_rfc3339(&s);
        }
    }
}
