//! PKCS#11 backend: the data key is encrypted inside a token (an HSM, or
//! SoftHSM for tests) by a key that never leaves it.
//!
//! Two mechanisms, chosen at seal time from the key the URI names:
//! - `aes-gcm`: `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM` under an AES-256
//!   secret key; 96-bit IV, 128-bit tag, AAD [`AAD`]. The IV is read back
//!   after encrypting, because some HSMs (AWS CloudHSM) write their own.
//! - `rsa-oaep`: `C_Encrypt` with `CKM_RSA_PKCS_OAEP` under the public key,
//!   `C_Decrypt` under the private key; MGF1 with the same hash, no label.
//!   Sealing needs only the public key object (and no PIN if it is public).
//!
//! These are the pair that works across SoftHSM, CloudHSM and YubiHSM (which
//! lacks AES-GCM): see `hsm/profiles/`.
//!
//! # Stanza
//! ```text
//! -> pkcs11
//! uri: pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin
//! mechanism: aes-gcm                 (or rsa-oaep)
//! key-id: q83vASNFZ4k=               (base64 CKA_ID of the key used; absent if it has none)
//! iv: AAECAwQFBgcICQoL               (aes-gcm: base64, 12 bytes)
//! aad: sesame-v1-data-key            (aes-gcm: the associated data, fixed in v1)
//! hash: sha1                         (rsa-oaep: sha1, sha256, sha384 or sha512)
//! wrapped: …                         (base64: 48 bytes for aes-gcm, the modulus size for rsa-oaep)
//! ```
//! The URI is the canonical form of the one given at seal time (see
//! [`uri`]); it never holds a PIN. Unknown fields are refused.

mod token;
pub mod uri;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use zeroize::Zeroizing;

use self::token::{show_id, Access, PinSupply, Protection, Token, Usage, PIN_HINT};
pub use self::uri::{ObjectType, Pkcs11Uri, UriError};
use crate::backend::{BackendError, KeyBackend};
use crate::format::{FormatError, Stanza};
use crate::pin::{PinError, PinSource};
use crate::secret::{DataKey, Pin, DATA_KEY_LEN};

/// Stanza type.
pub const KIND: &str = "pkcs11";

/// The AES-GCM associated data: binds a wrapping to its purpose, so a
/// ciphertext made by the same key for something else is not accepted.
pub const AAD: &str = "sesame-v1-data-key";

/// AES-GCM IV length in bytes (96 bits, the standard size).
const IV_LEN: usize = 12;
/// AES-GCM tag length in bits.
const TAG_BITS: u64 = 128;
/// AES-GCM tag length in bytes.
const TAG_LEN: usize = 16;
/// Length of the `CKA_ID` given to keys `create-key` makes.
const NEW_ID_LEN: usize = 16;

/// Asks the user for a token's PIN (the CLI supplies this when on a terminal;
/// the argument is the token label).
pub type PinPrompt = Box<dyn FnMut(&str) -> Result<Pin, PinError>>;

/// Where the PIN for a URI comes from besides the URI's own `pin-source`.
///
/// Precedence, for every operation: [`PinSources::overriding`] (the
/// `--pkcs11-pin-source` flag), else the URI's `pin-source`, else
/// [`PinSources::fallback`] (the config file's `pkcs11_pin_source`), else a
/// [`PinPrompt`] on a terminal, else no login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinSources {
    /// Wins over the URI's `pin-source` (the command-line flag).
    pub overriding: Option<PinSource>,
    /// Used only for a URI without `pin-source` (the configured default).
    pub fallback: Option<PinSource>,
}

impl PinSources {
    /// The source that applies to `uri`, if any.
    pub fn for_uri<'a>(&'a self, uri: &'a Pkcs11Uri) -> Option<&'a PinSource> {
        self.overriding
            .as_ref()
            .or(uri.pin_source.as_ref())
            .or(self.fallback.as_ref())
    }
}

/// The hash of RSA-OAEP (and of its MGF1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-1: the only one SoftHSM 2.6 supports. OAEP with SHA-1 is still
    /// sound (it relies on neither collision resistance nor length).
    Sha1,
    /// SHA-256, the default.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl OaepHash {
    /// The default when sealing.
    pub const DEFAULT: Self = Self::Sha256;

    /// Parses `sha1`, `sha256`, `sha384` or `sha512`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The name written in the stanza.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn params(self) -> PkcsOaepParams<'static> {
        let (hash, mgf) = match self {
            Self::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            Self::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            Self::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
            Self::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        };
        PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty())
    }
}

/// How the data key is wrapped, with the mechanism's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wrapping {
    AesGcm { iv: [u8; IV_LEN] },
    RsaOaep { hash: OaepHash },
}

impl Wrapping {
    fn id(&self) -> &'static str {
        match self {
            Self::AesGcm { .. } => "aes-gcm",
            Self::RsaOaep { .. } => "rsa-oaep",
        }
    }
}

/// A decoded `pkcs11` stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pkcs11Stanza {
    uri: Pkcs11Uri,
    wrapping: Wrapping,
    key_id: Vec<u8>,
    wrapped: Vec<u8>,
}

impl Pkcs11Stanza {
    fn encode(&self) -> Stanza {
        let mut s = Stanza::new(KIND)
            .with("uri", self.uri.to_string())
            .with("mechanism", self.wrapping.id());
        if !self.key_id.is_empty() {
            s = s.with_bytes("key-id", &self.key_id);
        }
        s = match &self.wrapping {
            Wrapping::AesGcm { iv } => s.with_bytes("iv", iv).with("aad", AAD),
            Wrapping::RsaOaep { hash } => s.with("hash", hash.as_str()),
        };
        s.with_bytes("wrapped", &self.wrapped)
    }

    fn decode(stanza: &Stanza) -> Result<Self, FormatError> {
        let invalid = |field: &str, reason: String| FormatError::InvalidValue {
            field: format!("{KIND}.{field}"),
            reason,
        };
        let uri =
            Pkcs11Uri::parse(stanza.require("uri")?).map_err(|e| invalid("uri", e.to_string()))?;
        let wrapping = match stanza.require("mechanism")? {
            "aes-gcm" => {
                stanza.only_fields(&["uri", "mechanism", "key-id", "iv", "aad", "wrapped"])?;
                if stanza.require("aad")? != AAD {
                    return Err(invalid("aad", format!("must be {AAD:?} in this version")));
                }
                let iv = stanza.require_bytes("iv")?;
                let iv = <[u8; IV_LEN]>::try_from(iv.as_slice())
                    .map_err(|_| invalid("iv", format!("must be {IV_LEN} bytes")))?;
                Wrapping::AesGcm { iv }
            }
            "rsa-oaep" => {
                stanza.only_fields(&["uri", "mechanism", "key-id", "hash", "wrapped"])?;
                let hash = OaepHash::parse(stanza.require("hash")?).ok_or_else(|| {
                    invalid("hash", "must be sha1, sha256, sha384 or sha512".into())
                })?;
                Wrapping::RsaOaep { hash }
            }
            other => {
                return Err(invalid(
                    "mechanism",
                    format!("{other:?} is not aes-gcm or rsa-oaep (upgrade sesame?)"),
                ))
            }
        };
        let key_id = match stanza.field("key-id") {
            Some(_) => stanza.require_bytes("key-id")?,
            None => Vec::new(),
        };
        let wrapped = stanza.require_bytes("wrapped")?;
        let plausible = match wrapping {
            Wrapping::AesGcm { .. } => wrapped.len() == DATA_KEY_LEN + TAG_LEN,
            // RSA-2048 and up; OAEP needs the modulus to exceed the hash overhead.
            Wrapping::RsaOaep { .. } => (256..=1024).contains(&wrapped.len()),
        };
        if !plausible {
            return Err(invalid(
                "wrapped",
                format!(
                    "{} bytes is not a {} wrapping",
                    wrapped.len(),
                    wrapping.id()
                ),
            ));
        }
        Ok(Self {
            uri,
            wrapping,
            key_id,
            wrapped,
        })
    }
}

/// Wraps the data key with a key held in a PKCS#11 token.
pub struct Pkcs11Backend {
    seal_uri: Option<Pkcs11Uri>,
    oaep_hash: OaepHash,
    /// When re-creating a stanza: the mechanism and `CKA_ID` of the key it
    /// was made with, which the URI must still name.
    reseal_of: Option<(&'static str, Vec<u8>)>,
    pins: PinSources,
    pin_prompt: Option<PinPrompt>,
}

impl Pkcs11Backend {
    /// For sealing to the key named by the RFC 7512 `uri`, with its PIN as
    /// [`PinSources`] says. The token is not touched until
    /// [`KeyBackend::wrap`].
    ///
    /// # Errors
    /// [`BackendError::Config`] if the URI does not parse, lacks a
    /// `module-path`, or does not name both a token and a key.
    pub fn for_sealing(
        uri: &str,
        pins: PinSources,
        pin_prompt: Option<PinPrompt>,
    ) -> Result<Self, BackendError> {
        let uri = parse_uri(uri)?;
        require_token_and_key(&uri)?;
        Ok(Self {
            seal_uri: Some(uri),
            oaep_hash: OaepHash::DEFAULT,
            reseal_of: None,
            pins,
            pin_prompt,
        })
    }

    /// For sealing a new data key to the same key as an existing `stanza`
    /// (`rewrap --keep`, `rotate`): its recorded URI, and for RSA its OAEP
    /// hash. [`KeyBackend::wrap`] refuses if the URI now names a key of
    /// another mechanism or `CKA_ID` than the one recorded, so a replaced key
    /// is noticed instead of silently sealed to. The PIN as [`PinSources`]
    /// says, with the recorded URI's `pin-source`.
    ///
    /// # Errors
    /// [`BackendError::Stanza`] if the stanza is malformed.
    pub fn for_resealing(
        stanza: &Stanza,
        pins: PinSources,
        pin_prompt: Option<PinPrompt>,
    ) -> Result<Self, BackendError> {
        let st = Pkcs11Stanza::decode(stanza).map_err(|source| BackendError::Stanza {
            backend: KIND,
            source,
        })?;
        let oaep_hash = match st.wrapping {
            Wrapping::RsaOaep { hash } => hash,
            Wrapping::AesGcm { .. } => OaepHash::DEFAULT,
        };
        Ok(Self {
            seal_uri: Some(st.uri),
            oaep_hash,
            reseal_of: Some((st.wrapping.id(), st.key_id)),
            pins,
            pin_prompt,
        })
    }

    /// Sets the RSA-OAEP hash used when the key turns out to be RSA
    /// (default [`OaepHash::DEFAULT`]).
    pub fn with_oaep_hash(mut self, hash: OaepHash) -> Self {
        self.oaep_hash = hash;
        self
    }

    /// For unsealing: the URI comes from each stanza; the PIN as
    /// [`PinSources`] says, with the stanza URI's `pin-source`.
    pub fn for_unsealing(pins: PinSources, pin_prompt: Option<PinPrompt>) -> Self {
        Self {
            seal_uri: None,
            oaep_hash: OaepHash::DEFAULT,
            reseal_of: None,
            pins,
            pin_prompt,
        }
    }
}

impl KeyBackend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn wrap(&mut self, key: &DataKey) -> Result<Stanza, BackendError> {
        let Some(uri) = self.seal_uri.clone() else {
            return Err(BackendError::Config {
                backend: KIND,
                reason: "no URI to seal to".into(),
                hint: "pass --pkcs11 URI".into(),
            });
        };
        let pin = pin_supply(&self.pins, &mut self.pin_prompt, &uri)?;
        let token = Token::open(&uri, Access::ReadOnly, pin)?;
        let seal_key = select_seal_key(&token, &uri)?;
        require_non_extractable(&token, &uri, &seal_key)?;
        if let Some((mechanism, key_id)) = &self.reseal_of {
            let (found, handle) = match &seal_key {
                SealKey::Aes(h) => ("aes-gcm", *h),
                SealKey::Rsa(h) => ("rsa-oaep", *h),
            };
            if found != *mechanism || token.id_of(handle)? != *key_id {
                return Err(BackendError::Refused {
                    backend: KIND,
                    reason: format!(
                        "{} (token {:?}) is no longer the key the existing stanza was sealed with ({} key, id {})",
                        uri.describe(),
                        token.label,
                        mechanism,
                        show_id(key_id),
                    ),
                    hint: "name the new key with --pkcs11 URI instead of keeping the old stanza".into(),
                });
            }
        }
        let stanza = match seal_key {
            SealKey::Aes(handle) => {
                token.require_mechanism(MechanismType::AES_GCM, "AES-GCM", Usage::Encrypt)?;
                let mut iv = [0u8; IV_LEN];
                getrandom::getrandom(&mut iv).map_err(|_| BackendError::Unavailable {
                    backend: KIND,
                    reason: "the system random number generator failed".into(),
                    hint: String::new(),
                })?;
                let wrapped = {
                    let params = GcmParams::new(&mut iv, AAD.as_bytes(), TAG_BITS.into())
                        .map_err(|e| token.error(&e, &uri, "set up AES-GCM on"))?;
                    token
                        .session()
                        .encrypt(&Mechanism::AesGcm(params), handle, key.expose())
                        .map_err(|e| encrypt_error(&token, &uri, &e, None))?
                };
                // `iv` now holds the IV the token used: CloudHSM replaces ours.
                Pkcs11Stanza {
                    uri: uri.clone(),
                    wrapping: Wrapping::AesGcm { iv },
                    key_id: token.id_of(handle)?,
                    wrapped,
                }
            }
            SealKey::Rsa(handle) => {
                token.require_mechanism(
                    MechanismType::RSA_PKCS_OAEP,
                    "RSA-OAEP",
                    Usage::Encrypt,
                )?;
                let hash = self.oaep_hash;
                let wrapped = token
                    .session()
                    .encrypt(&Mechanism::RsaPkcsOaep(hash.params()), handle, key.expose())
                    .map_err(|e| encrypt_error(&token, &uri, &e, Some(hash)))?;
                Pkcs11Stanza {
                    uri: uri.clone(),
                    wrapping: Wrapping::RsaOaep { hash },
                    key_id: token.id_of(handle)?,
                    wrapped,
                }
            }
        };
        tracing::info!(
            token = %token.label,
            mechanism = stanza.wrapping.id(),
            key_id = %show_id(&stanza.key_id),
            "data key wrapped"
        );
        // The canonical URI leaves out ignored vendor attributes.
        Ok(stanza.encode())
    }

    fn unwrap(&mut self, stanza: &Stanza) -> Result<DataKey, BackendError> {
        let st = Pkcs11Stanza::decode(stanza).map_err(|source| BackendError::Stanza {
            backend: KIND,
            source,
        })?;
        let uri = &st.uri;
        let pin = pin_supply(&self.pins, &mut self.pin_prompt, uri)?;
        let token = Token::open(uri, Access::ReadOnly, pin)?;
        let (class, key_type) = match st.wrapping {
            Wrapping::AesGcm { .. } => {
                token.require_mechanism(MechanismType::AES_GCM, "AES-GCM", Usage::Decrypt)?;
                (ObjectClass::SECRET_KEY, KeyType::AES)
            }
            Wrapping::RsaOaep { .. } => {
                token.require_mechanism(
                    MechanismType::RSA_PKCS_OAEP,
                    "RSA-OAEP",
                    Usage::Decrypt,
                )?;
                (ObjectClass::PRIVATE_KEY, KeyType::RSA)
            }
        };
        let handle = find_unseal_key(&token, uri, class, key_type, &st.key_id)?;
        let plain = match &st.wrapping {
            Wrapping::AesGcm { iv } => {
                let mut iv = *iv;
                let params = GcmParams::new(&mut iv, AAD.as_bytes(), TAG_BITS.into())
                    .map_err(|e| token.error(&e, uri, "set up AES-GCM on"))?;
                token
                    .session()
                    .decrypt(&Mechanism::AesGcm(params), handle, &st.wrapped)
            }
            Wrapping::RsaOaep { hash } => {
                token
                    .session()
                    .decrypt(&Mechanism::RsaPkcsOaep(hash.params()), handle, &st.wrapped)
            }
        }
        .map(Zeroizing::new)
        .map_err(|e| decrypt_error(&token, uri, &e))?;
        let key = DataKey::from_slice(&plain).ok_or_else(|| different_key(&token, uri))?;
        tracing::info!(token = %token.label, mechanism = st.wrapping.id(), "data key unwrapped");
        Ok(key)
    }
}

/// Whether the PKCS#11 `stanza` was sealed to the key that `uri` names (same
/// module, token and key attributes; the PIN source does not matter). False
/// when either does not parse.
pub fn names_same_key(stanza: &Stanza, uri: &str) -> bool {
    let (Ok(st), Ok(uri)) = (Pkcs11Stanza::decode(stanza), Pkcs11Uri::parse(uri)) else {
        return false;
    };
    let key = |u: &Pkcs11Uri| {
        (
            u.module_path.clone(),
            u.token.clone(),
            u.manufacturer.clone(),
            u.model.clone(),
            u.serial.clone(),
            u.object.clone(),
            u.id.clone(),
            u.object_type,
        )
    };
    key(&st.uri) == key(&uri)
}

/// The kind of key `create-key` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewKey {
    /// An AES-256 secret key (mechanism `aes-gcm`).
    Aes,
    /// An RSA key pair of this many bits (mechanism `rsa-oaep`).
    Rsa {
        /// Modulus size: 2048, 3072 or 4096.
        bits: u32,
    },
}

/// What `create-key` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedKey {
    /// The token's label.
    pub token: String,
    /// The key's label (`object=`).
    pub label: String,
    /// The key's `CKA_ID` (shared by both halves of an RSA pair).
    pub id: Vec<u8>,
    /// The mechanism `seal` will use with it.
    pub mechanism: &'static str,
    /// A URI naming exactly this key (the given one plus `id=`).
    pub uri: String,
}

/// Creates a key on the token named by `uri`, labelled with its `object=`:
/// a token object, private, sensitive and never extractable, usable only to
/// encrypt and decrypt (an RSA public key only to encrypt, the private key
/// only to decrypt). The id is the URI's `id=` or 16 random bytes.
///
/// # Errors
/// [`BackendError::Exists`] if any object on the token already has that
/// label; [`BackendError::Config`] for a URI without `object=` or a PIN
/// source; otherwise as for unsealing.
pub fn create_key(
    uri: &str,
    new: NewKey,
    pins: &PinSources,
    mut pin_prompt: Option<PinPrompt>,
) -> Result<CreatedKey, BackendError> {
    let mut uri = parse_uri(uri)?;
    require_token_and_key(&uri)?;
    let config = |reason: String, hint: &str| BackendError::Config {
        backend: KIND,
        reason,
        hint: hint.to_owned(),
    };
    let Some(label) = uri.object.clone().filter(|l| !l.is_empty()) else {
        return Err(config(
            "the URI has no object= label for the new key".into(),
            "add ;object=LABEL to the URI",
        ));
    };
    let type_fits = match (new, uri.object_type) {
        (_, None) => true,
        (NewKey::Aes, Some(t)) => t == ObjectType::SecretKey,
        (NewKey::Rsa { .. }, Some(t)) => t != ObjectType::SecretKey,
    };
    if !type_fits {
        return Err(config(
            "type= in the URI does not match --type".into(),
            "drop type= from the URI",
        ));
    }
    if let NewKey::Rsa { bits } = new {
        if ![2048, 3072, 4096].contains(&bits) {
            return Err(config(
                format!("{bits}-bit RSA keys are not offered"),
                "use --bits 2048, 3072 or 4096",
            ));
        }
    }
    let pin = pin_supply(pins, &mut pin_prompt, &uri)?;
    if matches!(pin, PinSupply::None) {
        return Err(config(
            format!("creating a key needs the PIN of {}", uri.describe()),
            PIN_HINT,
        ));
    }
    let token = Token::open(&uri, Access::ReadWrite, pin)?;
    if !token.find_label(&label)?.is_empty() {
        return Err(BackendError::Exists {
            backend: KIND,
            reason: format!(
                "token {:?} already has an object labelled {label:?}",
                token.label
            ),
            hint: "choose another object= label; delete the old key only if no sealed file uses it"
                .into(),
        });
    }
    let id = match &uri.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let mut id = vec![0u8; NEW_ID_LEN];
            getrandom::getrandom(&mut id).map_err(|_| BackendError::Unavailable {
                backend: KIND,
                reason: "the system random number generator failed".into(),
                hint: String::new(),
            })?;
            id
        }
    };
    let common = |class: ObjectClass, key_type: KeyType| {
        vec![
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ]
    };
    // Every usage not needed is switched off explicitly: token defaults vary.
    // (CKA_WRAP exists only on secret and public keys.)
    let secret_attrs = [
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    let mechanism = match new {
        NewKey::Aes => {
            token.require_mechanism(MechanismType::AES_KEY_GEN, "AES", Usage::Generate)?;
            token.require_mechanism(MechanismType::AES_GCM, "AES-GCM", Usage::Encrypt)?;
            let mut template = common(ObjectClass::SECRET_KEY, KeyType::AES);
            template.extend(secret_attrs);
            template.extend([
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Verify(false),
                Attribute::Wrap(false),
            ]);
            token
                .session()
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| token.error(&e, &uri, "generate an AES key on"))?;
            "aes-gcm"
        }
        NewKey::Rsa { bits } => {
            token.require_mechanism(
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "RSA",
                Usage::Generate,
            )?;
            token.require_mechanism(MechanismType::RSA_PKCS_OAEP, "RSA-OAEP", Usage::Decrypt)?;
            let mut public = common(ObjectClass::PUBLIC_KEY, KeyType::RSA);
            // Public on purpose: an admin can seal with it without the PIN.
            public.extend([
                Attribute::Private(false),
                Attribute::ModulusBits(u64::from(bits).into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Encrypt(true),
                Attribute::Verify(false),
                Attribute::Wrap(false),
            ]);
            let mut private = common(ObjectClass::PRIVATE_KEY, KeyType::RSA);
            private.extend(secret_attrs);
            private.push(Attribute::Decrypt(true));
            token
                .session()
                .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
                .map_err(|e| token.error(&e, &uri, "generate an RSA key pair on"))?;
            "rsa-oaep"
        }
    };
    tracing::info!(token = %token.label, key = %label, id = %hex::encode(&id), mechanism, "key created");
    uri.id = Some(id.clone());
    Ok(CreatedKey {
        token: token.label.clone(),
        label,
        id,
        mechanism,
        uri: uri.to_string(),
    })
}

fn parse_uri(text: &str) -> Result<Pkcs11Uri, BackendError> {
    let uri = Pkcs11Uri::parse(text).map_err(|e| BackendError::Config {
        backend: KIND,
        reason: format!("bad PKCS#11 URI: {e}"),
        hint: "see RFC 7512; e.g. pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin".into(),
    })?;
    if !uri.ignored.is_empty() {
        tracing::info!(attributes = %uri.ignored.join(","), "ignoring vendor attributes in the PKCS#11 URI");
    }
    Ok(uri)
}

fn require_token_and_key(uri: &Pkcs11Uri) -> Result<(), BackendError> {
    let missing = if uri.token.is_none() && uri.serial.is_none() {
        Some("a token (token= or serial=)")
    } else if uri.object.is_none() && uri.id.is_none() {
        Some("a key (object= or id=)")
    } else if uri.module_path.is_none() {
        Some("the module (?module-path=)")
    } else {
        None
    };
    match missing {
        None => Ok(()),
        Some(what) => Err(BackendError::Config {
            backend: KIND,
            reason: format!("the PKCS#11 URI does not name {what}"),
            hint: "e.g. pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin (module paths: hsm/profiles/)".into(),
        }),
    }
}

/// The PIN, from the source [`PinSources::for_uri`] picks, or a prompt; none
/// of them means "no login" (only public objects visible).
fn pin_supply<'a>(
    pins: &PinSources,
    prompt: &'a mut Option<PinPrompt>,
    uri: &Pkcs11Uri,
) -> Result<PinSupply<'a>, BackendError> {
    if let Some(source) = pins.for_uri(uri) {
        let pin = source.read().map_err(|e| BackendError::Config {
            backend: KIND,
            reason: format!("cannot read the PIN for {}: {e}", uri.describe()),
            hint: match e {
                PinError::TooOpen { .. } => "chmod 600 the PIN file".into(),
                _ => PIN_HINT.into(),
            },
        })?;
        return Ok(PinSupply::Ready(pin));
    }
    Ok(match prompt {
        Some(p) => PinSupply::Prompt(p.as_mut()),
        None => PinSupply::None,
    })
}

enum SealKey {
    Aes(ObjectHandle),
    Rsa(ObjectHandle),
}

/// The key `seal` wraps with: an AES secret key, or an RSA public key.
fn select_seal_key(token: &Token, uri: &Pkcs11Uri) -> Result<SealKey, BackendError> {
    let want = uri.object_type;
    let secret = if want.is_none_or(|t| t == ObjectType::SecretKey) {
        token.find(uri, ObjectClass::SECRET_KEY, KeyType::AES, None)?
    } else {
        Vec::new()
    };
    let public = if want.is_none_or(|t| t != ObjectType::SecretKey) {
        token.find(uri, ObjectClass::PUBLIC_KEY, KeyType::RSA, None)?
    } else {
        Vec::new()
    };
    match (secret.as_slice(), public.as_slice()) {
        ([aes], []) => Ok(SealKey::Aes(*aes)),
        ([], [rsa]) => Ok(SealKey::Rsa(*rsa)),
        ([], []) => {
            let private = token.find(uri, ObjectClass::PRIVATE_KEY, KeyType::RSA, None)?;
            if !private.is_empty() {
                return Err(BackendError::Config {
                    backend: KIND,
                    reason: format!(
                        "{} is an RSA private key without its public key object",
                        uri.describe()
                    ),
                    hint: "import the public key into the token with the same label and id".into(),
                });
            }
            Err(key_missing(token, uri))
        }
        _ => Err(BackendError::Config {
            backend: KIND,
            reason: format!("several keys match {}", uri.describe()),
            hint: "add id= or type= to the URI to name one key".into(),
        }),
    }
}

/// Refuses to seal to a key whose value can leave the token: the data key
/// would then be only as safe as every copy of that key. An AES key must be
/// sensitive and non-extractable (and never have been extractable, where the
/// token says). For RSA the secret half is the private key: checked the same
/// way when logged in; without a PIN only the public key is visible, so the
/// admin must have made the pair with `create-key` or checked it.
fn require_non_extractable(
    token: &Token,
    uri: &Pkcs11Uri,
    key: &SealKey,
) -> Result<(), BackendError> {
    let check = |subject: &str, handle: ObjectHandle| -> Result<(), BackendError> {
        let protection: Protection = token.protection(handle)?;
        tracing::debug!(key = subject, ?protection, "key export attributes");
        match protection.weakness() {
            None => Ok(()),
            Some(why) => Err(BackendError::Config {
                backend: KIND,
                reason: format!("refusing to seal to {}: {subject} {why}", uri.describe()),
                hint: "seal to a key made with `sesame pkcs11 create-key URI --type aes|rsa`, or one with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false (see docs/pkcs11.md)".into(),
            }),
        }
    };
    match *key {
        SealKey::Aes(handle) => check("it", handle),
        SealKey::Rsa(public) => {
            if !token.logged_in {
                tracing::info!(
                    token = %token.label,
                    "sealing to an RSA public key without a PIN: whether its private key is non-extractable cannot be checked; make sure it was made with `sesame pkcs11 create-key` or check it"
                );
                return Ok(());
            }
            let id = token.id_of(public)?;
            let private = token.find(
                uri,
                ObjectClass::PRIVATE_KEY,
                KeyType::RSA,
                Some(id.as_slice()).filter(|id| !id.is_empty()),
            )?;
            if private.is_empty() {
                tracing::warn!(
                    token = %token.label,
                    key_id = %show_id(&id),
                    "the RSA private key is not on this token: whether it is non-extractable cannot be checked"
                );
            }
            private
                .into_iter()
                .try_for_each(|handle| check("its private key", handle))
        }
    }
}

/// The key `unseal` decrypts with: the URI's key, and if the stanza recorded
/// a key id, that exact key (so a replaced key is reported as such).
fn find_unseal_key(
    token: &Token,
    uri: &Pkcs11Uri,
    class: ObjectClass,
    key_type: KeyType,
    key_id: &[u8],
) -> Result<ObjectHandle, BackendError> {
    let id = Some(key_id).filter(|id| !id.is_empty());
    let found = token.find(uri, class, key_type, id)?;
    match found.as_slice() {
        [key] => Ok(*key),
        [] if id.is_some() => {
            let others = token.find(uri, class, key_type, None)?;
            if others.is_empty() {
                return Err(key_missing(token, uri));
            }
            let ids: Vec<String> = others
                .iter()
                .map(|&k| token.id_of(k).map(|id| show_id(&id)))
                .collect::<Result<_, _>>()?;
            Err(BackendError::Refused {
                backend: KIND,
                reason: format!(
                    "key different: this file was sealed to the key with id {} but {} has id {}",
                    show_id(key_id),
                    uri.describe(),
                    ids.join(", ")
                ),
                hint: "the key was replaced or this is another token; unseal where the original key is, or seal again".into(),
            })
        }
        [] => Err(key_missing(token, uri)),
        _ => Err(BackendError::Config {
            backend: KIND,
            reason: format!("several keys match {}", uri.describe()),
            hint: "give the keys distinct labels or ids".into(),
        }),
    }
}

fn key_missing(token: &Token, uri: &Pkcs11Uri) -> BackendError {
    if !token.logged_in {
        // Private objects are invisible before login: "missing" would mislead.
        return BackendError::Config {
            backend: KIND,
            reason: format!(
                "no PIN to log in to token {:?} and find {}",
                token.label,
                uri.describe()
            ),
            hint: PIN_HINT.into(),
        };
    }
    BackendError::Refused {
        backend: KIND,
        reason: format!("key missing: no {}", uri.describe()),
        hint: "create it with `sesame pkcs11 create-key URI --type aes|rsa`, or check object=/id= and that this is the right token".into(),
    }
}

fn different_key(token: &Token, uri: &Pkcs11Uri) -> BackendError {
    BackendError::Refused {
        backend: KIND,
        reason: format!(
            "{} (token {:?}) could not decrypt this file's stanza: it was sealed with a different key, or the stanza is damaged",
            uri.describe(),
            token.label
        ),
        hint: "unseal where the key it was sealed to is, or restore the file".into(),
    }
}

fn decrypt_error(token: &Token, uri: &Pkcs11Uri, e: &CkError) -> BackendError {
    match e {
        CkError::Pkcs11(
            RvError::GeneralError
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange,
            _,
        ) => different_key(token, uri),
        CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => BackendError::Refused {
            backend: KIND,
            reason: format!("{} may not decrypt (CKA_DECRYPT is false)", uri.describe()),
            hint: "use a key made with `sesame pkcs11 create-key`".into(),
        },
        other => token.error(other, uri, "decrypt with"),
    }
}

fn encrypt_error(
    token: &Token,
    uri: &Pkcs11Uri,
    e: &CkError,
    hash: Option<OaepHash>,
) -> BackendError {
    match (e, hash) {
        (
            CkError::Pkcs11(RvError::ArgumentsBad | RvError::MechanismParamInvalid, _),
            Some(hash),
        ) if hash != OaepHash::Sha1 => BackendError::Config {
            backend: KIND,
            reason: format!(
                "token {:?} refused RSA-OAEP with {} (SoftHSM 2.6 supports only SHA-1)",
                token.label,
                hash.as_str()
            ),
            hint: "seal again with --pkcs11-oaep-hash sha1".into(),
        },
        (CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _), _) => BackendError::Refused {
            backend: KIND,
            reason: format!("{} may not encrypt (CKA_ENCRYPT is false)", uri.describe()),
            hint: "use a key made with `sesame pkcs11 create-key`".into(),
        },
        (other, _) => token.error(other, uri, "encrypt with"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(wrapping: Wrapping, wrapped_len: usize) -> Pkcs11Stanza {
        Pkcs11Stanza {
            uri: Pkcs11Uri::parse(
                "pkcs11:token=sesame;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin",
            )
            .unwrap(),
            wrapping,
            key_id: vec![0xab, 0xcd],
            wrapped: vec![7; wrapped_len],
        }
    }

    #[test]
    fn stanza_round_trips() {
        let aes = sample(Wrapping::AesGcm { iv: [1; IV_LEN] }, 48);
        let encoded = aes.encode();
        let keys: Vec<&str> = encoded.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["uri", "mechanism", "key-id", "iv", "aad", "wrapped"]);
        assert_eq!(encoded.field("aad"), Some(AAD));
        assert_eq!(Pkcs11Stanza::decode(&encoded).unwrap(), aes);

        let mut rsa = sample(
            Wrapping::RsaOaep {
                hash: OaepHash::Sha1,
            },
            256,
        );
        rsa.key_id.clear();
        let encoded = rsa.encode();
        assert_eq!(encoded.field("hash"), Some("sha1"));
        assert_eq!(encoded.field("key-id"), None);
        assert_eq!(Pkcs11Stanza::decode(&encoded).unwrap(), rsa);
    }

    #[test]
    fn stanza_rejects_bad_fields() {
        let good = sample(Wrapping::AesGcm { iv: [1; IV_LEN] }, 48).encode();
        let edit = |key: &str, value: Option<&str>| {
            let mut s = good.clone();
            s.fields.retain(|(k, _)| k != key);
            if let Some(v) = value {
                s = s.with(key, v);
            }
            Pkcs11Stanza::decode(&s).unwrap_err()
        };
        assert!(matches!(
            edit("wrapped", None),
            FormatError::MissingStanzaField { .. }
        ));
        assert!(matches!(
            edit("iv", None),
            FormatError::MissingStanzaField { .. }
        ));
        assert!(matches!(
            edit("iv", Some("AAEC")),
            FormatError::InvalidValue { .. }
        ));
        assert!(matches!(
            edit("aad", Some("other")),
            FormatError::InvalidValue { .. }
        ));
        assert!(matches!(
            edit("wrapped", Some("AAEC")),
            FormatError::InvalidValue { .. }
        ));
        assert!(matches!(
            edit("mechanism", Some("des")),
            FormatError::InvalidValue { .. }
        ));
        assert!(matches!(
            edit("uri", Some("pkcs11:token=t?pin-value=1234")),
            FormatError::InvalidValue { .. }
        ));
        assert!(matches!(
            edit("extra", Some("x")),
            FormatError::UnknownStanzaField { .. }
        ));
        // A field of the other mechanism is unknown here.
        assert!(matches!(
            edit("hash", Some("sha1")),
            FormatError::UnknownStanzaField { .. }
        ));
    }

    #[test]
    fn oaep_hash_names() {
        for h in [
            OaepHash::Sha1,
            OaepHash::Sha256,
            OaepHash::Sha384,
            OaepHash::Sha512,
        ] {
            assert_eq!(OaepHash::parse(h.as_str()), Some(h));
        }
        assert_eq!(OaepHash::parse("md5"), None);
    }

    #[test]
    fn sealing_needs_token_key_and_module() {
        for uri in [
            "pkcs11:object=k?module-path=/m",
            "pkcs11:token=t?module-path=/m",
            "pkcs11:token=t;object=k",
            "pkcs11:token=t;object=k?module-path=/m&pin-value=1",
        ] {
            assert!(
                matches!(
                    Pkcs11Backend::for_sealing(uri, PinSources::default(), None),
                    Err(BackendError::Config { .. })
                ),
                "{uri}"
            );
        }
        assert!(Pkcs11Backend::for_sealing(
            "pkcs11:serial=1;id=%01?module-path=/m",
            PinSources::default(),
            None
        )
        .is_ok());
    }

    #[test]
    fn pin_source_precedence() {
        let file = |p: &str| Some(PinSource::File(p.into()));
        let with_pin = Pkcs11Uri::parse("pkcs11:token=t;object=k?pin-source=file:/uri").unwrap();
        let without_pin = Pkcs11Uri::parse("pkcs11:token=t;object=k").unwrap();
        let both = PinSources {
            overriding: file("/flag"),
            fallback: file("/config"),
        };
        assert_eq!(both.for_uri(&with_pin), file("/flag").as_ref());
        assert_eq!(both.for_uri(&without_pin), file("/flag").as_ref());
        let fallback = PinSources {
            overriding: None,
            fallback: file("/config"),
        };
        assert_eq!(fallback.for_uri(&with_pin), file("/uri").as_ref());
        assert_eq!(fallback.for_uri(&without_pin), file("/config").as_ref());
        assert_eq!(PinSources::default().for_uri(&without_pin), None);
    }
}
