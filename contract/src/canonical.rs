//! RFC 8785 (JCS) canonical JSON and the `input_envelope_sha256` binding.
//!
//! Implemented here rather than taken from a crate because the digest must equal
//! validibot-shared's byte for byte, and validibot-shared writes integers as their exact decimal
//! literal (RFC 8785 §3.2.2.3's advice for integers beyond 2^53), whereas the Rust JCS crates
//! route every integer through `f64` and change such values. Floats use ECMAScript's
//! `Number.prototype.toString` form (via `ryu-js`), object keys are sorted by UTF-16 code
//! units, and strings escape only `"`, `\` and the C0 controls.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::values::{Sha256Hex, commitment_of};

const NONCE_FIELD: &str = "callback_nonce";
const COMMITMENT_FIELD: &str = "callback_nonce_commitment";

/// Why a value could not be canonicalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The value could not be represented as JSON (e.g. a non-finite float).
    #[error("value is not representable as JSON: {0}")]
    NotJson(String),
    /// A `callback_nonce` that is not a non-empty string.
    #[error("callback_nonce must be a non-empty string before canonicalization")]
    BadNonce,
    /// A declared `callback_nonce_commitment` that does not match its nonce.
    #[error("callback_nonce_commitment does not match callback_nonce")]
    CommitmentMismatch,
}

/// Writes `value` as RFC 8785 canonical JSON.
pub fn canonicalize(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value);
    out
}

/// Replaces every `callback_nonce` (at any depth) by its public commitment, exactly as
/// validibot-shared's `canonicalize_dict` does: the raw key is dropped, a `null` nonce adds
/// nothing, and a declared commitment must match the nonce.
pub fn commit_callback_nonces(value: Value) -> Result<Value, CanonicalError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(commit_callback_nonces)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(mut map) => {
            let raw_nonce = map.remove(NONCE_FIELD);
            let mut out = serde_json::Map::with_capacity(map.len() + 1);
            for (key, item) in map {
                out.insert(key, commit_callback_nonces(item)?);
            }
            match raw_nonce {
                None | Some(Value::Null) => {}
                Some(Value::String(nonce)) if !nonce.is_empty() => {
                    let expected = commitment_of(&nonce);
                    match out.get(COMMITMENT_FIELD) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(declared))
                            if Sha256Hex::parse(declared.clone())
                                .is_ok_and(|d| d.ct_eq(&expected)) => {}
                        Some(_) => return Err(CanonicalError::CommitmentMismatch),
                    }
                    out.insert(COMMITMENT_FIELD.to_owned(), Value::String(expected.into()));
                }
                Some(_) => return Err(CanonicalError::BadNonce),
            }
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

/// The SHA-256 of `value`'s canonical JSON after committing its nonces: the digest
/// validibot-shared's `sha256_hex_for_model` computes for the same data.
pub fn sha256_of<T: Serialize>(value: &T) -> Result<Sha256Hex, CanonicalError> {
    let json = serde_json::to_value(value).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    let committed = commit_callback_nonces(json)?;
    Ok(Sha256Hex::from_bytes(
        Sha256::digest(canonicalize(&committed)).into(),
    ))
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(u) = n.as_u64() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(f) = n.as_f64() {
        // serde_json never holds a non-finite f64, so format_finite's precondition holds.
        let mut buffer = ryu_js::Buffer::new();
        out.extend_from_slice(buffer.format_finite(f).as_bytes());
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jcs(v: &Value) -> String {
        String::from_utf8(canonicalize(v)).expect("utf-8")
    }

    /// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical form (also what
    /// validibot-shared's vendored JCS prints for them).
    #[test]
    fn rfc8785_number_vectors() {
        let cases: &[(u64, &str)] = &[
            (0x0000_0000_0000_0000, "0"),
            (0x8000_0000_0000_0000, "0"),
            (0x0000_0000_0000_0001, "5e-324"),
            (0x8000_0000_0000_0001, "-5e-324"),
            (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
            (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
            (0x4340_0000_0000_0000, "9007199254740992"),
            (0xc340_0000_0000_0000, "-9007199254740992"),
            (0x4430_0000_0000_0000, "295147905179352830000"),
            (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
            (0x44b5_2d02_c7e1_4af6, "1e+23"),
            (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
            (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
            (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
            (0x444b_1ae4_d6e2_ef50, "1e+21"),
            (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
            (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
            (0x41b3_de43_5555_5553, "333333333.3333332"),
            (0x41b3_de43_5555_5554, "333333333.33333325"),
            (0x41b3_de43_5555_5555, "333333333.3333333"),
            (0x41b3_de43_5555_5556, "333333333.3333334"),
            (0x41b3_de43_5555_5557, "333333333.33333343"),
            (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
            (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
        ];
        for (bits, expected) in cases {
            let f = f64::from_bits(*bits);
            assert_eq!(jcs(&json!(f)), *expected, "{bits:016x}");
        }
    }

    #[test]
    fn integers_are_exact_like_validibot() {
        assert_eq!(jcs(&json!(9_007_199_254_740_993_u64)), "9007199254740993");
        assert_eq!(jcs(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(jcs(&json!(u64::MAX)), "18446744073709551615");
    }

    /// RFC 8785 §3.2.3 sorting example: keys ordered by UTF-16 code units.
    #[test]
    fn rfc8785_key_order_and_strings() {
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .expect("json");
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(jcs(&v), expected);
        assert_eq!(
            jcs(&json!("\u{1}\u{1f}\u{7f}\u{2028}\"\\/\u{8}\u{c}")),
            "\"\\u0001\\u001f\u{7f}\u{2028}\\\"\\\\/\\b\\f\""
        );
    }

    #[test]
    fn rfc8785_structure_example() {
        let v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals": [null, true, false]}"#,
        )
        .expect("json");
        assert_eq!(
            jcs(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn nonces_become_commitments_at_any_depth() {
        let nonce = "n".repeat(43);
        let commitment = commitment_of(&nonce).to_string();
        let raw = json!({"context": {"callback_nonce": nonce, "x": 1}, "list": [{"callback_nonce": null}]});
        let committed = commit_callback_nonces(raw).expect("commit");
        assert_eq!(
            committed,
            json!({"context": {"callback_nonce_commitment": commitment, "x": 1}, "list": [{}]})
        );
        // The live-secret form and the redacted form canonicalize identically.
        let redacted =
            json!({"context": {"callback_nonce_commitment": commitment, "x": 1}, "list": [{}]});
        assert_eq!(
            canonicalize(&commit_callback_nonces(redacted).expect("commit")),
            canonicalize(&committed)
        );
        let mismatched =
            json!({"callback_nonce": nonce, "callback_nonce_commitment": "0".repeat(64)});
        assert_eq!(
            commit_callback_nonces(mismatched),
            Err(CanonicalError::CommitmentMismatch)
        );
        assert_eq!(
            commit_callback_nonces(json!({"callback_nonce": 5})),
            Err(CanonicalError::BadNonce)
        );
    }
}
