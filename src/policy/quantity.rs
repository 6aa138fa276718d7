//! Kubernetes resource quantities ("500k", "10M", "2.5M", "1Gi", "1e6"), as
//! used by the `kubernetes.io/*-bandwidth` annotations, parsed exactly into
//! whole units (bits/s for rates, bits for bursts).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuantityError {}

/// Parses a non-negative quantity and rounds it up to a whole unit.
pub fn parse(input: &str) -> Result<u64, QuantityError> {
    let s = input.trim();
    let err = |why: &str| {
        QuantityError(format!(
            "{:?} is not a quantity ({why}); use a number with an optional suffix such as 500k, 10M, 2.5M, 1G or 1Gi",
            crate::cni::truncate(input, 40)
        ))
    };
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(err("it is negative"));
    }
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("it has no digits"));
    }
    if frac_part.contains('.') || int_part.len() + frac_part.len() > 30 {
        return Err(err("the number is malformed"));
    }
    // value = mantissa / 10^frac_digits * multiplier
    let mantissa: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| err("the number is malformed"))?;
    let mut den: u128 = 10u128.pow(frac_part.len() as u32);
    let multiplier: u128 = match suffix {
        "" => 1,
        "m" => {
            den *= 1000;
            1
        }
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| err("the exponent is malformed"))?;
            if exp > 20 {
                return Err(err("it is too large"));
            }
            10u128.pow(exp)
        }
        _ => return Err(err("the suffix is unknown")),
    };
    let num = mantissa.checked_mul(multiplier).ok_or_else(|| err("it is too large"))?;
    let value = num.div_ceil(den);
    u64::try_from(value).map_err(|_| err("it is too large"))
}

/// Formats bits/s the way people write them: 10M, 2.5M, 1G, 500k.
pub fn format_rate(bits: u64) -> String {
    for (div, suffix) in [(1_000_000_000u64, "G"), (1_000_000, "M"), (1_000, "k")] {
        if bits >= div {
            let v = bits as f64 / div as f64;
            return if (v - v.round()).abs() < 1e-9 {
                format!("{}{suffix}", v.round() as u64)
            } else {
                format!("{}{suffix}", format!("{v:.3}").trim_end_matches('0').trim_end_matches('.'))
            };
        }
    }
    bits.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_format_without_a_dangling_point() {
        assert_eq!(format_rate(10_000_200), "10M");
        assert_eq!(format_rate(9_998_000), "9.998M");
        assert_eq!(format_rate(2_500_000), "2.5M");
        assert_eq!(format_rate(50_000_000), "50M");
    }

    #[test]
    fn decimal_and_binary_suffixes() {
        assert_eq!(parse("500k").unwrap(), 500_000);
        assert_eq!(parse("10M").unwrap(), 10_000_000);
        assert_eq!(parse("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse("2.5M").unwrap(), 2_500_000);
        assert_eq!(parse("1Ki").unwrap(), 1024);
        assert_eq!(parse("123").unwrap(), 123);
        assert_eq!(parse(" +10M ").unwrap(), 10_000_000);
        assert_eq!(parse("1e6").unwrap(), 1_000_000);
        assert_eq!(parse("1.5E3").unwrap(), 1_500);
        assert_eq!(parse(".5k").unwrap(), 500);
        assert_eq!(parse("1500m").unwrap(), 2, "rounds up to a whole bit");
    }

    #[test]
    fn garbage_is_refused_with_the_input_named() {
        for bad in ["", "fast", "10MB", "-1M", "1.2.3M", "M", "1e99", "99999999999E", "10 M", "1x",
                    "999999999999999999999999999999E", "999999999999999999999999999999Ei", "99999999999999999999e20"] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.contains("is not a quantity"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_rates() {
        assert_eq!(format_rate(10_000_000), "10M");
        assert_eq!(format_rate(2_500_000), "2.5M");
        assert_eq!(format_rate(1_000_000_000), "1G");
        assert_eq!(format_rate(999), "999");
    }
}
