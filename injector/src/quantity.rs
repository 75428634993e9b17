//! Kubernetes resource quantities (`10m`, `20Mi`, `1.5`, `1e3`): syntax checking, so that a bad
//! annotation is denied by the injector with its name rather than by the API server later, and a
//! numeric value so that a request above its limit is caught too.

/// Parses a non-negative quantity in the Kubernetes syntax and returns its value in base units.
/// Returns `None` when the text is not a quantity.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let number_end = text
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+'))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(number_end);
    let digits = number.strip_prefix('+').unwrap_or(number);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 || digits.contains('+')
    {
        return None;
    }
    let value: f64 = digits.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let rest = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let unsigned = rest
                .strip_prefix('-')
                .or_else(|| rest.strip_prefix('+'))
                .unwrap_or(rest);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let power: i32 = rest.parse().ok()?;
            10f64.powi(power)
        }
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_kubernetes_forms() {
        assert_eq!(parse("10m"), Some(0.01));
        assert_eq!(parse("20Mi"), Some(20.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("+2k"), Some(2000.0));
        assert_eq!(parse("1E-3"), Some(0.001));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "", "abc", "10 m", "-1", "1.2.3", "10mb", "Mi", "1e", "1e+", ".",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
