//! Calendar time without a date library: what recording names and HLS program date-times need.

/// Unix seconds → (year, month, day, hour, minute, second), proleptic Gregorian, UTC.
pub fn civil(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d, (secs / 3600) as u32, ((secs / 60) % 60) as u32, (secs % 60) as u32)
}

/// Unix milliseconds as RFC 3339 with milliseconds, UTC (`2026-12-05T22:33:00.123Z`): HLS's
/// EXT-X-PROGRAM-DATE-TIME.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", unix_ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_510_000_123), "2026-12-05T22:33:20.123Z");
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }
}
