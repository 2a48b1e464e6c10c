//! The calendar day as text (YYYY-MM-DD), the one form plans, the station's
//! fetch, the command line and the tests write a day in.

use time::Date;

pub const DAY_FORMAT: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// Parses YYYY-MM-DD, naming what was wrong.
pub fn parse_day(text: &str) -> Result<Date, String> {
    Date::parse(text, DAY_FORMAT).map_err(|e| format!("{text:?} is not a date as YYYY-MM-DD ({e})"))
}

/// YYYY-MM-DD.
pub fn day_text(day: Date) -> String {
    day.format(DAY_FORMAT).expect("a date always formats")
}

/// Today in UTC, `days` later (negative: earlier), as YYYY-MM-DD.
pub fn utc_day_text(days: i64) -> String {
    day_text(time::OffsetDateTime::now_utc().date() + time::Duration::days(days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let day = parse_day("2030-01-05").unwrap();
        assert_eq!(day_text(day), "2030-01-05");
        assert!(parse_day("2030-1-5").unwrap_err().contains("YYYY-MM-DD"));
        assert_eq!(
            parse_day(&utc_day_text(1)).unwrap(),
            time::OffsetDateTime::now_utc().date() + time::Duration::days(1)
        );
    }
}
