//! Exact money: an integer count of 1/10,000 of the major unit.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Scale of [`Money`]: ten-thousandths of the major unit (cents and below).
const SCALE: i64 = 10_000;

/// Largest amount accepted, in ten-thousandths: 2^39 major units less one
/// ten-thousandth (549,755,813,887.9999). Up to it a JSON number (a double to
/// most readers, and to serde_json) holds every amount of four decimals
/// exactly: doubles below 2^39 are less than 0.0001 apart, so each amount
/// has a double of its own, whose shortest text is the amount. Above it two
/// amounts can share a double (900719925474.0993 reads back as …0992).
pub const MAX_TEN_THOUSANDTHS: i64 = (1 << 39) * SCALE - 1;

/// An exact amount of money in the major units the input used (e.g. `12.34`),
/// held as ten-thousandths so that sums never round.
///
/// Crosses JSON as a number (`12.34`) and is read from a number or a decimal
/// string (`"12.34"`); more than four decimals is an error, not a rounding.
/// Binary formats (checkpoints: `bincode`) hold the integer itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a text is not an amount of money.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number.
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    /// More than four decimal places.
    #[error("`{0}` has more than 4 decimal places")]
    TooPrecise(String),
    /// Beyond ±549,755,813,887.9999 (see [`MAX_TEN_THOUSANDTHS`]).
    #[error("`{0}` is beyond ±549755813887.9999, the largest amount a JSON number holds exactly")]
    OutOfRange(String),
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// From ten-thousandths of the major unit.
    pub fn from_ten_thousandths(value: i64) -> Money {
        Money(value)
    }

    /// From whole minor units with two decimals (cents).
    pub fn from_cents(cents: i64) -> Money {
        Money(cents * 100)
    }

    /// The amount in ten-thousandths of the major unit.
    pub fn ten_thousandths(self) -> i64 {
        self.0
    }

    /// The amount in major units as a float, for display and JSON only.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }

    /// True when below zero.
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// `self × qty`, or `None` on overflow.
    pub fn checked_mul(self, qty: i64) -> Option<Money> {
        self.0.checked_mul(qty).map(Money)
    }

    /// Parses a JSON number's text exactly, exponent included (`1.5e3`):
    /// the digits are read as written, never through a float.
    pub fn parse_json_number(text: &str) -> Result<Money, MoneyError> {
        let Some(at) = text.find(['e', 'E']) else {
            return Money::parse(text);
        };
        let bad = || MoneyError::NotANumber(text.to_owned());
        let (mantissa, exponent) = (&text[..at], &text[at + 1..]);
        let exponent: i32 = exponent
            .strip_prefix('+')
            .unwrap_or(exponent)
            .parse()
            .map_err(|_| bad())?;
        let (sign, digits) = match mantissa.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", mantissa),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        // Move the point `exponent` places; beyond ±40 no amount of four decimals fits.
        if exponent.abs() > 40 {
            return Err(if exponent > 0 {
                MoneyError::OutOfRange(text.to_owned())
            } else {
                MoneyError::TooPrecise(text.to_owned())
            });
        }
        let all = format!("{whole}{frac}");
        let point = whole.len() as i32 + exponent;
        let shifted = if point <= 0 {
            format!("0.{}{all}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= all.len() {
            format!("{all}{}", "0".repeat(point as usize - all.len()))
        } else {
            format!("{}.{}", &all[..point as usize], &all[point as usize..])
        };
        let trimmed = shifted.trim_start_matches('0');
        let shifted = if trimmed.is_empty() || trimmed.starts_with('.') {
            format!("0{trimmed}")
        } else {
            trimmed.to_owned()
        };
        Money::parse(&format!("{sign}{shifted}")).map_err(|error| match error {
            MoneyError::TooPrecise(_) => MoneyError::TooPrecise(text.to_owned()),
            MoneyError::OutOfRange(_) => MoneyError::OutOfRange(text.to_owned()),
            MoneyError::NotANumber(_) => bad(),
        })
    }

    /// Parses a decimal text such as `12`, `-3.5` or `0.0001`; at most four
    /// decimals and at most ±[`MAX_TEN_THOUSANDTHS`].
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let bad = || MoneyError::NotANumber(text.to_owned());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (digits.contains('.') && frac.is_empty()) {
            return Err(bad());
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 4 {
            return Err(MoneyError::TooPrecise(text.to_owned()));
        }
        let range = || MoneyError::OutOfRange(text.to_owned());
        let whole: i64 = whole.parse().map_err(|_| range())?;
        let mut fraction: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        for _ in frac.len()..4 {
            fraction *= 10;
        }
        let value = whole
            .checked_mul(SCALE)
            .and_then(|w| w.checked_add(fraction))
            .filter(|v| *v <= MAX_TEN_THOUSANDTHS)
            .ok_or_else(range)?;
        Ok(Money(if negative { -value } else { value }))
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Money(iter.map(|m| m.0).sum())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / SCALE as u64;
        let frac = abs % SCALE as u64;
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let frac = format!("{frac:04}");
            write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_i64(self.0);
        }
        // Exact for every amount read by `parse` (within MAX_TEN_THOUSANDTHS):
        // the division is correctly rounded, and the shortest text of the
        // double is the amount. Sums beyond it (KPIs) are shown rounded.
        serializer.serialize_f64(self.to_f64())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        if !deserializer.is_human_readable() {
            // Binary formats cannot tell a number from a string: the integer itself.
            return i64::deserialize(deserializer).map(Money);
        }
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number or decimal string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                v.checked_mul(SCALE)
                    .filter(|v| v.unsigned_abs() <= MAX_TEN_THOUSANDTHS as u64)
                    .map(Money)
                    .ok_or_else(|| E::custom(MoneyError::OutOfRange(v.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(MoneyError::OutOfRange(v.to_string())))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
                if !v.is_finite() {
                    return Err(E::custom(MoneyError::NotANumber(v.to_string())));
                }
                // The shortest text that reads back as `v` is what the producer wrote.
                Money::parse(&format_shortest(v)).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v.trim()).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Shortest round-trip decimal text of a float, without exponent.
fn format_shortest(v: f64) -> String {
    let text = format!("{v}");
    if text.contains('e') || text.contains('E') {
        format!("{v:.4}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (text, tt, shown) in [
            ("12.34", 123_400, "12.34"),
            ("0", 0, "0"),
            ("-3.5", -35_000, "-3.5"),
            ("0.0001", 1, "0.0001"),
            ("7.10", 71_000, "7.1"),
        ] {
            let m = Money::parse(text).unwrap();
            assert_eq!(m.ten_thousandths(), tt, "{text}");
            assert_eq!(m.to_string(), shown);
        }
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            Money::parse("1.23456"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("abc"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(Money::parse("1."), Err(MoneyError::NotANumber(_))));
        assert!(matches!(Money::parse(".5"), Err(MoneyError::NotANumber(_))));
        assert!(matches!(
            Money::parse("99999999999999999999"),
            Err(MoneyError::OutOfRange(_))
        ));
    }

    #[test]
    fn json_numbers_are_read_exactly_or_refused() {
        for (text, tt) in [
            ("549755813887.9999", MAX_TEN_THOUSANDTHS),
            ("1.5e3", 15_000_000),
            ("125E-4", 125),
            ("-2e0", -20_000),
            ("0.5e1", 50_000),
        ] {
            assert_eq!(
                Money::parse_json_number(text).map(Money::ten_thousandths),
                Ok(tt),
                "{text}"
            );
        }
        assert!(matches!(
            Money::parse_json_number("900719925474.0993"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            Money::parse_json_number("1e-5"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse_json_number("1e99"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            Money::parse_json_number("1e"),
            Err(MoneyError::NotANumber(_))
        ));
        // Every amount up to the limit prints back as itself through a double.
        for tt in [
            MAX_TEN_THOUSANDTHS,
            MAX_TEN_THOUSANDTHS - 1,
            (1 << 39) * SCALE - 9_999,
            1_234_567_890_123_456,
        ] {
            let money = Money(tt);
            assert_eq!(
                serde_json::to_string(&money).unwrap(),
                money.to_string(),
                "{tt}"
            );
        }
    }

    #[test]
    fn json_number_and_string_agree() {
        let a: Money = serde_json::from_str("12.34").unwrap();
        let b: Money = serde_json::from_str("\"12.34\"").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "12.34");
        let sum: Money = [Money::parse("0.1").unwrap(), Money::parse("0.2").unwrap()]
            .into_iter()
            .sum();
        assert_eq!(serde_json::to_string(&sum).unwrap(), "0.3");
    }
}
