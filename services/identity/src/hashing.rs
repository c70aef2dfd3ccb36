//! Argon2id password hashes, computed off the async runtime.

use argon2::{
    password_hash::SaltString, Algorithm, Argon2, Params, PasswordHash, PasswordHasher,
    PasswordVerifier, Version,
};
use sovra_runtime::Error;

use crate::domain::password::Password;

/// Argon2id with the configured cost.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// Verified against when a principal name is unknown, so a miss costs
    /// as much as a hit and sign-in can't be used to find accounts.
    decoy: std::sync::Arc<String>,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, argon2::Error> {
        let params = Params::new(memory_kib, iterations, parallelism, None)?;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let decoy = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"decoy-password", &salt)
            .map_err(|_| argon2::Error::AlgorithmInvalid)?
            .to_string();
        Ok(Self {
            params,
            decoy: std::sync::Arc::new(decoy),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of a fresh salted hash.
    pub async fn hash(&self, password: &Password) -> Result<String, Error> {
        let argon = self.argon();
        let pw = password.expose().to_owned();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon
                .hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::internal(format!("argon2: {e}")))
        })
        .await
        .map_err(Error::internal)?
    }

    /// True when `password` matches `phc` (or the decoy when `phc` is None).
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, Error> {
        let known = phc.is_some();
        let phc = phc
            .map(str::to_owned)
            .unwrap_or_else(|| (*self.decoy).clone());
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(Error::internal)?;
        Ok(ok && known)
    }
}
