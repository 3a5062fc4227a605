//! What every command shares, live or offline (`app`, `dump`, `report`):
//! the annotation rules. `report` needs no root and no sampler, so this
//! module depends on neither.
use anyhow::Result;

use crate::annotate::Rules;

/// The annotation rules: the user's file first, then the built-in ones.
pub fn load_rules(path: Option<&std::path::Path>) -> Result<Rules> {
    Ok(match path {
        Some(path) => Rules::with_file(path)?,
        None => Rules::builtin(),
    })
}
