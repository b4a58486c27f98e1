//! `[docker] constraints`: Traefik's label filter expressions —
//! ``Label(`key`, `value`)``, ``LabelRegex(`key`, `regex`)``, `!`, `&&`, `||` and
//! parentheses — parsed once at start, evaluated against each container's labels.

use std::collections::BTreeMap;

use regex::Regex;

/// A parsed constraint expression.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// The label is set to exactly this value.
    Label(String, String),
    /// The label is set and its value matches (anchored, whole value).
    LabelRegex(String, Regex),
    /// Negation.
    Not(Box<Constraint>),
    /// Both.
    And(Box<Constraint>, Box<Constraint>),
    /// Either.
    Or(Box<Constraint>, Box<Constraint>),
}

/// A constraint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint at column {column}: {message}")]
pub struct ConstraintError {
    /// 1-based column in the expression.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Constraint {
    /// Parse an expression.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let mut p = Parser { s: text.as_bytes(), i: 0, text };
        let c = p.or()?;
        p.ws();
        if p.i < p.s.len() {
            return Err(p.err("unexpected text after the expression"));
        }
        Ok(c)
    }

    /// Whether a container with `labels` passes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Label(k, v) => labels.get(k).is_some_and(|x| x == v),
            Constraint::LabelRegex(k, re) => labels.get(k).is_some_and(|x| re.is_match(x)),
            Constraint::Not(c) => !c.matches(labels),
            Constraint::And(a, b) => a.matches(labels) && b.matches(labels),
            Constraint::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> ConstraintError {
        ConstraintError { column: self.i + 1, message: message.to_string() }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.text[self.i..].starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Constraint, ConstraintError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Constraint::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Constraint, ConstraintError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Constraint::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Constraint, ConstraintError> {
        if self.eat("!") {
            return Ok(Constraint::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(self.err("expected `)`"));
            }
            return Ok(inner);
        }
        let regex = if self.eat("LabelRegex(") {
            true
        } else if self.eat("Label(") {
            false
        } else {
            return Err(self.err("expected Label(`key`, `value`), LabelRegex(`key`, `regex`), `!` or `(`"));
        };
        let key = self.quoted()?;
        if !self.eat(",") {
            return Err(self.err("expected `,`"));
        }
        let value = self.quoted()?;
        if !self.eat(")") {
            return Err(self.err("expected `)`"));
        }
        if regex {
            let re = Regex::new(&format!("^(?:{value})$")).map_err(|e| self.err(&format!("bad regex: {e}")))?;
            Ok(Constraint::LabelRegex(key, re))
        } else {
            Ok(Constraint::Label(key, value))
        }
    }

    fn quoted(&mut self) -> Result<String, ConstraintError> {
        self.ws();
        let q = match self.s.get(self.i) {
            Some(b'`') => b'`',
            Some(b'"') => b'"',
            _ => return Err(self.err("expected a value in backquotes")),
        };
        let start = self.i + 1;
        let Some(len) = self.s[start..].iter().position(|c| *c == q) else {
            return Err(self.err("unterminated value"));
        };
        self.i = start + len + 1;
        Ok(self.text[start..start + len].to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expressions_evaluate_like_traefiks() {
        let c =
            Constraint::parse("Label(`node`, `a`) && !Label(`skip`, `true`) || LabelRegex(`env`, `prod-.*`)").unwrap();
        assert!(c.matches(&labels(&[("node", "a")])));
        assert!(!c.matches(&labels(&[("node", "a"), ("skip", "true")])));
        assert!(c.matches(&labels(&[("env", "prod-1")])));
        assert!(!c.matches(&labels(&[("env", "xprod-1")])), "regex is anchored");
        assert!(!c.matches(&labels(&[])));
        let p = Constraint::parse("!(Label(`a`,`1`) || Label(`b`,`2`))").unwrap();
        assert!(p.matches(&labels(&[("a", "2")])));
        assert!(!p.matches(&labels(&[("b", "2")])));
    }

    #[test]
    fn errors_name_the_column() {
        let e = Constraint::parse("Label(`a`, `b`) &&").unwrap_err();
        assert_eq!(e.column, 19, "{e}");
        assert!(Constraint::parse("Lable(`a`,`b`)").unwrap_err().message.contains("expected Label"));
        assert!(Constraint::parse("Label(`a`,`b`) x").unwrap_err().message.contains("unexpected"));
        assert!(Constraint::parse("LabelRegex(`a`,`(`)").unwrap_err().message.contains("bad regex"));
    }
}
