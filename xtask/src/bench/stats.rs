//! Medians and the number formats of the results tables.

/// The median of `values` (the mean of the middle two for an even count); None if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// (min, max) of `values`; None if empty.
pub fn range(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// A ratio to a baseline as `1.004` (three decimals: the noise here is about ±1%).
pub fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// An optional number with `decimals` places, or `–` when missing.
pub fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

/// A ratio as the slowdown it means: `+0.4%`, `-1.2%`.
pub fn slowdown(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".into(), |r| format!("{:+.1}%", (r - 1.0) * 100.0))
}

/// KiB as MiB with one decimal.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn formats_ratios_and_sizes() {
        assert_eq!(slowdown(ratio(Some(1.0123), Some(1.0))), "+1.2%");
        assert_eq!(slowdown(ratio(Some(0.99), Some(1.0))), "-1.0%");
        assert_eq!(slowdown(ratio(Some(1.0), None)), "–");
        assert_eq!(mib(Some(1536)), "1.5 MiB");
        assert_eq!(fmt(None, 2), "–");
        assert_eq!(range(&[2.0, 1.0, 3.0]), Some((1.0, 3.0)));
    }
}
