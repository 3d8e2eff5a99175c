//! Typed decoding of configuration tables that reports *all* unknown keys and the exact path
//! of a type error, located in the source file, instead of serde's first-error-wins.

use super::diagnostics::{Diagnostic, Diagnostics, did_you_mean};
use super::source::{KeyPath, SourceMap, dotted};
use serde::de::{self, DeserializeOwned, Visitor};

/// Decodes `value` (found at `path`) into `T`, pushing a diagnostic per unknown key and one
/// per key with a value of the wrong type (each bad key is taken out and decoding is tried
/// again, so every type error of a table is reported at once). Returns `None` when anything
/// was wrong.
pub fn decode<T: DeserializeOwned>(
    value: toml::Value,
    path: &[String],
    map: &SourceMap,
    diags: &mut Diagnostics,
) -> Option<T> {
    let fields = struct_fields::<T>();
    let mut unknown: Vec<String> = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let de = serde_ignored::Deserializer::new(value.clone(), &mut on_unknown);
    let mut result: Result<T, serde_path_to_error::Error<toml::de::Error>> =
        serde_path_to_error::deserialize(de);
    for key in &unknown {
        let mut full: KeyPath = path.to_vec();
        full.extend(key.split('.').map(String::from));
        let last = full.last().cloned().unwrap_or_default();
        let help = if key.contains('.') {
            None
        } else {
            did_you_mean(&last, fields.iter().copied())
        };
        let help = help.or_else(|| Some(format!("known keys here: {}", fields.join(", "))));
        diags.push(
            Diagnostic::new(map.locate(&full), "unknown key")
                .key(dotted(&full))
                .help_opt(help),
        );
    }
    let mut value = value;
    let mut removed: Vec<Vec<String>> = Vec::new();
    loop {
        let e = match result {
            Ok(v) if unknown.is_empty() && removed.is_empty() => return Some(v),
            Ok(_) => return None,
            Err(e) => e,
        };
        let rel: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = e.inner().message().trim().to_string();
        // A required key taken out after its own type error is not "missing" as well.
        let follows_removal = message.starts_with("missing field")
            && removed.iter().any(|r| {
                r.len() == rel.len() + 1
                    && r.starts_with(&rel)
                    && message.contains(&format!("`{}`", r[r.len() - 1]))
            });
        if !follows_removal {
            let mut full: KeyPath = path.to_vec();
            full.extend(rel.iter().cloned());
            diags.push(Diagnostic::new(map.locate(&full), message).key(dotted(&full)));
        }
        if rel.is_empty() || removed.len() >= 64 || !remove_at(&mut value, &rel) {
            return None;
        }
        removed.push(rel);
        result = serde_path_to_error::deserialize(value.clone());
    }
}

/// Removes the value at `rel` (table keys and array indices); whether it was there.
fn remove_at(value: &mut toml::Value, rel: &[String]) -> bool {
    let Some((last, parents)) = rel.split_last() else {
        return false;
    };
    let mut v = value;
    for seg in parents {
        v = match v {
            toml::Value::Table(t) => match t.get_mut(seg) {
                Some(next) => next,
                None => return false,
            },
            toml::Value::Array(items) => {
                match seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match v {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// The field names serde knows for struct `T` (empty for non-structs).
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct S {
        lr: f64,
        #[serde(default)]
        steps: u64,
    }

    #[test]
    fn reports_every_unknown_key_and_type_errors() {
        let v: toml::Value = toml::from_str("lrr = 1.0\nlr = 1.0\nstepz = 2\n").unwrap();
        let mut d = Diagnostics::default();
        assert!(decode::<S>(v, &["x".into()], &SourceMap::default(), &mut d).is_none());
        let text = d.to_string();
        assert_eq!(d.len(), 2, "{text}");
        assert!(
            text.contains("`x.lrr`") && text.contains("did you mean `lr`?"),
            "{text}"
        );
        assert!(
            text.contains("`x.stepz`") && text.contains("did you mean `steps`?"),
            "{text}"
        );

        let v: toml::Value = toml::from_str("lr = \"fast\"\n").unwrap();
        let mut d = Diagnostics::default();
        assert!(decode::<S>(v, &["x".into()], &SourceMap::default(), &mut d).is_none());
        assert!(d.to_string().contains("`x.lr`"), "{d}");
    }

    #[test]
    fn every_type_error_of_a_table_is_reported() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: u64,
            b: String,
            #[serde(default)]
            c: f64,
            d: bool,
        }
        let v: toml::Value = toml::from_str("a = \"x\"\nb = 3\nc = \"y\"\nd = true\n").unwrap();
        let mut d = Diagnostics::default();
        assert!(decode::<T>(v, &["s".into()], &SourceMap::default(), &mut d).is_none());
        let text = d.to_string();
        for key in ["`s.a`", "`s.b`", "`s.c`"] {
            assert!(text.contains(key), "{key} not reported:\n{text}");
        }
        assert!(!text.contains("missing field"), "{text}");
        assert_eq!(d.len(), 3, "{text}");
        // A key that is really missing is still reported.
        let v: toml::Value = toml::from_str("a = 1\nb = \"ok\"\n").unwrap();
        let mut d = Diagnostics::default();
        assert!(decode::<T>(v, &["s".into()], &SourceMap::default(), &mut d).is_none());
        assert!(d.to_string().contains("missing field `d`"), "{d}");
    }

    #[test]
    fn probes_field_names() {
        assert_eq!(struct_fields::<S>(), &["lr", "steps"]);
    }
}
