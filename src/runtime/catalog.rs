//! The invariants a running service knows, replaced as a whole on reload.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::domain::Invariant;

#[derive(Default)]
pub struct Catalog {
    invariants: RwLock<Vec<Arc<Invariant>>>,
}

impl Catalog {
    pub fn new(invariants: Vec<Arc<Invariant>>) -> Self {
        Self {
            invariants: RwLock::new(invariants),
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<Invariant>> {
        self.invariants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<Invariant>> {
        self.invariants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|i| i.name.as_str() == name)
            .cloned()
    }

    pub fn replace(&self, invariants: Vec<Arc<Invariant>>) {
        *self.invariants.write().unwrap_or_else(|e| e.into_inner()) = invariants;
    }
}

/// What identifies an invariant's definition: everything but where it is written, so moving
/// it in its file does not restart it.
pub fn fingerprint(invariant: &Invariant) -> String {
    invariant.definition_hash()
}

/// A cheap summary of the files under a folder (names, sizes, modification times): when it
/// changes, the invariants are reloaded. Polling keeps this working on every filesystem,
/// network mounts and container volumes included, where change notifications are unreliable.
pub fn folder_state(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(path);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}
