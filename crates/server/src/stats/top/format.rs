//! How `top` writes numbers: latencies, rates, counts and uptimes in the few columns a terminal
//! table has, with `-` for what was not measured.

/// A latency in milliseconds with three significant digits in the unit that reads best
/// (`4.00µs`, `1.23ms`, `140ms`, `2.1s`); `-` when nothing was timed.
pub fn latency(ms: Option<f64>) -> String {
    let Some(ms) = ms.filter(|ms| ms.is_finite() && *ms >= 0.0) else {
        return "-".into();
    };
    // The thresholds are where rounding would carry into a fourth digit (999.5µs is 1.00ms).
    if ms < 0.9995 {
        format!("{}µs", significant(ms * 1000.0))
    } else if ms < 999.5 {
        format!("{}ms", significant(ms))
    } else if ms < 99_950.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

/// Three significant digits for 0 <= `v` < 999.5.
fn significant(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A rate per second: one decimal below 1000 (`812.5`), none above (`12034`).
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        "-".into()
    } else if per_s < 999.95 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// A count in at most five columns: exact below 10,000, then `12.3k`, `4.56M`, `7.89G`.
pub fn count(n: u64) -> String {
    // Converted for display only: the precision lost above 2^53 does not show in 3 digits.
    let v = n as f64;
    if n < 10_000 {
        n.to_string()
    } else if v < 999_950.0 {
        format!("{}k", significant(v / 1e3))
    } else if v < 999_950_000.0 {
        format!("{}M", significant(v / 1e6))
    } else {
        format!("{}G", significant(v / 1e9))
    }
}

/// An uptime as its two largest units: `42s`, `5m07s`, `3h12m`, `4d05h`.
pub fn uptime(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_take_the_unit_that_reads_best() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(0.004)), "4.00µs");
        assert_eq!(latency(Some(0.05)), "50.0µs");
        assert_eq!(latency(Some(0.9999)), "1.00ms");
        assert_eq!(latency(Some(1.234)), "1.23ms");
        assert_eq!(latency(Some(14.2)), "14.2ms");
        assert_eq!(latency(Some(140.0)), "140ms");
        assert_eq!(latency(Some(999.7)), "1.0s");
        assert_eq!(latency(Some(2100.0)), "2.1s");
        assert_eq!(latency(Some(125_000.0)), "125s");
        assert_eq!(latency(Some(f64::NAN)), "-");
        assert_eq!(latency(Some(-1.0)), "-");
    }

    #[test]
    fn rates_and_counts_stay_narrow() {
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(812.46), "812.5");
        assert_eq!(rate(12_034.2), "12034");
        assert_eq!(count(9_999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(999_999), "1.00M");
        assert_eq!(count(4_560_000), "4.56M");
        assert_eq!(count(7_890_000_000), "7.89G");
    }

    #[test]
    fn uptimes_show_two_units() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(307), "5m07s");
        assert_eq!(uptime(3600 * 3 + 720), "3h12m");
        assert_eq!(uptime(86_400 * 4 + 3600 * 5 + 1), "4d05h");
    }
}
