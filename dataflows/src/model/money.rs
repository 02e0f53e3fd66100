//! Exact money: an integer count of 1/10,000 of the major unit.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Scale of [`Money`]: ten-thousandths of the major unit (cents and below).
const SCALE: i64 = 10_000;

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
    /// Outside the representable range.
    #[error("`{0}` is out of range")]
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

    /// Parses a decimal text such as `12`, `-3.5` or `0.0001`.
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
        let mut fraction: i64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        for _ in frac.len()..4 {
            fraction *= 10;
        }
        let value = whole.checked_mul(SCALE).and_then(|w| w.checked_add(fraction)).ok_or_else(range)?;
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
        // Exact for every amount below 2^53 ten-thousandths: the division is
        // correctly rounded and the shortest representation is printed.
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
                v.checked_mul(SCALE).map(Money).ok_or_else(|| E::custom(MoneyError::OutOfRange(v.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v).map_err(|_| E::custom(MoneyError::OutOfRange(v.to_string()))).and_then(|v| self.visit_i64(v))
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
        for (text, tt, shown) in [("12.34", 123_400, "12.34"), ("0", 0, "0"), ("-3.5", -35_000, "-3.5"), ("0.0001", 1, "0.0001"), ("7.10", 71_000, "7.1")] {
            let m = Money::parse(text).unwrap();
            assert_eq!(m.ten_thousandths(), tt, "{text}");
            assert_eq!(m.to_string(), shown);
        }
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(Money::parse("1.23456"), Err(MoneyError::TooPrecise(_))));
        assert!(matches!(Money::parse("abc"), Err(MoneyError::NotANumber(_))));
        assert!(matches!(Money::parse("1."), Err(MoneyError::NotANumber(_))));
        assert!(matches!(Money::parse(".5"), Err(MoneyError::NotANumber(_))));
        assert!(matches!(Money::parse("99999999999999999999"), Err(MoneyError::OutOfRange(_))));
    }

    #[test]
    fn json_number_and_string_agree() {
        let a: Money = serde_json::from_str("12.34").unwrap();
        let b: Money = serde_json::from_str("\"12.34\"").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "12.34");
        let sum: Money = [Money::parse("0.1").unwrap(), Money::parse("0.2").unwrap()].into_iter().sum();
        assert_eq!(serde_json::to_string(&sum).unwrap(), "0.3");
    }
}
