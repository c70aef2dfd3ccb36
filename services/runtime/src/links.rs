//! Link codes: the unguessable part of `{public_url}/{kind}/{code}` links
//! (reseller requests, delegated-admin offers, trial invitations, purchase
//! offers). A code names its instance and kind, carries 128 random bits, and
//! is authenticated with a MAC keyed from the instance's signing key, so a
//! tampered, foreign or mistyped code is refused before anything is looked
//! up. Whether a code is still live (expiry, revocation) is the owning
//! service's record, checked with [`check_live`].

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::{
    auth::Keyring,
    clock::Millis,
    error::{Error, ErrorCode},
};

const RANDOM_BYTES: usize = 16;
const TAG_BYTES: usize = 16;

/// Issues and verifies this instance's link codes.
#[derive(Clone)]
pub struct LinkCodes {
    instance: String,
    public_url: String,
    /// The current key first (it signs), then keys from before a rotation.
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for LinkCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCodes")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// A freshly issued code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedLink {
    /// The record key: 32 lowercase hex characters (the random part).
    pub id: String,
    /// What the partner shares.
    pub code: String,
    /// `{public_url}/{kind}/{code}`.
    pub url: String,
}

impl LinkCodes {
    pub fn new(keys: &Keyring, instance: &str, public_url: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            keys: keys.derive_secrets("link codes"),
        }
    }

    /// A new code of `kind` (a lowercase slug such as `reseller`).
    pub fn issue(&self, kind: &str) -> IssuedLink {
        let mut random = [0u8; RANDOM_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let mut body = random.to_vec();
        body.extend_from_slice(&self.tag(&self.keys[0], kind, &random)[..TAG_BYTES]);
        let code = format!("{}.{kind}.{}", self.instance, B64.encode(body));
        IssuedLink {
            id: crate::hex::encode(&random),
            url: self.url(kind, &code),
            code,
        }
    }

    pub fn url(&self, kind: &str, code: &str) -> String {
        format!("{}/{kind}/{code}", self.public_url)
    }

    /// Checks that `code` (from request field `field`) is an authentic `kind`
    /// code of this instance and returns its record id. Nothing is looked up.
    pub fn verify(&self, field: &str, kind: &str, code: &str) -> Result<String, Error> {
        let code = code.trim();
        if code.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        let parts: Vec<&str> = code.split('.').collect();
        let [instance, code_kind, body] = parts[..] else {
            return Err(malformed(field));
        };
        if instance != self.instance {
            let message = format!(
                "{field}: this code belongs to the `{instance}` instance, not `{}`; open the link on the instance that issued it",
                self.instance
            );
            return Err(
                Error::new(ErrorCode::InvalidArgument, "FOREIGN_INSTANCE", message)
                    .with_violation(field, format!("belongs to the `{instance}` instance")),
            );
        }
        if code_kind != kind {
            return Err(Error::invalid(
                field,
                format!("is a `{code_kind}` code, not a `{kind}` code"),
            ));
        }
        let bytes = B64.decode(body).map_err(|_| malformed(field))?;
        if bytes.len() != RANDOM_BYTES + TAG_BYTES {
            return Err(malformed(field));
        }
        let (random, tag) = bytes.split_at(RANDOM_BYTES);
        let authentic = self.keys.iter().any(|key| {
            let mut mac = self.mac(key, kind);
            mac.update(random);
            mac.verify_truncated_left(tag).is_ok()
        });
        authentic.then_some(()).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                "LINK_CODE_TAMPERED",
                format!("{field}: the code was altered or mistyped; copy the whole link again"),
            )
            .with_violation(field, "failed its integrity check")
        })?;
        Ok(crate::hex::encode(random))
    }

    fn mac(&self, key: &[u8; 32], kind: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(self.instance.as_bytes());
        mac.update(b".");
        mac.update(kind.as_bytes());
        mac.update(b".");
        mac
    }

    fn tag(&self, key: &[u8; 32], kind: &str, random: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(key, kind);
        mac.update(random);
        mac.finalize().into_bytes().to_vec()
    }
}

fn malformed(field: &str) -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        "LINK_CODE_MALFORMED",
        format!("{field}: is not a Sovra link code; copy the whole link again"),
    )
    .with_violation(field, "is not a link code")
}

/// Refuses a revoked or expired link. `what` names it for people
/// ("reseller request").
pub fn check_live(
    what: &str,
    expires_at: Millis,
    revoked_at: Option<Millis>,
    now: Millis,
) -> Result<(), Error> {
    if revoked_at.is_some() {
        return Err(Error::failed_precondition(
            "LINK_REVOKED",
            format!("this {what} link was revoked by the partner; ask the partner for a new one"),
        ));
    }
    if now >= expires_at {
        return Err(Error::failed_precondition(
            "LINK_EXPIRED",
            format!("this {what} link has expired; ask the partner for a new one"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(instance: &str) -> LinkCodes {
        LinkCodes::new(&Keyring::generate(), instance, "https://p.example/")
    }

    #[test]
    fn codes_issued_before_a_key_rotation_still_verify() {
        let old = Keyring::generate();
        let before = LinkCodes::new(&old, "global", "https://x.example").issue("trial");
        let old_key = ed25519_dalek::SigningKey::from_bytes(&old.signing_key_bytes());
        let rotated = Keyring::generate().with_previous(vec![old_key]);
        let codes = LinkCodes::new(&rotated, "global", "https://x.example");
        assert_eq!(
            codes.verify("code", "trial", &before.code).unwrap(),
            before.id
        );
        let after = codes.issue("trial");
        assert!(
            LinkCodes::new(&old, "global", "https://x.example")
                .verify("code", "trial", &after.code)
                .is_err(),
            "new codes are signed with the new key only"
        );
    }

    #[test]
    fn an_issued_code_verifies_to_its_id_and_url() {
        let c = codes("global");
        let link = c.issue("reseller");
        assert_eq!(c.verify("code", "reseller", &link.code).unwrap(), link.id);
        assert_eq!(link.id.len(), 32);
        assert_eq!(
            link.url,
            format!("https://p.example/reseller/{}", link.code)
        );
        assert_ne!(c.issue("reseller").id, link.id);
    }

    #[test]
    fn a_changed_character_is_tampering() {
        let c = codes("global");
        let link = c.issue("reseller");
        let mut chars: Vec<char> = link.code.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let bad: String = chars.into_iter().collect();
        let e = c.verify("code", "reseller", &bad).unwrap_err();
        assert!(matches!(
            e.reason.as_ref(),
            "LINK_CODE_TAMPERED" | "LINK_CODE_MALFORMED"
        ));
    }

    #[test]
    fn another_instances_code_is_refused_naming_it() {
        let china = codes("china");
        let global = codes("global");
        let e = global
            .verify("code", "reseller", &china.issue("reseller").code)
            .unwrap_err();
        assert_eq!(e.reason, "FOREIGN_INSTANCE");
        assert!(e.message.contains("`china`"), "{}", e.message);
    }

    #[test]
    fn a_code_of_another_kind_or_key_is_refused() {
        let c = codes("global");
        let link = c.issue("reseller");
        let e = c.verify("code", "delegated-admin", &link.code).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        let same_instance_other_key = codes("global");
        let e = same_instance_other_key
            .verify("code", "reseller", &link.code)
            .unwrap_err();
        assert_eq!(e.reason, "LINK_CODE_TAMPERED");
        assert_eq!(
            c.verify("code", "reseller", "nonsense").unwrap_err().reason,
            "LINK_CODE_MALFORMED"
        );
    }

    #[test]
    fn revoked_and_expired_links_are_refused() {
        assert!(check_live("x", 10, None, 9).is_ok());
        assert_eq!(
            check_live("x", 10, None, 10).unwrap_err().reason,
            "LINK_EXPIRED"
        );
        assert_eq!(
            check_live("x", 10, Some(1), 5).unwrap_err().reason,
            "LINK_REVOKED"
        );
    }
}
