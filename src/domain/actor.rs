//! Who acts: the identity an approval, an apply or a requested run is recorded under.

use super::Role;

/// Who is acting: a token's identity through the API, the local user on the CLI, or the
/// scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

impl Actor {
    /// The local user `user` running a command (the CLI finds out who that is). Whoever can
    /// run the CLI can open the store, so the CLI acts as admin; the identity still tells
    /// approvers apart in the audit log.
    pub fn local(user: &str) -> Self {
        Self {
            name: format!("cli:{user}"),
            role: Role::Admin,
        }
    }

    pub fn scheduler() -> Self {
        Self {
            name: "scheduler".into(),
            role: Role::Admin,
        }
    }
}
