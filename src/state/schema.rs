//! Schema versions of the volume records in sled: what each version looks like, and the steps
//! that bring an older record up to the version this build writes. A plugin upgrade keeps the
//! state directory, so every record an earlier build wrote must still be read by a later one;
//! a record written by a *later* build is refused (never guessed at, never overwritten).
//!
//! Versions (the `schema` field of the stored JSON object):
//!
//! - **0**: no `schema` field: every build before records were versioned (plugin 0.1.0 and
//!   earlier). The oldest of them also stored the parsed `options` next to `raw_options`, and
//!   secret values (password, passphrase) in `raw_options` instead of the secret files.
//! - **1**: `schema: 1`; no parsed `options`; secret values only in the volume's secret file
//!   (`secret_options` names them). Fields are those of [`super::VolumeRecord`].
//!
//! Every version keeps `name`, `dir` and `created_at` with the same meaning, so that even a
//! build that cannot read a newer record whole can still list it and say what to do.
//!
//! A step here only reshapes the JSON. Moving secret values out of `raw_options` needs the
//! secret files: `Store::open` does it by writing every record older than [`CURRENT`] back
//! (its `put` moves them), after which the record is stored as [`CURRENT`].

use serde::Serialize;
use serde_json::{Map, Value};

use super::VolumeRecord;

/// The version this build writes, and the newest it reads.
pub const CURRENT: u32 = 1;

/// Name of the version field in a stored record.
const FIELD: &str = "schema";

/// Why a stored record cannot be brought to [`CURRENT`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Written by a later build, whose format this one does not know.
    Newer(u32),
    /// Not a JSON object with a numeric version: damaged.
    Damaged(String),
}

/// Steps from version `n` to `n + 1`, at index `n`.
const STEPS: [fn(&mut Map<String, Value>); CURRENT as usize] = [v0_to_v1];

/// 0 -> 1: the parsed `options` copy is dropped (options are always re-parsed from
/// `raw_options`, so that a newer parser validates them).
fn v0_to_v1(rec: &mut Map<String, Value>) {
    rec.remove("options");
}

/// The record's version (0 when it has none).
pub fn version_of(value: &Value) -> Result<u32, Refused> {
    let obj = value
        .as_object()
        .ok_or_else(|| Refused::Damaged("the record is not a JSON object".into()))?;
    match obj.get(FIELD) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Refused::Damaged(format!("its schema version {v} is not a number"))),
    }
}

/// Brings a stored record to [`CURRENT`] in place; returns the version it had.
pub fn upgrade(value: &mut Value) -> Result<u32, Refused> {
    let from = version_of(value)?;
    if from > CURRENT {
        return Err(Refused::Newer(from));
    }
    let obj = value
        .as_object_mut()
        .expect("version_of checked it is an object");
    for step in &STEPS[from as usize..] {
        step(obj);
    }
    obj.insert(FIELD.into(), Value::from(CURRENT));
    Ok(from)
}

/// What goes into sled: the record, tagged with [`CURRENT`].
#[derive(Serialize)]
struct Stored<'a> {
    schema: u32,
    #[serde(flatten)]
    record: &'a VolumeRecord,
}

pub fn encode(record: &VolumeRecord) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Stored {
        schema: CURRENT,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unversioned_records_are_version_0_and_lose_the_parsed_options() {
        let mut v = json!({"name": "a", "dir": "a", "created_at": "x", "raw_options": {},
                           "options": {"remote": "u@h"}});
        assert_eq!(upgrade(&mut v), Ok(0));
        assert_eq!(v["schema"], json!(CURRENT));
        assert!(v.get("options").is_none(), "{v}");
        assert_eq!(v["name"], "a");
    }

    #[test]
    fn current_records_pass_unchanged() {
        let mut v = json!({"schema": CURRENT, "name": "a", "dir": "a", "raw_options": {"k": "v"}});
        let before = v.clone();
        assert_eq!(upgrade(&mut v), Ok(CURRENT));
        assert_eq!(v, before);
    }

    #[test]
    fn newer_and_damaged_versions_are_refused_untouched() {
        let mut v = json!({"schema": CURRENT + 1, "name": "a", "options": 1});
        let before = v.clone();
        assert_eq!(upgrade(&mut v), Err(Refused::Newer(CURRENT + 1)));
        assert_eq!(v, before);
        for bad in [json!({"schema": "1"}), json!({"schema": -1}), json!([1])] {
            assert!(
                matches!(upgrade(&mut bad.clone()), Err(Refused::Damaged(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn encoded_records_carry_the_current_version() {
        let rec = VolumeRecord::new("v", "v".into(), "t".into(), Default::default());
        let v: Value = serde_json::from_slice(&encode(&rec).unwrap()).unwrap();
        assert_eq!(version_of(&v), Ok(CURRENT));
        assert_eq!(v["name"], "v");
    }
}
