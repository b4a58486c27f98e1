//! The stacks an agent config knows: the built-in catalogue plus the compose files of
//! `[services] files`, and picking stacks and services from them by name.

use std::path::{Path, PathBuf};

use crate::compose::{self, ComposeError, ImportOptions};
use crate::model::{Service, Stack};

/// Why stacks cannot be loaded or one cannot be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// A compose file does not import.
    #[error(transparent)]
    Compose(#[from] ComposeError),
    /// Two stacks have one name.
    #[error("stack {name} is defined twice: in {first} and in {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// Where first.
        first: String,
        /// Where again.
        second: String,
    },
    /// No stack has that name.
    #[error("no stack named {name} (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownStack {
        /// The name asked for.
        name: String,
        /// The stacks there are.
        known: Vec<String>,
    },
    /// No service has that name.
    #[error("no service named {name}")]
    UnknownService {
        /// The name asked for.
        name: String,
    },
    /// Several stacks have a service of that name.
    #[error("service {name} is in several stacks; say which: {}", candidates.join(", "))]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// `stack/service` for each.
        candidates: Vec<String>,
    },
}

/// The built-in catalogue followed by each compose file (relative paths against
/// `base_dir`, the agent config's directory), in order. Every problem is reported.
pub fn load(files: &[PathBuf], base_dir: &Path, options: &ImportOptions) -> Result<Vec<Stack>, Vec<StackError>> {
    let mut stacks = crate::catalogue::stacks();
    let mut errors = Vec::new();
    for file in files {
        let path = if file.is_absolute() { file.clone() } else { base_dir.join(file) };
        match compose::load(&path, options) {
            Ok(stack) => match stacks.iter().find(|s| s.name == stack.name) {
                Some(first) => errors.push(StackError::Duplicate {
                    name: stack.name.clone(),
                    first: first.origin.clone(),
                    second: stack.origin.clone(),
                }),
                None => stacks.push(stack),
            },
            Err(e) => errors.push(e.into()),
        }
    }
    if errors.is_empty() {
        Ok(stacks)
    } else {
        Err(errors)
    }
}

/// The stack named `name`, or all of them when `None`.
pub fn select<'a>(stacks: &'a [Stack], name: Option<&str>) -> Result<Vec<&'a Stack>, StackError> {
    match name {
        None => Ok(stacks.iter().collect()),
        Some(n) => stacks.iter().find(|s| s.name == n).map(|s| vec![s]).ok_or_else(|| StackError::UnknownStack {
            name: n.to_string(),
            known: stacks.iter().map(|s| s.name.clone()).collect(),
        }),
    }
}

/// A service by `stack/service`, by service name when only one stack has it, or by
/// container name.
pub fn find_service<'a>(stacks: &'a [Stack], name: &str) -> Result<(&'a Stack, &'a Service), StackError> {
    if let Some((stack, service)) = name.split_once('/') {
        let st = select(stacks, Some(stack))?[0];
        return st
            .services
            .iter()
            .find(|s| s.name == service)
            .map(|s| (st, s))
            .ok_or_else(|| StackError::UnknownService { name: name.to_string() });
    }
    let matches: Vec<(&Stack, &Service)> =
        stacks.iter().flat_map(|st| st.services.iter().filter(|s| s.name == name).map(move |s| (st, s))).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => stacks
            .iter()
            .flat_map(|st| st.services.iter().map(move |s| (st, s)))
            .find(|(st, s)| s.container_name(&st.name) == name)
            .ok_or_else(|| StackError::UnknownService { name: name.to_string() }),
        many => Err(StackError::Ambiguous {
            name: name.to_string(),
            candidates: many.iter().map(|(st, s)| format!("{}/{}", st.name, s.name)).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn load_select_find() {
        let dir = std::env::temp_dir().join(format!("constellation-stacks-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yml"), "name: alpha\nservices:\n  web:\n    image: x\n  db:\n    image: y\n")
            .unwrap();
        std::fs::write(dir.join("b.yml"), "name: beta\nservices:\n  web:\n    image: x\n").unwrap();
        std::fs::write(dir.join("dup.yml"), "name: alpha\nservices:\n  web:\n    image: x\n").unwrap();
        std::fs::write(dir.join("bad.yml"), "name: bad\nservices:\n  web:\n    image: x\n    scale: 2\n").unwrap();
        let opts = ImportOptions::default();
        let all = load(&["a.yml".into(), "b.yml".into()], &dir, &opts).unwrap();
        let user: Vec<&Stack> = all.iter().filter(|s| s.origin != "catalogue").collect();
        assert_eq!(user.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["alpha", "beta"]);
        assert_eq!(select(&all, Some("beta")).unwrap()[0].name, "beta");
        assert!(matches!(select(&all, Some("gamma")), Err(StackError::UnknownStack { .. })));
        assert_eq!(find_service(&all, "db").unwrap().0.name, "alpha");
        assert_eq!(find_service(&all, "beta/web").unwrap().0.name, "beta");
        assert_eq!(find_service(&all, "alpha-web").unwrap().1.name, "web");
        assert!(matches!(find_service(&all, "web"), Err(StackError::Ambiguous { .. })));
        assert!(matches!(find_service(&all, "nope"), Err(StackError::UnknownService { .. })));
        let errs = load(&["a.yml".into(), "dup.yml".into(), "bad.yml".into()], &dir, &opts).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(matches!(&errs[0], StackError::Duplicate { name, .. } if name == "alpha"));
        let bad = errs[1].to_string();
        assert!(bad.ends_with("bad.yml:5:5: services.web.scale: not supported (supported keys: image, container_name, command, entrypoint, environment, env_file, labels, networks, ports, volumes, healthcheck, depends_on, restart, cap_add, sysctls, devices)"), "{bad}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
