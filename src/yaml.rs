//! Reading the YAML a person writes (`trueup.yaml`, invariant files): one set of limits for
//! every reader of them. The nesting limit is far above what any trueup file needs and far
//! below what a recursive reader can walk on a 2 MiB thread stack (a reload under `serve`
//! runs on one): a file nested 80 levels deep is refused, it does not crash the process.

use serde::Deserialize;

/// How deep mappings and sequences may nest.
pub const MAX_DEPTH: usize = 24;

/// Deserializes `text` within trueup's limits.
pub fn from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, serde_saphyr::Error> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options)
}
