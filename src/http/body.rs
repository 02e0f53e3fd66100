//! JSON request bodies, read strictly: a key given twice in any object of
//! the body is refused (a 400 naming the key and where), never "last one
//! wins"; and the fields keep the exact text the client sent, so a number is
//! never turned into a float on its way to the decoder (money stays exact).

use super::error::ApiError;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The top-level fields of a JSON object body, each as the text sent.
pub(super) type Fields = BTreeMap<String, Box<RawValue>>;

/// Parses `body` as a JSON object whose objects, at every depth, name each
/// key once. `Err` is the 400 to answer.
pub(super) fn object(body: &[u8]) -> Result<Fields, ApiError> {
    let not_json =
        |error: serde_json::Error| ApiError::bad_request(format!("body: not JSON: {error}"));
    let mut reader = serde_json::Deserializer::from_slice(body);
    if let Err(error) = (Unique {
        path: String::new(),
    })
    .deserialize(&mut reader)
    {
        return Err(match error.classify() {
            serde_json::error::Category::Data => {
                ApiError::bad_request(format!("body: {}", without_position(&error)))
            }
            _ => not_json(error),
        });
    }
    reader.end().map_err(not_json)?;
    let value: Box<RawValue> = serde_json::from_slice(body).map_err(not_json)?;
    if !value.get().trim_start().starts_with('{') {
        return Err(ApiError::bad_request(format!(
            "body: expected a JSON object, got `{}`",
            shorten(value.get().trim())
        )));
    }
    serde_json::from_str(value.get()).map_err(not_json)
}

/// A field's value as JSON text (for fields the server adds).
pub(super) fn raw(value: impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(&value).expect("strings and numbers serialize")
}

/// True when the field is absent or `null`.
pub(super) fn is_absent(fields: &Fields, name: &str) -> bool {
    fields.get(name).is_none_or(|value| value.get() == "null")
}

/// The fields as JSON values, for handlers whose fields hold no amounts.
pub(super) fn values(fields: Fields) -> serde_json::Map<String, serde_json::Value> {
    fields
        .into_iter()
        .map(|(name, value)| {
            (
                name,
                serde_json::from_str(value.get()).expect("checked JSON reads back"),
            )
        })
        .collect()
}

/// `text` cut to 40 bytes (on a character boundary) with an ellipsis.
pub(super) fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        return text.to_owned();
    }
    let cut = (0..=40)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &text[..cut])
}

/// A serde error's message without serde_json's ` at line L column C`.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Walks one JSON value and fails on an object that repeats a key; `path`
/// names where the value is (`lines[0]`), empty at the top.
struct Unique {
    path: String,
}

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut index = 0;
        while items
            .next_element_seed(Unique {
                path: format!("{}[{index}]", self.path),
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                return Err(A::Error::custom(match self.path.is_empty() {
                    true => format!("field `{path}` given twice; give each field once"),
                    false => format!(
                        "field `{path}` given twice (in `{}`); give each field once",
                        self.path
                    ),
                }));
            }
            entries.next_value_seed(Unique { path })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(body: &str) -> String {
        object(body.as_bytes())
            .err()
            .map(|e| e.detail().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn a_key_twice_is_refused_at_any_depth() {
        assert_eq!(
            detail(r#"{"qty":1,"qty":999}"#),
            "body: field `qty` given twice; give each field once"
        );
        assert_eq!(
            detail(r#"{"lines":[{"sku":"A"},{"sku":"B","qty":1,"qty":2}]}"#),
            "body: field `lines[1].qty` given twice (in `lines[1]`); give each field once"
        );
        assert_eq!(
            detail(r#"{"stock":{"m":1,"m":2}}"#),
            "body: field `stock.m` given twice (in `stock`); give each field once"
        );
        assert!(
            object(br#"{"a":{"x":1},"b":{"x":1}}"#).is_ok(),
            "the same key in two objects is fine"
        );
    }

    #[test]
    fn numbers_keep_their_text() {
        let fields = object(br#"{"price": 900719925474.0993, "qty": 2}"#).unwrap();
        assert_eq!(fields["price"].get(), "900719925474.0993");
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"price":900719925474.0993,"qty":2}"#
        );
    }

    #[test]
    fn not_json_and_not_an_object() {
        assert!(
            detail("{not json").starts_with("body: not JSON"),
            "{}",
            detail("{not json")
        );
        assert!(detail("{} {}").starts_with("body: not JSON"));
        assert_eq!(detail("[1]"), "body: expected a JSON object, got `[1]`");
    }
}
