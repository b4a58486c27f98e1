//! Finding where a key of a dynamic configuration is written in its source text, so
//! errors found after parsing (validation, rule syntax, compile) can name a line and a
//! column as parse errors do.
//!
//! The parsers do not keep spans for values, so this scans the text: each segment of the
//! key path is searched for as a key (YAML `key:`, JSON `"key":`, TOML `key =`,
//! `[a.key]` or `a.key.b =`) after the previous segment's position. The scan is
//! format-agnostic and approximate by design: it finds the right line for the files
//! people write, and gives up (no position) rather than guess when a key is missing.

/// A 1-based line and column (in characters) in a source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// One step of a key path: a map key, or an index into the list under the previous key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Split `http.routers.api` + `loadBalancer.servers[1].url` into steps. The first two
/// parts of the object are the section and the kind; whatever follows is the object's
/// name, which may itself contain dots.
fn steps<'a>(object: &'a str, field: &'a str) -> Vec<Step<'a>> {
    let mut out = Vec::new();
    let mut parts = object.splitn(3, '.');
    for part in parts.by_ref().take(2) {
        out.push(Step::Key(part));
    }
    if let Some(name) = parts.next() {
        out.push(Step::Key(name));
    }
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Step::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(close) = inner.find(']') else { break };
                if let Ok(i) = inner[..close].parse() {
                    out.push(Step::Index(i));
                }
                rest = &inner[close + 1..];
            }
        } else {
            out.push(Step::Key(rest));
        }
    }
    out
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether `key` is written as a key at byte `at` of `text`; on success, the byte
/// offset just past the key's separator (`:` or `=`), or past the key when it is a
/// TOML table or dotted-key segment.
fn key_at(text: &[u8], at: usize, key: &[u8]) -> Option<usize> {
    let quote = match text.get(at) {
        Some(&q @ (b'"' | b'\'')) => Some(q),
        _ => None,
    };
    let start = at + usize::from(quote.is_some());
    if text.get(start..start + key.len())? != key {
        return None;
    }
    let mut end = start + key.len();
    match quote {
        Some(q) => {
            if text.get(end) != Some(&q) {
                return None;
            }
            end += 1;
        }
        None => {
            if text.get(end).is_some_and(|&c| is_key_char(c)) {
                return None;
            }
            // Unquoted keys start a line (after indentation or a YAML `- `), or follow
            // `[`, `.`, `{` or `,` (TOML headers and dotted keys, inline tables).
            let before = text[..at].iter().rev().find(|&&c| c != b' ' && c != b'\t');
            let ok = match before {
                None | Some(b'\n' | b'[' | b'.' | b'{' | b',') => true,
                Some(b'-') => {
                    let dash = text[..at].iter().rposition(|&c| c == b'-').unwrap_or(0);
                    text[..dash].iter().rev().take_while(|&&c| c != b'\n').all(|&c| c == b' ' || c == b'\t')
                }
                _ => false,
            };
            if !ok {
                return None;
            }
        }
    }
    let mut i = end;
    while matches!(text.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    match text.get(i)? {
        b'=' => Some(i + 1),
        b'.' | b']' => Some(i),
        b':' => {
            // `http://…` inside a value is not the key `http`.
            let next = text.get(i + 1);
            if quote.is_some() || next.is_none_or(|c| c.is_ascii_whitespace()) {
                Some(i + 1)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The first place at or after `from` where `key` is written as a key; returns the
/// offset where the key starts and the offset past its separator.
fn find_key(text: &[u8], from: usize, key: &str) -> Option<(usize, usize)> {
    let key = key.as_bytes();
    let first = *key.first()?;
    (from..text.len()).find_map(|at| {
        let c = text[at];
        if c != first && c != b'"' && c != b'\'' {
            return None;
        }
        key_at(text, at, key).map(|past| (at, past))
    })
}

/// Where the object whose name key starts at `at` ends: for a TOML table header
/// (`[http.routers.api]`), at the next header that is not under it; otherwise at the
/// next line indented no deeper than the name (YAML, pretty JSON), or the end.
fn block_end(text: &[u8], at: usize) -> usize {
    let line_start = text[..at].iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let indent = line.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    let header = line.get(indent) == Some(&b'[');
    // For a header, the path up to and including the name: `http.routers.api`.
    let name_end = (at..text.len()).find(|&i| matches!(text[i], b']' | b'\n')).unwrap_or(text.len());
    let prefix: Vec<u8> =
        text[line_start + indent..name_end].iter().copied().filter(|&c| c != b'[' && c != b'"').collect();
    let mut i = (at..text.len()).find(|&i| text[i] == b'\n').map_or(text.len(), |i| i + 1);
    while i < text.len() {
        let next = (i..text.len()).find(|&j| text[j] == b'\n').map_or(text.len(), |j| j + 1);
        let l = &text[i..next];
        let ind = l.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
        let content = &l[ind..];
        let blank = content.iter().all(|c| c.is_ascii_whitespace()) || content.first() == Some(&b'#');
        if !blank {
            if header {
                if content.first() == Some(&b'[') {
                    let h: Vec<u8> = content.iter().copied().filter(|&c| c != b'[' && c != b'"').collect();
                    if !h.starts_with(&prefix) {
                        return i;
                    }
                }
            } else if ind <= indent {
                return i;
            }
        }
        i = next;
    }
    text.len()
}

fn position_of(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position { line, column: before[line_start..].chars().count() + 1 }
}

/// Where the value of `object`'s `field` is written in `text`: the first character of
/// the value (inside its opening quote, so a column within a rule adds up), or of the
/// key when the value is not on the same line. `None` when a step cannot be found.
pub fn locate(text: &str, object: &str, field: &str) -> Option<Position> {
    let bytes = text.as_bytes();
    let steps = steps(object, field);
    let mut cursor = 0;
    let mut key_start = 0;
    let mut past = 0;
    // Once the object itself is found, its fields are looked for inside it only.
    let object_steps = steps.len() - field.split('.').filter(|p| !p.is_empty()).count();
    let mut limit = bytes.len();
    let mut i = 0;
    while i < steps.len() {
        if i == object_steps && i > 0 {
            limit = block_end(bytes, key_start);
        }
        let within = |found: (usize, usize)| (found.0 < limit).then_some(found);
        match &steps[i] {
            Step::Key(key) => {
                let (start, end) = find_key(bytes, cursor, key).and_then(within)?;
                key_start = start;
                past = end;
                cursor = end;
            }
            Step::Index(n) => {
                // The n-th item under the list: the n-th occurrence of the next key.
                let Some(Step::Key(next)) = steps.get(i + 1) else {
                    i += 1;
                    continue;
                };
                for _ in 0..=*n {
                    let (start, end) = find_key(bytes, cursor, next).and_then(within)?;
                    key_start = start;
                    past = end;
                    cursor = end;
                }
                i += 1;
            }
        }
        i += 1;
    }
    let mut value = past;
    while matches!(bytes.get(value), Some(b' ' | b'\t')) {
        value += 1;
    }
    match bytes.get(value) {
        None | Some(b'\n' | b'\r') => Some(position_of(text, key_start)),
        Some(b'"' | b'\'') => Some(position_of(text, value + 1)),
        Some(_) => Some(position_of(text, value)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    const YAML: &str = "http:\n  routers:\n    web:\n      rule: \"Host(`web`)\"\n      service: web\n    api:\n      rule: \"Host(`api`) &&\"\n      service: api\n  services:\n    api:\n      loadBalancer:\n        servers:\n          - url: \"http://a:1\"\n          - url: http://b:2\n";

    #[test]
    fn yaml_keys_values_and_list_items() {
        assert_eq!(locate(YAML, "http.routers.api", "rule"), at(7, 14));
        assert_eq!(locate(YAML, "http.routers.web", "service"), at(5, 16));
        assert_eq!(locate(YAML, "http.services.api", "loadBalancer.servers[1].url"), at(14, 18));
        assert_eq!(locate(YAML, "http.services.api", "loadBalancer.servers[0].url"), at(13, 19));
        // A value that is a map: the key itself.
        assert_eq!(locate(YAML, "http.routers.api", ""), at(6, 5));
        assert_eq!(locate(YAML, "http.routers.nope", "rule"), None);
        // A field the object lacks is not taken from the next object.
        let gap = "http:\n  routers:\n    a:\n      service: s\n    b:\n      rule: \"Path(`/`)\"\n";
        assert_eq!(locate(gap, "http.routers.a", "rule"), None);
        assert_eq!(locate(gap, "http.routers.b", "rule"), at(6, 14));
    }

    #[test]
    fn toml_tables_dotted_keys_and_arrays_of_tables() {
        let toml = "[http.routers.api]\nrule = \"Host(`api`)\"\nservice = \"api\"\n\n[http.services.api.loadBalancer]\n[[http.services.api.loadBalancer.servers]]\nurl = \"http://a:1\"\n[[http.services.api.loadBalancer.servers]]\nurl = \"http://b:2\"\n";
        assert_eq!(locate(toml, "http.routers.api", "rule"), at(2, 9));
        assert_eq!(locate(toml, "http.services.api", "loadBalancer.servers[1].url"), at(9, 8));
        let gap = "[http.routers.a]\nservice = \"s\"\n[http.routers.b]\nrule = \"Path(`/`)\"\n";
        assert_eq!(locate(gap, "http.routers.a", "rule"), None);
        assert_eq!(locate(gap, "http.routers.b", "rule"), at(4, 9));
        let dotted = "[http.routers]\napi.rule = \"Path(`/`)\"\n";
        assert_eq!(locate(dotted, "http.routers.api", "rule"), at(2, 13));
    }

    #[test]
    fn json_quoted_keys() {
        let json = "{\"http\": {\"routers\": {\"api\": {\n  \"rule\": \"Host(`x`)\",\n  \"service\": \"s\"}}}}";
        assert_eq!(locate(json, "http.routers.api", "rule"), at(2, 12));
        assert_eq!(locate(json, "http.routers.api", "service"), at(3, 15));
    }

    #[test]
    fn words_inside_values_are_not_keys() {
        let yaml = "http:\n  routers:\n    r:\n      rule: \"Host(`routers`) || Path(`/rule:`)\"\n      service: s\n";
        assert_eq!(locate(yaml, "http.routers.r", "service"), at(5, 16));
        let url = "x:\n  u: \"http://h\"\nhttp:\n  routers: {}\n";
        assert_eq!(locate(url, "http.routers", ""), at(4, 12));
    }
}
