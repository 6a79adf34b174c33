//! Reading a JSON object whose unrecognised fields are kept aside (pass-through fields: a
//! request's as raw text in a [`RawExtra`], an answer's as values in an [`Extra`]), as
//! `#[serde(flatten)]` into a map would, without its cost: flatten first buffers every field of
//! the object (a whole `messages` or `choices` array included) as serde's generic content and
//! reads the struct again from that copy, and it cannot keep a field as raw text at all. Here
//! each field is read once, straight into its place.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::request::{Extra, RawExtra};

/// Where the fields an object does not take are kept, and as what.
pub trait Kept {
    type Value: DeserializeOwned;

    fn keep(&mut self, name: String, value: Self::Value);

    /// Whether `value` is [`empty`].
    fn says_nothing(value: &Self::Value) -> bool;
}

impl Kept for Extra {
    type Value = Value;

    fn keep(&mut self, name: String, value: Value) {
        self.insert(name, value);
    }

    fn says_nothing(value: &Value) -> bool {
        empty(value)
    }
}

impl Kept for RawExtra {
    type Value = Box<RawValue>;

    fn keep(&mut self, name: String, value: Box<RawValue>) {
        self.insert(name, value);
    }

    fn says_nothing(value: &Box<RawValue>) -> bool {
        let text = value.get();
        let inside = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
        text == "null" || inside.is_some_and(|t| t.trim().is_empty())
    }
}

/// An object read field by field; what [`field`](Fields::field) does not take goes to
/// [`extra`](Fields::extra) (see [`KEEPS_EMPTY`](Fields::KEEPS_EMPTY)).
pub trait Fields: Default {
    /// Where unrecognised fields go.
    type Extra: Kept;

    /// What the object is, for error messages ("an OpenAI answer").
    const EXPECTING: &'static str;

    /// Reads the value of `name` from `map` if the field is one of ours; `false` leaves it to be
    /// kept in [`extra`](Fields::extra).
    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error>;

    fn extra(&mut self) -> &mut Self::Extra;

    /// Whether unrecognised fields that are [`empty`] are kept (a request's are passed on as
    /// the client sent them; an answer's say nothing, and dropped as read they cost nothing).
    const KEEPS_EMPTY: bool = true;
}

/// Whether `value` says nothing: null or an empty list (`"logprobs": null`, `"tool_calls": []`).
pub fn empty(value: &Value) -> bool {
    value.is_null() || value.as_array().is_some_and(Vec::is_empty)
}

/// Reads a `T` from a JSON object.
pub fn read<'de, D: Deserializer<'de>, T: Fields>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// Implements `Deserialize` through [`extra::read`](read) for each [`Fields`] type named
/// (`read_fields!(Body, Choice)`). The calling crate needs `serde`.
#[macro_export]
macro_rules! read_fields {
    ($($t:ty),+ $(,)?) => {$(
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                $crate::extra::read(deserializer)
            }
        }
    )+};
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Fields> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut object = T::default();
        while let Some(Name(name)) = map.next_key()? {
            if object.field(&name, &mut map)? {
                continue;
            }
            let value = map.next_value()?;
            if T::KEEPS_EMPTY || !T::Extra::says_nothing(&value) {
                object.extra().keep(name.into_owned(), value);
            }
        }
        Ok(object)
    }
}

/// A field name, borrowed from the input unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Default)]
    struct Named {
        name: Option<String>,
        extra: Extra,
    }

    impl Fields for Named {
        type Extra = Extra;
        const EXPECTING: &'static str = "a named object";

        fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
            if name != "name" {
                return Ok(false);
            }
            self.name = map.next_value()?;
            Ok(true)
        }

        fn extra(&mut self) -> &mut Extra {
            &mut self.extra
        }
    }

    #[derive(Debug, Default)]
    struct Raw {
        extra: RawExtra,
    }

    impl Fields for Raw {
        type Extra = RawExtra;
        const EXPECTING: &'static str = "an object";

        fn field<'de, A: MapAccess<'de>>(&mut self, _: &str, _: &mut A) -> Result<bool, A::Error> {
            Ok(false)
        }

        fn extra(&mut self) -> &mut RawExtra {
            &mut self.extra
        }
    }

    crate::read_fields!(Named, Raw);

    #[test]
    fn raw_fields_are_kept_as_the_text_that_came() {
        let raw: Raw =
            serde_json::from_str(r#"{"tools": [0, 0,0], "format": {"type" : "json_object"}}"#).unwrap();
        assert_eq!(raw.extra["tools"].get(), "[0, 0,0]");
        assert_eq!(raw.extra["format"].get(), r#"{"type" : "json_object"}"#);
        assert_eq!(raw.extra.parsed("format"), Some(json!({"type": "json_object"})));
        assert!(RawExtra::says_nothing(&crate::raw(&json!([]))));
        assert!(!RawExtra::says_nothing(&crate::raw(&json!([0]))));
    }

    #[test]
    fn known_fields_are_read_and_every_other_is_kept_as_it_came() {
        let named: Named =
            serde_json::from_str(r#"{"n\u0061me": "a", "tools": [{"x": 1}], "none": null, "list": []}"#)
                .unwrap();
        assert_eq!(named.name.as_deref(), Some("a"));
        assert_eq!(
            Value::Object(named.extra),
            json!({"tools": [{"x": 1}], "none": null, "list": []})
        );
    }

    #[test]
    fn a_value_that_is_not_an_object_is_an_error_naming_what_was_expected() {
        let error = serde_json::from_str::<Named>("[1]").unwrap_err().to_string();
        assert!(error.contains("expected a named object"), "{error}");
    }

    #[test]
    fn empty_values_are_null_and_empty_lists() {
        assert!(empty(&json!(null)) && empty(&json!([])));
        assert!(!empty(&json!({})) && !empty(&json!("")) && !empty(&json!([0])));
    }
}
