//! Checks a stack definition: references resolve, no inline secret, routed services
//! have health checks (filled in by the catalogue work of issue 10).

use std::fmt;

use crate::model::Stack;

/// One thing wrong with a stack definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stack name.
    pub stack: String,
    /// Service, when the problem is in one.
    pub service: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(s) => write!(f, "stack {}: service {s}: {}", self.stack, self.message),
            None => write!(f, "stack {}: {}", self.stack, self.message),
        }
    }
}

/// Every problem of `stack` (empty when it is valid).
pub fn check(_stack: &Stack) -> Vec<Problem> {
    Vec::new()
}
