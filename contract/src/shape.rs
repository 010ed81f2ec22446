//! A cheap first pass over JSON from someone we do not trust: how deep it nests and how many
//! values it holds, counted without building anything (strings are borrowed or skipped), so that
//! a document of a few MiB with hundreds of thousands of keys is refused in milliseconds and
//! without the gigabyte its parsed tree would take.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// How complex a document may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Deepest nesting of arrays and objects (the top level is depth 1).
    pub max_depth: usize,
    /// Most values in all (every scalar, array, object and object key counts one).
    pub max_values: usize,
}

impl ShapeLimits {
    /// The limits every envelope and request is held to: 64 levels, 200,000 values. Real
    /// envelopes are far inside both (an EnergyPlus output with thousands of messages holds a
    /// few tens of thousands of values).
    pub const DEFAULT: Self = Self {
        max_depth: 64,
        max_values: 200_000,
    };
}

/// Why a document was refused by [`check_shape`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// It nests deeper than allowed.
    #[error("nests deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// It holds more values than allowed.
    #[error("holds more than {limit} values (keys included)")]
    TooManyValues {
        /// The limit.
        limit: usize,
    },
    /// It is not JSON.
    #[error("is not JSON: {0}")]
    Syntax(String),
}

/// Checks that `bytes` is one JSON document within `limits`.
pub fn check_shape(bytes: &[u8], limits: ShapeLimits) -> Result<(), ShapeError> {
    let mut budget = Budget {
        limits,
        values: 0,
        refused: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk {
        depth: 1,
        budget: &mut budget,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, budget.refused) {
        (_, Some(refused)) => Err(refused),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(ShapeError::Syntax(e.to_string())),
    }
}

struct Budget {
    limits: ShapeLimits,
    values: usize,
    refused: Option<ShapeError>,
}

impl Budget {
    /// Counts one value; `depth` is the nesting of a container, `None` for a scalar or a key.
    fn count<E: de::Error>(&mut self, depth: Option<usize>) -> Result<(), E> {
        self.values += 1;
        let refused = if depth.is_some_and(|d| d > self.limits.max_depth) {
            ShapeError::TooDeep {
                limit: self.limits.max_depth,
            }
        } else if self.values > self.limits.max_values {
            ShapeError::TooManyValues {
                limit: self.limits.max_values,
            }
        } else {
            return Ok(());
        };
        let message = refused.to_string();
        self.refused = Some(refused);
        Err(E::custom(message))
    }
}

/// One value at `depth`, visited and forgotten.
struct Walk<'b> {
    depth: usize,
    budget: &'b mut Budget,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> {
            self.budget.count(None)
        })*
    };
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    scalar!(
        visit_bool: bool,
        visit_i64: i64,
        visit_u64: u64,
        visit_f64: f64,
        visit_str: &str,
        visit_borrowed_str: &'de str,
    );

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.budget.count(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.budget.count(Some(self.depth))?;
        while seq
            .next_element_seed(Walk {
                depth: self.depth + 1,
                budget: &mut *self.budget,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.budget.count(Some(self.depth))?;
        while map
            .next_key_seed(Walk {
                depth: self.depth + 1,
                budget: &mut *self.budget,
            })?
            .is_some()
        {
            map.next_value_seed(Walk {
                depth: self.depth + 1,
                budget: &mut *self.budget,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIGHT: ShapeLimits = ShapeLimits {
        max_depth: 3,
        max_values: 10,
    };

    #[test]
    fn counts_values_and_depth() {
        assert_eq!(check_shape(br#"{"a": [1, 2, {"b": null}]}"#, TIGHT), Ok(()));
        assert_eq!(
            check_shape(br#"[[[[1]]]]"#, TIGHT),
            Err(ShapeError::TooDeep { limit: 3 })
        );
        assert_eq!(
            check_shape(br#"[1,2,3,4,5,6,7,8,9,10]"#, TIGHT),
            Err(ShapeError::TooManyValues { limit: 10 })
        );
        let keys = format!(
            "{{{}}}",
            (0..6)
                .map(|i| format!("\"k{i}\": 0"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            check_shape(keys.as_bytes(), TIGHT),
            Err(ShapeError::TooManyValues { limit: 10 }),
            "keys count"
        );
        assert!(matches!(
            check_shape(b"{\"a\": ", TIGHT),
            Err(ShapeError::Syntax(_))
        ));
        assert!(matches!(
            check_shape(b"[] []", TIGHT),
            Err(ShapeError::Syntax(_))
        ));
        assert_eq!(
            check_shape(br#""a \"quoted\" string with \u00e9scapes""#, TIGHT),
            Ok(())
        );
    }

    #[test]
    fn a_huge_flat_object_is_refused_quickly() {
        let mut doc = String::from("{");
        for i in 0..850_000 {
            if i > 0 {
                doc.push(',');
            }
            doc.push_str(&format!("\"k{i}\":1"));
        }
        doc.push('}');
        assert_eq!(
            check_shape(doc.as_bytes(), ShapeLimits::DEFAULT),
            Err(ShapeError::TooManyValues { limit: 200_000 })
        );
    }
}
