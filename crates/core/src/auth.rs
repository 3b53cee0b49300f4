//! What an API key may do: its scopes, and the caller a request authenticates as.
//!
//! Three scopes, each its own permission (none implies another): `submit` creates and cancels
//! work (jobs, files, batches, chat completions), `read` reads it back, `admin` is the operator's
//! (dead letters, across tenants). Keys themselves are generated, hashed and checked in the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fair::Band;
use crate::ids::Tenant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Submit,
    Read,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Self::Submit, Self::Read, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Submit => 1,
            Self::Read => 2,
            Self::Admin => 4,
        }
    }
}

/// A set of scopes, written `submit,read` (in [`Scope::ALL`] order).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub const EVERY: Scopes = Scopes(7);

    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Reads `submit,read` (as [`str::parse`] does).
    pub fn parse(text: &str) -> Result<Self, ScopesError> {
        text.parse()
    }
}

/// Why a list of scopes does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopesError {
    #[error("unknown scope `{name}`; the scopes are submit, read and admin")]
    Unknown { name: String },
    #[error("at least one scope is needed: submit, read or admin")]
    Empty,
}

/// Reads `submit,read` (commas, optional spaces); the error names an unknown scope.
impl FromStr for Scopes {
    type Err = ScopesError;
    fn from_str(text: &str) -> Result<Self, ScopesError> {
        let mut scopes = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| ScopesError::Unknown { name: name.into() })?;
            scopes.push(scope);
        }
        if scopes.is_empty() {
            return Err(ScopesError::Empty);
        }
        Ok(Self::of(&scopes))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Who a request is: the tenant it acts for, through which key, allowed what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Tenant,
    /// The key's id (`None` when authentication is off).
    pub key_id: Option<String>,
    pub scopes: Scopes,
    /// The key's own request rate (requests per minute), if it has one.
    pub rpm: Option<u32>,
    /// The highest band the key's requests are served at.
    pub max_band: Band,
}

impl Caller {
    /// Everything allowed, for the tenant every request belongs to when authentication is off.
    pub fn unauthenticated(tenant: Tenant) -> Self {
        Self {
            tenant,
            key_id: None,
            scopes: Scopes::EVERY,
            rpm: None,
            max_band: Band::Interactive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_in_a_fixed_order() {
        let scopes: Scopes = " read, submit ".parse().unwrap_or_default();
        assert_eq!(scopes.to_string(), "submit,read");
        assert!(scopes.contains(Scope::Read) && !scopes.contains(Scope::Admin));
        assert_eq!(
            "submit,read,admin"
                .parse()
                .map(|s: Scopes| s == Scopes::EVERY),
            Ok(true)
        );
        let unknown = "write".parse::<Scopes>();
        assert_eq!(
            unknown,
            Err(ScopesError::Unknown {
                name: "write".into()
            })
        );
        assert_eq!(
            unknown.map_err(|e| e.to_string()),
            Err("unknown scope `write`; the scopes are submit, read and admin".into())
        );
        assert_eq!(" , ".parse::<Scopes>(), Err(ScopesError::Empty));
        assert_eq!(
            serde_json::to_value(Scopes::of(&[Scope::Admin, Scope::Submit])).ok(),
            Some(serde_json::json!(["submit", "admin"]))
        );
    }
}
