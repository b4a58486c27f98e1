//! Serde helpers shared by the dynamic-configuration model.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A map of names to definitions that refuses a name given twice (serde_json would
/// silently keep the last one) and reads an empty YAML value (`routers:`) as empty.
pub(super) fn unique_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Vis<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names to definitions")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format!("name {key:?} is defined twice")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(Vis(PhantomData))
}

/// A string that YAML or TOML may have written as a number or boolean (`port: 443`,
/// `X-Port: 8080`); Traefik's own decoder accepts those for string fields.
struct Lenient(String);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient, E> {
                Ok(Lenient(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lenient, E> {
                Ok(Lenient(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Lenient, E> {
                Ok(Lenient(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lenient, E> {
                Ok(Lenient(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `Option<String>` accepting numbers and booleans as their text.
pub(super) fn lenient_opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Lenient>::deserialize(deserializer)?.map(|l| l.0))
}

/// A header map whose values may have been written as numbers or booleans.
pub(super) fn lenient_string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map: Option<BTreeMap<String, Lenient>> = Option::deserialize(deserializer)?;
    Ok(map.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// Same as [`lenient_string_map`] for an optional map kept as `Option`.
pub(super) fn lenient_opt_string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let map: Option<BTreeMap<String, Lenient>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

/// Traefik's `allowEmpty` objects (`tls:`, `healthCheck:`): a key that is present with
/// an empty/null value still switches the feature on, so it becomes `Some(default)`.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(deserializer)?.unwrap_or_default()))
}

/// A Traefik "one of" object: a map with exactly one key naming the kind
/// (`{ loadBalancer: {...} }`, `{ stripPrefix: {...} }`).
pub(super) trait OneOf: Sized {
    /// What the object is, for messages ("middleware", "service").
    const WHAT: &'static str;
    /// Every kind accepted.
    const KINDS: &'static [&'static str];
    /// Read the value of `kind` (one of [`Self::KINDS`]) from `map`.
    fn kind_value<'de, A: MapAccess<'de>>(kind: String, map: &mut A) -> Result<Self, A::Error>;
}

/// Deserialize a [`OneOf`] object.
pub(super) fn one_of<'de, D: Deserializer<'de>, T: OneOf>(deserializer: D) -> Result<T, D::Error> {
    struct Vis<T>(PhantomData<T>);
    impl<'de, T: OneOf> Visitor<'de> for Vis<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a {} with exactly one of {}", T::WHAT, kinds(T::KINDS))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let Some(kind) = map.next_key::<String>()? else {
                return Err(de::Error::custom(format!(
                    "{} has no kind, expected exactly one of {}",
                    T::WHAT,
                    kinds(T::KINDS)
                )));
            };
            if !T::KINDS.contains(&kind.as_str()) {
                return Err(de::Error::custom(format!(
                    "unknown {} kind `{kind}`, expected one of {}",
                    T::WHAT,
                    kinds(T::KINDS)
                )));
            }
            let first = kind.clone();
            let value = T::kind_value(kind, &mut map)?;
            if let Some(second) = map.next_key::<String>()? {
                return Err(de::Error::custom(format!(
                    "{} must have exactly one kind, found `{first}` and `{second}`",
                    T::WHAT
                )));
            }
            Ok(value)
        }
    }
    deserializer.deserialize_map(Vis(PhantomData))
}

fn kinds(list: &[&str]) -> String {
    list.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}
