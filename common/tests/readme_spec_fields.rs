//! Every key a job spec can set has an entry in the README's job-spec TOML block, and the
//! block names no key the spec does not have. The keys are asked of the code (the serde
//! derive of `JobSpec` and the tables under it), so a field added without documenting it
//! fails here.

use std::cell::Cell;
use std::collections::BTreeSet;

use feral_common::spec::JobSpec;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A `Deserializer` that walks down one path of keys (`["train", "loss"]`) through the spec's
/// tables and, at its end, records the fields of the table found there, if it is one. It
/// makes up no values: anything but a table (or an option or newtype around one) is an error,
/// which ends that walk.
#[derive(Clone, Copy)]
struct Probe<'a> {
    path: &'a [&'a str],
    table: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_struct<V: Visitor<'de>>(self, _name: &'static str, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        match self.path.split_first() {
            None => {
                self.table.set(Some(fields));
                Err(de::Error::custom("the end of the path"))
            }
            Some((key, rest)) => visitor.visit_map(OneEntry { key: Some(key), value: Probe { path: rest, table: self.table } }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("a value, not a table"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The map of a table with the one key the probe walks through.
struct OneEntry<'a> {
    key: Option<&'a str>,
    value: Probe<'a>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        self.key.take().map(|key| seed.deserialize(StrDeserializer::<Error>::new(key))).transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.value)
    }
}

/// The fields of the table at `path`, or `None` where `path` names a value.
fn table_fields(path: &[&str]) -> Option<&'static [&'static str]> {
    let table = Cell::new(None);
    // Always an error (the probe makes up no values); what it recorded on the way is the answer.
    let _ = JobSpec::deserialize(Probe { path, table: &table });
    table.get()
}

/// Every key a spec can set under `path`, as dotted paths (`train.loss.focal_gamma`).
fn spec_keys(path: &mut Vec<&'static str>, keys: &mut Vec<String>) {
    match table_fields(path) {
        Some(fields) => {
            for field in fields {
                path.push(*field);
                spec_keys(path, keys);
                path.pop();
            }
        }
        None => keys.push(path.join(".")),
    }
}

/// The keys of the README's job-spec TOML block, as dotted paths under their `[table]`: a
/// line `key = ...` or, for an optional field without a default, `# key = ...`.
fn readme_keys(readme: &str) -> BTreeSet<String> {
    let block = readme.split_once("A job spec (`job.toml`").expect("the README introduces the job spec").1;
    let block = block.split_once("```toml\n").expect("a TOML block follows").1;
    let block = block.split_once("```").expect("the TOML block ends").0;
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in block.lines() {
        if let Some(header) = line.strip_prefix('[') {
            table = header.split_once(']').expect("a table header ends with `]`").0.to_owned();
            continue;
        }
        let line = line.strip_prefix("# ").unwrap_or(line);
        let Some((key, _)) = line.split_once(" =") else { continue };
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            keys.insert(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") });
        }
    }
    keys
}

#[test]
fn every_spec_field_has_a_readme_entry() {
    let mut keys = Vec::new();
    spec_keys(&mut Vec::new(), &mut keys);
    assert!(keys.len() > 40, "found only {} spec keys, so the probe no longer sees the spec's tables: {keys:?}", keys.len());
    assert!(keys.iter().any(|key| key == "train.loss.focal_gamma"), "nested tables are walked: {keys:?}");

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let documented = readme_keys(&readme);
    let undocumented: Vec<&String> = keys.iter().filter(|key| !documented.contains(*key)).collect();
    let unknown: Vec<&String> = documented.iter().filter(|key| !keys.contains(key)).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README.md's job-spec block (after \"A job spec (`job.toml`\") is out of date.\n\
         spec fields without a `key = default` (or `# key = example`) line under their [table]: {undocumented:?}\n\
         keys it documents that the spec does not have: {unknown:?}"
    );
}
