//! Typed bodies with an upstream's extra fields merged in, written in one pass: the gateway's own
//! fields first, then those of the upstream it does not set. An upstream's field never replaces
//! one of the gateway's, but fills one the gateway leaves null (`logprobs`, a tool call's
//! `content`). A real upstream sends such fields with every answer (`system_fingerprint`,
//! `refusal`), so this runs for most responses; it replaces building and re-reading a JSON tree.

use serde::Serialize;
use serde::ser::{self, Impossible, SerializeMap, SerializeStruct, Serializer};
use tokio_prompt_orchestrator::Extra;

/// `own` (a struct) with `extra`'s fields merged in; exactly `own` when there are none.
pub struct Grafted<'a, T> {
    pub own: T,
    pub extra: Option<&'a Extra>,
}

impl<T: Serialize> Serialize for Grafted<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.extra {
            Some(extra) if !extra.is_empty() => self.own.serialize(Merging { serializer, extra }),
            _ => self.own.serialize(serializer),
        }
    }
}

/// Writes a struct as a map, with the extra fields after its own.
struct Merging<'a, S> {
    serializer: S,
    extra: &'a Extra,
}

/// A struct being written by [`Merging`].
struct MergingStruct<'a, M> {
    map: M,
    extra: &'a Extra,
    /// Keys of `extra` that the struct wrote itself (not null): not written again.
    shadowed: Vec<&'static str>,
}

impl<M: SerializeMap> SerializeStruct for MergingStruct<'_, M> {
    type Ok = M::Ok;
    type Error = M::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), M::Error> {
        if self.extra.contains_key(key) {
            // A collision is rare (a null the upstream fills, or a field it must not replace):
            // only then is the value looked at.
            if serde_json::to_value(value).is_ok_and(|v| v.is_null()) {
                return Ok(());
            }
            self.shadowed.push(key);
        }
        self.map.serialize_entry(key, value)
    }

    fn end(mut self) -> Result<M::Ok, M::Error> {
        for (key, value) in self.extra {
            if !self.shadowed.contains(&key.as_str()) {
                self.map.serialize_entry(key, value)?;
            }
        }
        self.map.end()
    }
}

/// Only structs take extra fields; anything else is a mistake in the caller's types.
fn not_a_struct<E: ser::Error>() -> E {
    E::custom("only a struct can have an upstream's fields merged in")
}

impl<'a, S: Serializer> Serializer for Merging<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Impossible<S::Ok, S::Error>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = MergingStruct<'a, S::SerializeMap>;
    type SerializeStructVariant = Impossible<S::Ok, S::Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, S::Error> {
        Ok(MergingStruct {
            // How many fields is not known until both sides are written.
            map: self.serializer.serialize_map(None)?,
            extra: self.extra,
            shadowed: Vec::new(),
        })
    }

    fn serialize_bool(self, _: bool) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_i8(self, _: i8) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_i16(self, _: i16) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_i32(self, _: i32) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_i64(self, _: i64) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_u8(self, _: u8) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_u16(self, _: u16) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_u32(self, _: u32) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_u64(self, _: u64) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_f32(self, _: f32) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_f64(self, _: f64) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_char(self, _: char) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_str(self, _: &str) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(not_a_struct())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Err(not_a_struct())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Serialize)]
    struct Own {
        id: u32,
        logprobs: Option<()>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<u32>,
    }

    fn grafted(extra: serde_json::Value) -> String {
        let extra = extra.as_object().unwrap().clone();
        let own = Own {
            id: 1,
            logprobs: None,
            usage: None,
        };
        serde_json::to_string(&Grafted {
            own,
            extra: Some(&extra),
        })
        .unwrap()
    }

    #[test]
    fn extra_fields_follow_the_own_ones_fill_nulls_and_never_replace() {
        assert_eq!(grafted(json!({})), r#"{"id":1,"logprobs":null}"#);
        assert_eq!(
            grafted(json!({"system_fingerprint": "fp", "id": 9, "logprobs": {"content": []}, "usage": 3})),
            r#"{"id":1,"logprobs":{"content":[]},"system_fingerprint":"fp","usage":3}"#
        );
    }

    #[test]
    fn only_structs_take_extra_fields() {
        let extra = json!({"a": 1}).as_object().unwrap().clone();
        let error = serde_json::to_string(&Grafted {
            own: 5,
            extra: Some(&extra),
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "only a struct can have an upstream's fields merged in"
        );
    }
}
