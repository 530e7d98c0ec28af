//! The error every command returns: a message for stderr and the exit it maps to.

use std::fmt;

use crate::exit::Exit;

/// A failed command: `message` is printed to stderr, `exit` gives the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// Prefixes the message with what it is about, e.g. `action /_/hello: ...`.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Bad usage, bad input or configuration (exit 1).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Exit::Failure, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Shorthand for command results.
pub type CliResult<T> = Result<T, CliError>;
