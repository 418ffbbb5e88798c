//! Integers in request bodies that also read a whole number written as a float (`370.0`): JSON
//! Schema counts it as an integer, so a client generated from the OpenAPI document may send it.
//! Anything else (`1.5`, a value out of the field's range) is refused as before.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// `#[serde(deserialize_with = "integer::whole")]`.
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
    Whole::deserialize(deserializer).map(|Whole(n)| n)
}

/// `#[serde(default, deserialize_with = "integer::optional")]` on an `Option<_>` field.
pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<Whole<T>>::deserialize(deserializer).map(|n| n.map(|Whole(n)| n))
}

struct Whole<T>(T);

impl<'de, T: TryFrom<i128>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeVisitor(PhantomData))
    }
}

struct WholeVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i128>> WholeVisitor<T> {
    fn fit<E: de::Error>(&self, n: i128, unexpected: Unexpected<'_>) -> Result<Whole<T>, E> {
        T::try_from(n)
            .map(Whole)
            .map_err(|_| E::invalid_value(unexpected, self))
    }
}

impl<T: TryFrom<i128>> Visitor<'_> for WholeVisitor<T> {
    type Value = Whole<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer ({})", std::any::type_name::<T>())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        self.fit(i128::from(n), Unexpected::Signed(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        self.fit(i128::from(n), Unexpected::Unsigned(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        // Every whole f64 below 2^63 in size converts exactly; larger ones fit no field here.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if n.fract() != 0.0 || !(-LIMIT..LIMIT).contains(&n) {
            return Err(E::invalid_value(Unexpected::Float(n), &self));
        }
        self.fit(n as i128, Unexpected::Float(n))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::whole")]
        count: u32,
        #[serde(default, deserialize_with = "super::optional")]
        delta: Option<i64>,
    }

    fn read(value: serde_json::Value) -> Result<Body, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn a_whole_number_reads_as_an_integer_however_it_is_written() {
        let body = read(json!({ "count": 370.0, "delta": -5.0 })).unwrap();
        assert_eq!((body.count, body.delta), (370, Some(-5)));
        let body = read(json!({ "count": 4_294_967_295_u32 })).unwrap();
        assert_eq!((body.count, body.delta), (u32::MAX, None));
        assert_eq!(
            read(json!({ "count": 0, "delta": null })).unwrap().delta,
            None
        );
        let body: Body = serde_json::from_str(r#"{"count": 1e3, "delta": -9.0e15}"#).unwrap();
        assert_eq!(
            (body.count, body.delta),
            (1000, Some(-9_000_000_000_000_000))
        );
    }

    #[test]
    fn fractions_values_out_of_range_and_other_types_are_refused() {
        for bad in [
            json!({ "count": 1.5 }),
            json!({ "count": -1 }),
            json!({ "count": -1.0 }),
            json!({ "count": 4_294_967_296_u64 }),
            json!({ "count": 1e300 }),
            json!({ "count": "3" }),
            json!({ "count": true }),
            json!({ "count": 1, "delta": 9_223_372_036_854_775_808_u64 }),
            json!({ "count": 1, "delta": 9.3e18 }),
        ] {
            assert!(read(bad.clone()).is_err(), "{bad}");
        }
        let error = read(json!({ "count": 2.5 })).unwrap_err().to_string();
        assert!(error.contains("expected an integer (u32)"), "{error}");
    }
}
