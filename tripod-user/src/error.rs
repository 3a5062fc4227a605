//! Errors that tell the user what to change.
use std::fmt;

/// A problem with how tripod-bpf was invoked or with the machine it runs on,
/// found before sampling starts. It exits with status 2 and is printed as one
/// line: what is wrong, then what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError(message.into())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`] from a function that returns `anyhow::Result`.
#[macro_export]
macro_rules! usage_error {
    ($($arg:tt)*) => {
        return Err($crate::error::UsageError(format!($($arg)*)).into())
    };
}
