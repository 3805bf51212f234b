//! The token table: bootstrap, create, revoke, and the look-ups the edge authorizes with.
//!
//! The core keeps tokens by the hash of their secret and refuses what would break the
//! table (a second bootstrap, a duplicate name or hash, too many tokens). Deciding what a
//! token may do is the edge's (`api/auth.rs`): it reads this table on its own replica.

use qm_shared::limits::{PATH_LEN_MAX_BYTES, TOKENS_MAX, TOKEN_GRANTS_MAX, TOKEN_NAME_LEN_MAX_BYTES};

use super::*;

/// Tokens by the hash of their secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    /// Whether the first admin token has been made (once true, stays true).
    bootstrapped: bool,
    tokens: BTreeMap<String, TokenSpec>,
}

impl Acl {
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The token whose secret hashes to `hash`.
    pub fn by_hash(&self, hash: &str) -> Option<&TokenSpec> {
        self.tokens.get(hash)
    }

    /// Every token, by name.
    pub fn tokens(&self) -> Vec<&TokenSpec> {
        let mut all: Vec<&TokenSpec> = self.tokens.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The token named `name` (a principal a client certificate names).
    pub fn named(&self, name: &str) -> Option<&TokenSpec> {
        self.tokens.values().find(|t| t.name == name)
    }

    fn by_name(&self, name: &str) -> Option<&String> {
        self.tokens.iter().find(|(_, t)| t.name == name).map(|(h, _)| h)
    }

    /// Checks the table's invariants: unique names, keys equal to the hash they hold, bounded.
    pub fn check(&self) -> Result<(), String> {
        if self.tokens.len() > TOKENS_MAX {
            return Err(format!("{} tokens, at most {TOKENS_MAX}", self.tokens.len()));
        }
        let mut names = BTreeSet::new();
        for (hash, t) in &self.tokens {
            if *hash != t.hash {
                return Err(format!("token {:?} is keyed by a hash it does not hold", t.name));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("token name {:?} appears twice", t.name));
            }
        }
        if !self.tokens.is_empty() && !self.bootstrapped {
            return Err("tokens exist in a cluster that was never bootstrapped".into());
        }
        Ok(())
    }
}

/// Field checks of a token (the edge and `apply` both run them).
pub(crate) fn validate_token(t: &TokenSpec) -> Result<(), Invalid> {
    qm_shared::validate::check_name("name", &t.name, TOKEN_NAME_LEN_MAX_BYTES)?;
    if t.hash.len() != 64 || !t.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Invalid::new("hash", "must be 64 lowercase hex characters (SHA-256)"));
    }
    if t.roles.is_empty() {
        return Err(Invalid::new("roles", "must name at least one role"));
    }
    qm_shared::validate::check_range("priority_max", t.priority_max.into(), 0, PRIORITY_MAX.into())?;
    for (field, set) in [("teams", &t.teams), ("path_prefixes", &t.path_prefixes), ("nodes", &t.nodes)] {
        if set.len() > TOKEN_GRANTS_MAX {
            return Err(Invalid::new(field, format!("has {} entries, at most {TOKEN_GRANTS_MAX} allowed", set.len())));
        }
        for (i, v) in set.iter().enumerate() {
            if v.is_empty() || v.len() > PATH_LEN_MAX_BYTES || v.chars().any(char::is_control) {
                return Err(Invalid::new(
                    format!("{field}[{i}]"),
                    format!("must be 1..={PATH_LEN_MAX_BYTES} bytes without control characters"),
                ));
            }
        }
    }
    Ok(())
}

impl State {
    pub(super) fn apply_bootstrap_acl(&mut self, mut token: TokenSpec, ctx: &mut Ctx) -> Response {
        if self.acl.bootstrapped {
            return Response::Refused(Refusal::AclBootstrapped);
        }
        token.created_at = ctx.now;
        self.acl.bootstrapped = true;
        let name = token.name.clone();
        self.acl.tokens.insert(token.hash.clone(), token);
        Response::TokenCreated { name }
    }

    pub(super) fn apply_create_token(&mut self, mut token: TokenSpec, ctx: &mut Ctx) -> Response {
        // Only an admin (checked at the edge) creates a token, and there is none before
        // bootstrap: a create then is a bug of the caller's, refused.
        if !self.acl.bootstrapped {
            return Response::Refused(Refusal::Invalid(Invalid::new("token", "the cluster is not bootstrapped yet")));
        }
        if self.acl.by_name(&token.name).is_some() || self.acl.tokens.contains_key(&token.hash) {
            return Response::Refused(Refusal::TokenExists { name: token.name });
        }
        if self.acl.tokens.len() >= TOKENS_MAX {
            return Response::Refused(Refusal::Exhausted { what: "tokens".into(), max: TOKENS_MAX as u64 });
        }
        token.created_at = ctx.now;
        let name = token.name.clone();
        self.acl.tokens.insert(token.hash.clone(), token);
        Response::TokenCreated { name }
    }

    pub(super) fn apply_revoke_token(&mut self, name: String) -> Response {
        match self.acl.by_name(&name).cloned() {
            None => Response::Refused(Refusal::TokenUnknown { name }),
            Some(hash) => {
                self.acl.tokens.remove(&hash);
                Response::TokenRevoked { name }
            }
        }
    }

    /// The token table, for the edge's authorization.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The principal that opened `session`, if the session exists.
    pub fn session_principal(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session).map(|s| s.principal.as_str())
    }
}
