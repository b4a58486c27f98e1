//! Passwords of the stateful groups: loaded from a file or an environment variable, and
//! never shown (`Debug` and `Display` print `<redacted>`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a password could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A password file could not be read.
    #[error("cannot read the password file {path}: {source}; check that it exists and is readable by the agent")]
    PasswordFile {
        /// The file named by `password_file` / `sentinel_password_file`.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A password variable is unset or not UTF-8.
    #[error("the environment variable {var} (a password) is not set or not valid UTF-8; export it before starting the agent")]
    PasswordEnv {
        /// The variable named by `password_env` / `sentinel_password_env`.
        var: String,
    },
    /// A password file or variable holds an empty password.
    #[error("the password from {from} is empty")]
    EmptyPassword {
        /// The file or variable it came from.
        from: String,
    },
}

/// A password: its `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The password itself, for the AUTH command or the driver's credential only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Loads a password from `file` (trailing newline trimmed) or else from the environment
/// variable `env`; `Ok(None)` when neither is given.
///
/// # Errors
/// When the file cannot be read, the variable is unset, or the password is empty.
pub fn load_secret(file: Option<&Path>, env: Option<&str>) -> Result<Option<Secret>, SecretError> {
    let (value, from) = if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SecretError::PasswordFile { path: path.to_path_buf(), source })?;
        (text.trim_end_matches(['\r', '\n']).to_string(), path.display().to_string())
    } else if let Some(var) = env {
        let value = std::env::var(var).map_err(|_| SecretError::PasswordEnv { var: var.to_string() })?;
        (value, format!("${var}"))
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(SecretError::EmptyPassword { from });
    }
    Ok(Some(Secret(value)))
}
