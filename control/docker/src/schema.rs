//! Traefik's labels are a flattened, case-insensitive spelling of the file provider's
//! configuration (`traefik.http.routers.web.entrypoints=a,b`). This module walks
//! Traefik's JSON schema along a label's key to find the canonical key names, which
//! segments are object names, and what type the value has, and builds the JSON tree the
//! proxy's model deserializes — so labels and files share one model and one validation.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};

/// Why a label could not be placed in the configuration tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No such key in Traefik's configuration.
    #[error("unknown key \"{segment}\" (after \"{parent}\")")]
    UnknownKey {
        /// The segment not found.
        segment: String,
        /// The path before it.
        parent: String,
    },
    /// The key stops at an object or a name.
    #[error("incomplete key: \"{0}\" needs more after it")]
    Incomplete(String),
    /// The value does not have the key's type.
    #[error("value \"{value}\" is not {expected}")]
    BadValue {
        /// The value.
        value: String,
        /// The type wanted.
        expected: &'static str,
    },
    /// The same key was given twice with different values (e.g. `a` and `A`).
    #[error("set twice with different values")]
    Duplicate,
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA
        .get_or_init(|| serde_json::from_str(constellation_proxy::dynamic::FILE_PROVIDER_SCHEMA).unwrap_or(Value::Null))
}

/// Follow `$ref`s to the definition a node stands for.
fn resolve(node: &Value) -> &Value {
    let mut node = node;
    for _ in 0..8 {
        match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")) {
            Some(name) => match schema().get("definitions").and_then(|d| d.get(name)) {
                Some(def) => node = def,
                None => break,
            },
            None => break,
        }
    }
    node
}

/// The properties a node allows, with `oneOf`/`anyOf` alternatives folded in.
fn properties(node: &Value) -> Vec<(&String, &Value)> {
    let mut out = Vec::new();
    if let Some(Value::Object(props)) = node.get("properties") {
        out.extend(props.iter());
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(alts)) = node.get(key) {
            for alt in alts {
                out.extend(properties(resolve(alt)));
            }
        }
    }
    out
}

fn type_of(node: &Value) -> &str {
    match node.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string"),
        _ if node.get("properties").is_some() || node.get("oneOf").is_some() => "object",
        _ => "string",
    }
}

/// One step of the tree being built.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf(Value),
    Map(BTreeMap<String, Node>),
    List(BTreeMap<usize, Node>),
}

impl Node {
    fn into_json(self) -> Value {
        match self {
            Node::Leaf(v) => v,
            Node::Map(m) => Value::Object(m.into_iter().map(|(k, v)| (k, v.into_json())).collect::<Map<_, _>>()),
            Node::List(l) => Value::Array(l.into_values().map(Node::into_json).collect()),
        }
    }
}

/// One step of a key path: a map key or a list index.
enum Step {
    Key(String),
    Index(usize),
}

/// Write `leaf` at `steps` under `node`; an empty map is a fresh slot, an empty-object
/// leaf (`tls=true`) may still gain keys.
fn put(node: &mut Node, steps: &[Step], leaf: Value) -> Result<(), LabelError> {
    let fresh = |n: &Node| matches!(n, Node::Map(m) if m.is_empty()) || matches!(n, Node::List(l) if l.is_empty());
    match steps.split_first() {
        None => {
            if fresh(node) {
                *node = Node::Leaf(leaf);
                Ok(())
            } else if matches!(node, Node::Leaf(e) if *e == leaf)
                || (matches!(node, Node::Map(_)) && matches!(&leaf, Value::Object(o) if o.is_empty()))
            {
                Ok(())
            } else {
                Err(LabelError::Duplicate)
            }
        }
        Some((Step::Key(k), rest)) => {
            if (fresh(node) || matches!(node, Node::Leaf(Value::Object(o)) if o.is_empty()))
                && !matches!(node, Node::Map(_))
            {
                *node = Node::Map(BTreeMap::new());
            }
            match node {
                Node::Map(m) => put(m.entry(k.clone()).or_insert_with(|| Node::Map(BTreeMap::new())), rest, leaf),
                _ => Err(LabelError::Duplicate),
            }
        }
        Some((Step::Index(i), rest)) => {
            if fresh(node) && !matches!(node, Node::List(_)) {
                *node = Node::List(BTreeMap::new());
            }
            match node {
                Node::List(l) => put(l.entry(*i).or_insert_with(|| Node::Map(BTreeMap::new())), rest, leaf),
                _ => Err(LabelError::Duplicate),
            }
        }
    }
}

/// Builds one configuration tree from many labels.
#[derive(Debug, Default)]
pub struct TreeBuilder {
    root: BTreeMap<String, Node>,
}

/// A key step: a name and, for `name[3]`, an index.
fn split_index(segment: &str) -> (&str, Option<usize>) {
    if let Some(open) = segment.find('[') {
        if let Some(idx) = segment[open + 1..].strip_suffix(']').and_then(|i| i.parse().ok()) {
            return (&segment[..open], Some(idx));
        }
    }
    (segment, None)
}

fn convert(node: &Value, raw: &str) -> Result<Value, LabelError> {
    let bad = |expected| LabelError::BadValue { value: raw.to_string(), expected };
    Ok(match type_of(node) {
        "integer" => Value::Number(raw.trim().parse::<i64>().map_err(|_| bad("an integer"))?.into()),
        "number" => {
            let f: f64 = raw.trim().parse().map_err(|_| bad("a number"))?;
            Value::Number(Number::from_f64(f).ok_or_else(|| bad("a finite number"))?)
        }
        "boolean" => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("true or false")),
        }),
        "array" => {
            let items = resolve(node.get("items").unwrap_or(&Value::Null));
            let parts: Vec<&str> = raw.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
            Value::Array(parts.into_iter().map(|p| convert(items, p)).collect::<Result<_, _>>()?)
        }
        // `tls=true` on a router: an empty object; the same for other option blocks.
        "object" => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "" => Value::Object(Map::new()),
            _ => return Err(bad("an object (set its keys, or `true` for the defaults)")),
        },
        _ => Value::String(raw.to_string()),
    })
}

impl TreeBuilder {
    /// Place `value` at `key` (the label without `traefik.`, e.g.
    /// `http.routers.web.rule`).
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), LabelError> {
        let segments: Vec<&str> = key.split('.').collect();
        let mut node = schema();
        let mut parent = String::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut i = 0;
        while i < segments.len() {
            let (name, index) = split_index(segments[i]);
            node = resolve(node);
            let props = properties(node);
            if let Some((canon, child)) = props.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                steps.push(Step::Key((*canon).clone()));
                node = resolve(child);
                if let Some(idx) = index {
                    steps.push(Step::Index(idx));
                    node = resolve(node.get("items").unwrap_or(&Value::Null));
                }
            } else if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
                steps.push(Step::Key(name.to_string()));
                node = resolve(extra);
                if let Some(idx) = index {
                    steps.push(Step::Index(idx));
                    node = resolve(node.get("items").unwrap_or(&Value::Null));
                }
            } else if node.get("additionalProperties").is_some_and(|a| a == &Value::Bool(true))
                || (type_of(node) == "object" && props.is_empty() && node.get("additionalProperties").is_none())
            {
                // Free-form (plugin options): keep the rest of the key as nested names.
                for rest in &segments[i..] {
                    steps.push(Step::Key((*rest).to_string()));
                }
                node = &Value::Null;
                break;
            } else {
                return Err(LabelError::UnknownKey { segment: name.to_string(), parent });
            }
            if !parent.is_empty() {
                parent.push('.');
            }
            parent.push_str(segments[i]);
            i += 1;
        }
        let leaf = if node.is_null() { Value::String(value.to_string()) } else { convert(node, value)? };
        if matches!(type_of(node), "object") && !node.is_null() && !matches!(leaf, Value::Object(_)) {
            return Err(LabelError::Incomplete(key.to_string()));
        }
        let mut root = Node::Map(std::mem::take(&mut self.root));
        let result = put(&mut root, &steps, leaf);
        if let Node::Map(m) = root {
            self.root = m;
        }
        result
    }

    /// The tree as JSON.
    pub fn into_json(self) -> Value {
        Node::Map(self.root).into_json()
    }
}
