//! Tokens signed with the instance's Ed25519 key (JWS `EdDSA`, issuer = the
//! instance's), and the interceptor that turns a bearer token into a [`Caller`].

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use ed25519_dalek::{
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey},
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{service::Interceptor, Request, Status};

use crate::{
    clock::{Millis, SharedClock},
    error::Error,
};

/// The instance's signing key plus every key its tokens may still be verified with.
#[derive(Debug)]
pub struct Keyring {
    signing: SigningKey,
    signing_kid: String,
    verifying: Vec<(String, VerifyingKey)>,
    /// Keys signed with before a rotation: still verify, never sign.
    previous: Vec<SigningKey>,
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write signing key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {path} is not a PKCS#8 PEM Ed25519 private key")]
    Format { path: String },
}

impl Keyring {
    pub fn new(signing: SigningKey) -> Self {
        let kid = key_id(&signing.verifying_key());
        Self {
            verifying: vec![(kid.clone(), signing.verifying_key())],
            signing,
            signing_kid: kid,
            previous: Vec::new(),
        }
    }

    /// Also trusts `previous` keys (a rotation's overlap): tokens and link
    /// codes they signed still verify; nothing new is signed with them.
    pub fn with_previous(mut self, previous: Vec<SigningKey>) -> Self {
        for k in &previous {
            self.verifying
                .push((key_id(&k.verifying_key()), k.verifying_key()));
        }
        self.previous.extend(previous);
        self
    }

    /// [`Keyring::load`] of `path`, trusting the keys at `previous` too.
    pub fn load_with_previous(
        path: &Path,
        previous: &[std::path::PathBuf],
    ) -> Result<Self, KeyError> {
        Ok(Self::load(path)?.with_previous(Self::load_previous(previous)?))
    }

    /// The keys at `paths`, for [`Keyring::with_previous`].
    pub fn load_previous(paths: &[std::path::PathBuf]) -> Result<Vec<SigningKey>, KeyError> {
        paths
            .iter()
            .map(|p| Self::load(p).map(|k| k.signing))
            .collect()
    }

    pub fn generate() -> Self {
        Self::new(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Reads a PKCS#8 PEM Ed25519 key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Format {
            path: path.display().to_string(),
        })?;
        Ok(Self::new(key))
    }

    /// Reads the key, creating it (mode 600) when the file does not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let ring = Self::generate();
        let pem = ring
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes");
        write_secret(path, pem.as_bytes()).map_err(|source| KeyError::Write {
            path: path.display().to_string(),
            source,
        })?;
        Ok((ring, true))
    }

    /// A 32-byte secret for one `purpose`, derived from the signing key, so
    /// other instance-bound MACs (link codes) need no key of their own.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        derive(&self.signing, purpose)
    }

    /// The secret for `purpose` from the signing key, then from each
    /// previous key (to verify what was made before a rotation).
    pub fn derive_secrets(&self, purpose: &str) -> Vec<[u8; 32]> {
        std::iter::once(&self.signing)
            .chain(&self.previous)
            .map(|k| derive(k, purpose))
            .collect()
    }

    /// The signing key's bytes (tests and key export only).
    pub fn signing_key_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// (key id, raw public key) for every verifying key.
    pub fn public_keys(&self) -> impl Iterator<Item = (&str, [u8; 32])> {
        self.verifying
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_bytes()))
    }
}

/// Writes a file readable only by its owner.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn derive(key: &SigningKey, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sovra derived secret v1\0");
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(key.to_bytes());
    h.finalize().into()
}

fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    crate::hex::encode(&digest[..8])
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    User(UserCaller),
    Operator,
    Service(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCaller {
    pub user_id: String,
    pub tenant_id: String,
    /// A token issued before a forced password change allows only that change.
    pub must_change_password: bool,
}

impl Caller {
    /// A stable string naming the principal (scopes idempotency keys).
    pub fn principal(&self) -> String {
        match self {
            Caller::User(u) => format!("user:{}", u.user_id),
            Caller::Operator => "operator".to_owned(),
            Caller::Service(s) => format!("service:{s}"),
        }
    }

    pub fn as_user(&self) -> Option<&UserCaller> {
        match self {
            Caller::User(u) => Some(u),
            _ => None,
        }
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Operator)
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service(_))
    }
}

/// The W3C trace id of the request, when it carried a `traceparent`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceId(pub String);

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    inst: String,
    sub: String,
    /// "user", "operator" or "service".
    knd: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tid: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pwc: bool,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Signs and verifies this instance's tokens.
#[derive(Clone)]
pub struct Authority {
    keys: Arc<Keyring>,
    issuer: String,
    instance: String,
    clock: SharedClock,
    verified: Arc<Mutex<HashMap<String, (Caller, Millis)>>>,
}

/// Tokens whose signature was checked, kept until they expire: a token is
/// presented on every call, and an Ed25519 verification costs more than the
/// rest of a `CheckAccess`. The whole token is the key (the same signature
/// with another payload is another token); at this many the cache starts over.
const VERIFIED_TOKENS: usize = 10_000;

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("issuer", &self.issuer)
            .field("instance", &self.instance)
            .finish()
    }
}

/// A signed token and when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub expires_at: Millis,
}

impl Authority {
    pub fn new(
        keys: Arc<Keyring>,
        issuer: impl Into<String>,
        instance: impl Into<String>,
        clock: SharedClock,
    ) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            instance: instance.into(),
            clock,
            verified: Arc::default(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Now, on the clock tokens are stamped with.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    pub fn issue_user(
        &self,
        user_id: &str,
        tenant_id: &str,
        must_change_password: bool,
        ttl_secs: u64,
    ) -> Token {
        self.issue("user", user_id, tenant_id, must_change_password, ttl_secs)
    }

    pub fn issue_operator(&self, ttl_secs: u64) -> Token {
        self.issue("operator", "operator", "", false, ttl_secs)
    }

    pub fn issue_service(&self, service: &str, ttl_secs: u64) -> Token {
        self.issue("service", service, "", false, ttl_secs)
    }

    fn issue(&self, kind: &str, sub: &str, tid: &str, pwc: bool, ttl_secs: u64) -> Token {
        let now = self.clock.now_ms() / 1000;
        let exp = now + ttl_secs as i64;
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.keys.signing_kid.clone(),
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            inst: self.instance.clone(),
            sub: sub.into(),
            knd: kind.into(),
            tid: tid.into(),
            pwc,
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("header serializes")),
            B64.encode(serde_json::to_vec(&claims).expect("claims serialize"))
        );
        let sig = self.keys.signing.sign(signing_input.as_bytes());
        Token {
            value: format!("{signing_input}.{}", B64.encode(sig.to_bytes())),
            expires_at: exp * 1000,
        }
    }

    /// Verifies a token and says who it names. Every failure is
    /// `UNAUTHENTICATED` with a message that says what to do.
    /// The caller a token names, once its instance, signature and expiry
    /// check out (see [`VERIFIED_TOKENS`] for the cache in front).
    pub fn verify(&self, token: &str) -> Result<Caller, Error> {
        let now = self.clock.now_ms();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((caller, expires_at)) = cache.get(token) {
                if *expires_at > now {
                    return Ok(caller.clone());
                }
            }
        }
        let (caller, expires_at) = self.verify_signed(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_TOKENS {
            cache.clear();
        }
        cache.insert(token.to_owned(), (caller.clone(), expires_at));
        Ok(caller)
    }

    fn verify_signed(&self, token: &str) -> Result<(Caller, Millis), Error> {
        let malformed = || {
            Error::unauthenticated(
                "TOKEN_MALFORMED",
                "the bearer token is not a Sovra access token",
            )
        };
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(malformed)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(malformed)?;
        // Name the foreign instance before checking a signature it can't pass.
        if claims.iss != self.issuer || claims.inst != self.instance {
            return Err(Error::unauthenticated(
                "TOKEN_FOREIGN_INSTANCE",
                format!(
                    "the token was issued by instance `{}` ({}); this is instance `{}`: sign in here",
                    claims.inst, claims.iss, self.instance
                ),
            ));
        }
        if header.alg != "EdDSA" {
            return Err(malformed());
        }
        let key = self
            .keys
            .verifying
            .iter()
            .find(|(kid, _)| *kid == header.kid)
            .map(|(_, k)| k)
            .ok_or_else(|| {
                Error::unauthenticated(
                    "TOKEN_KEY_UNKNOWN",
                    "the token was signed with a key this instance no longer trusts: sign in again",
                )
            })?;
        let sig_bytes: [u8; 64] = B64
            .decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        key.verify(
            format!("{h}.{p}").as_bytes(),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| {
            Error::unauthenticated(
                "TOKEN_SIGNATURE_INVALID",
                "the token's signature is invalid",
            )
        })?;
        if claims.exp * 1000 <= self.clock.now_ms() {
            return Err(Error::unauthenticated(
                "TOKEN_EXPIRED",
                "the token has expired: sign in again",
            ));
        }
        let caller = match claims.knd.as_str() {
            "user" if !claims.tid.is_empty() => Caller::User(UserCaller {
                user_id: claims.sub,
                tenant_id: claims.tid,
                must_change_password: claims.pwc,
            }),
            "operator" => Caller::Operator,
            "service" => Caller::Service(claims.sub),
            _ => return Err(malformed()),
        };
        Ok((caller, claims.exp * 1000))
    }
}

/// The interceptor in front of every service: verifies a bearer token when
/// one is sent and records the caller; methods that need one ask for it.
///
/// Under mutual TLS a service is known by its certificate: a call over a
/// connection whose client certificate names `spiffe://<instance>/<service>`
/// is that service's; a service token alone is refused, and one that names
/// another service than the certificate is refused too.
#[derive(Clone, Debug)]
pub struct Authenticator {
    authority: Authority,
    mtls: bool,
}

impl Authenticator {
    pub fn new(authority: Authority, mtls: bool) -> Self {
        Self { authority, mtls }
    }

    fn service_of_connection<T>(&self, req: &Request<T>) -> Option<String> {
        req.extensions()
            .get::<crate::tls::PeerInfo>()
            .and_then(|p| p.service(self.authority.instance()))
            .map(str::to_owned)
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(tp) = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            // version-traceid-spanid-flags; keep only a well-formed trace id.
            if let Some(id) = tp.split('-').nth(1).filter(|id| id.len() == 32) {
                let id = id.to_owned();
                req.extensions_mut().insert(TraceId(id));
            }
        }
        let cert_service = self.service_of_connection(&req);
        let Some(value) = req.metadata().get("authorization") else {
            if let Some(service) = cert_service {
                req.extensions_mut().insert(Caller::Service(service));
            }
            return Ok(req);
        };
        let value = value.to_str().map_err(|_| {
            Status::from(Error::unauthenticated(
                "TOKEN_MALFORMED",
                "the authorization header is not text",
            ))
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::from(Error::unauthenticated(
                    "TOKEN_MALFORMED",
                    "the authorization header must be `Bearer <token>`",
                ))
            })?;
        let caller = self.authority.verify(token.trim()).map_err(Status::from)?;
        if let Caller::Service(name) = &caller {
            if self.mtls && cert_service.as_deref() != Some(name.as_str()) {
                return Err(Status::from(Error::unauthenticated(
                    "SERVICE_CERTIFICATE_REQUIRED",
                    format!(
                        "service calls must come over mutual TLS with the `{name}` certificate of instance `{}`",
                        self.authority.instance()
                    ),
                )));
            }
        }
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The verified caller of a request; tokens pending a forced password change
/// are refused here (only `ChangePassword` takes them, through
/// [`caller_pending_password_change`]).
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Error> {
    let c = caller_pending_password_change(req)?;
    if matches!(&c, Caller::User(u) if u.must_change_password) {
        return Err(Error::failed_precondition(
            "PASSWORD_CHANGE_REQUIRED",
            "the password must be changed first: call AuthService.ChangePassword",
        ));
    }
    Ok(c)
}

/// The verified caller, accepting a token that only allows a password change.
pub fn caller_pending_password_change<T>(req: &Request<T>) -> Result<Caller, Error> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Error::unauthenticated(
            "TOKEN_MISSING",
            "this call needs `authorization: Bearer <token>`: sign in with AuthService.SignIn",
        )
    })
}

/// Who is calling, and the trace the call belongs to.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub trace_id: String,
}

impl Ctx {
    /// The signed-in user, or PERMISSION_DENIED for the operator and services.
    pub fn user(&self) -> Result<&UserCaller, Error> {
        match &self.caller {
            Caller::User(u) => Ok(u),
            _ => Err(Error::permission_denied(
                "USER_REQUIRED",
                "this call acts inside a tenant and needs a signed-in user's token",
            )),
        }
    }

    /// Ok when the caller is one of the Sovra `services`; else
    /// PERMISSION_DENIED saying who may call and who called.
    pub fn require_service(&self, services: &[&str], what: &str) -> Result<&str, Error> {
        match &self.caller {
            Caller::Service(s) if services.contains(&s.as_str()) => Ok(s),
            other => Err(Error::permission_denied(
                "SERVICE_REQUIRED",
                format!(
                    "only the {} service may {what}; this call came from {}",
                    services.join(" or "),
                    other.principal()
                ),
            )),
        }
    }

    /// The verified caller of `req` (see [`caller`]) and its trace id.
    /// A user's home tenant goes on the call's span until a check names
    /// the tenant the call acts in.
    pub fn of<T>(req: &Request<T>) -> Result<Ctx, Error> {
        let caller = caller(req)?;
        if let Caller::User(u) = &caller {
            crate::telemetry::record_tenant(&u.tenant_id);
        }
        Ok(Ctx {
            caller,
            trace_id: trace_id(req),
        })
    }
}

/// The request's trace id, or empty.
pub fn trace_id<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<TraceId>()
        .map(|t| t.0.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn authority(instance: &str, clock: ManualClock) -> Authority {
        Authority::new(
            Arc::new(Keyring::generate()),
            format!("https://login.example/{instance}"),
            instance,
            Arc::new(clock),
        )
    }

    #[test]
    fn a_token_round_trips_and_expires() {
        let clock = ManualClock::default();
        let a = authority("global", clock.clone());
        let t = a.issue_user("u1", "global_t1", false, 60);
        assert_eq!(
            a.verify(&t.value).unwrap(),
            Caller::User(UserCaller {
                user_id: "u1".into(),
                tenant_id: "global_t1".into(),
                must_change_password: false
            })
        );
        clock.advance(std::time::Duration::from_secs(61));
        assert_eq!(a.verify(&t.value).unwrap_err().reason, "TOKEN_EXPIRED");
    }

    #[test]
    fn tokens_signed_before_a_key_rotation_verify_until_the_old_key_is_dropped() {
        let clock: SharedClock = Arc::new(ManualClock::default());
        let old = Keyring::generate();
        let old_key = SigningKey::from_bytes(&old.signing_key_bytes());
        let before = Authority::new(Arc::new(old), "iss", "global", clock.clone());
        let t = before.issue_operator(60).value;
        let rotated = Keyring::generate().with_previous(vec![old_key]);
        let overlap = Authority::new(Arc::new(rotated), "iss", "global", clock.clone());
        assert_eq!(overlap.verify(&t).unwrap(), Caller::Operator);
        let after = Authority::new(Arc::new(Keyring::generate()), "iss", "global", clock);
        assert_eq!(after.verify(&t).unwrap_err().reason, "TOKEN_KEY_UNKNOWN");
    }

    #[test]
    fn a_foreign_instance_token_is_named() {
        let g = authority("global", ManualClock::default());
        let c = authority("china", ManualClock::default());
        let e = g.verify(&c.issue_operator(60).value).unwrap_err();
        assert_eq!(e.reason, "TOKEN_FOREIGN_INSTANCE");
        assert!(e.message.contains("`china`"), "{}", e.message);
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let a = authority("global", ManualClock::default());
        let t = a.issue_user("u1", "global_t1", false, 60).value;
        // The genuine token verified (and cached) first: its signature must
        // not vouch for another payload.
        assert!(a.verify(&t).is_ok());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(
            serde_json::to_vec(&serde_json::json!({
                "iss": "https://login.example/global", "inst": "global", "sub": "operator",
                "knd": "operator", "iat": 0, "exp": i64::MAX / 2000, "jti": "x"
            }))
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            a.verify(&parts.join(".")).unwrap_err().reason,
            "TOKEN_SIGNATURE_INVALID"
        );
        assert_eq!(a.verify("abc").unwrap_err().reason, "TOKEN_MALFORMED");
    }
}
