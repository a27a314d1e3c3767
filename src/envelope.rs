//! Sealing and unsealing: the data key, the payload cipher and the backends put
//! together. No I/O here: bytes in, bytes out.

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::backend::{BackendError, KeyBackend};
use crate::format::{self, Aead, FormatError, Header, SealedFile, NONCE_LEN};
use crate::secret::{DataKey, DocumentError, SecretDocument};

/// Errors while sealing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No backend was given: nothing could ever unseal the result.
    #[error("no key backend given (use --tpm2 and/or --pkcs11)")]
    NoBackend,
    /// The OS random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The payload cipher refused its input (only possible beyond 64 GiB, far
    /// over the format's 1 MiB limit: a bug if it happens).
    #[error("the payload cipher failed")]
    Cipher,
    /// A backend could not wrap the key.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The header could not be written (e.g. a name with control characters).
    #[error("cannot write header: {0}")]
    Format(#[from] FormatError),
    /// The existing file's generation is already the largest possible.
    #[error("the generation counter {0} cannot be incremented")]
    Generation(u64),
}

/// Errors while unsealing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The file does not parse.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// No stanza of a type this build (or `--backend`) can use.
    #[error("no usable key stanza (the file has: {present}; this sesame can use: {usable})")]
    NoUsableStanza {
        /// Stanza types in the file.
        present: String,
        /// Backends available here.
        usable: String,
    },
    /// Every usable stanza failed; the most specific failure is kept.
    #[error(transparent)]
    Backend(BackendError),
    /// A backend released a key but it does not open the payload: the header or
    /// body was modified, or the stanza was wrapped for another file.
    #[error("authentication failed{}: the file was modified or its stanza belongs to another file",
        opened_by.as_ref().map(|s| format!(" with the key from {s}")).unwrap_or_default())]
    Tampered {
        /// Which stanza released the key, e.g. `stanza 1 (pkcs11)`, when known.
        opened_by: Option<String>,
    },
    /// The decrypted payload is not a valid document.
    #[error("the payload is not a valid secret document: {0}")]
    Payload(#[from] DocumentError),
}

/// What a successful unseal returns besides the secret.
pub struct Unsealed {
    /// The secret document.
    pub document: SecretDocument,
    /// The file's header.
    pub header: Header,
    /// Index of the stanza that unwrapped the key.
    pub stanza_index: usize,
    /// Stanzas that failed or were skipped before the one that worked
    /// (index, type, reason), for logging. Never contains secrets.
    pub notes: Vec<(usize, String, String)>,
}

/// Metadata for a new sealed file.
#[derive(Clone, Debug)]
pub struct SealOptions {
    /// Optional name or purpose, stored in clear in the header.
    pub name: Option<String>,
    /// Generation counter (1 for a new file).
    pub generation: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

impl SealOptions {
    /// Options for a brand-new file created now.
    pub fn new(name: Option<String>) -> Self {
        Self {
            name,
            generation: 1,
            created: now_rfc3339(),
        }
    }

    /// Options for sealing the same secret again (`rewrap`): generation + 1,
    /// `name` and `created` kept. `created` is when the secret was sealed,
    /// not when this file was written: re-wrapping must not make an old
    /// credential look new to `status` (the generation counts re-seals).
    ///
    /// # Errors
    /// [`SealError::Generation`] if the generation cannot grow.
    pub fn rewrap_of(header: &Header) -> Result<Self, SealError> {
        Ok(Self {
            name: header.name.clone(),
            generation: next_generation(header.generation)?,
            created: header.created.clone(),
        })
    }

    /// Options for sealing a new secret in place of an existing file's
    /// (`rotate`): generation + 1, `name` kept, `created` now.
    ///
    /// # Errors
    /// [`SealError::Generation`] if the generation cannot grow.
    pub fn rotation_of(header: &Header) -> Result<Self, SealError> {
        Ok(Self {
            name: header.name.clone(),
            generation: next_generation(header.generation)?,
            created: now_rfc3339(),
        })
    }
}

fn next_generation(generation: u64) -> Result<u64, SealError> {
    generation
        .checked_add(1)
        .ok_or(SealError::Generation(generation))
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Seals `document` with a fresh data key wrapped by every backend given.
///
/// # Errors
/// A [`SealError`]; on error nothing is returned to write.
pub fn seal(
    document: &SecretDocument,
    options: &SealOptions,
    backends: &mut [&mut dyn KeyBackend],
) -> Result<Vec<u8>, SealError> {
    if backends.is_empty() {
        return Err(SealError::NoBackend);
    }
    let key = DataKey::generate().map_err(|_| SealError::Random)?;
    let mut stanzas = Vec::with_capacity(backends.len());
    for backend in backends.iter_mut() {
        let stanza = backend.wrap(&key)?;
        debug_assert_eq!(stanza.kind, backend.kind());
        stanzas.push(stanza);
    }
    let header = Header {
        created: options.created.clone(),
        generation: options.generation,
        name: options.name.clone(),
        aead: Aead::Aes256Gcm,
        stanzas,
    };
    let header_bytes = format::encode_header(&header)?;
    let plaintext = document.to_json();
    let (nonce, ciphertext) = encrypt(&key, &header_bytes, &plaintext)?;
    Ok(format::encode(&header_bytes, &nonce, &ciphertext))
}

/// Unseals `bytes` with the first stanza one of `backends` can unwrap.
///
/// Stanzas are tried in file order; a stanza whose type no backend handles is
/// skipped with a note. When all fail, the most specific backend error is
/// returned (see [`BackendError::precedence`]).
///
/// # Errors
/// An [`UnsealError`].
pub fn unseal(bytes: &[u8], backends: &mut [&mut dyn KeyBackend]) -> Result<Unsealed, UnsealError> {
    unseal_parsed(&format::parse(bytes)?, backends)
}

/// [`unseal`] of a file already parsed (by a caller that also needs its header
/// when unsealing fails, without parsing twice).
///
/// # Errors
/// An [`UnsealError`].
pub fn unseal_parsed(
    file: &SealedFile,
    backends: &mut [&mut dyn KeyBackend],
) -> Result<Unsealed, UnsealError> {
    let opened = open(file, backends)?;
    let document = SecretDocument::from_json(&opened.plaintext)?;
    Ok(Unsealed {
        document,
        header: file.header.clone(),
        stanza_index: opened.stanza_index,
        notes: opened.notes,
    })
}

/// The payload in clear, the stanza that opened it, and notes on the others.
struct Opened {
    plaintext: Zeroizing<Vec<u8>>,
    stanza_index: usize,
    notes: Vec<(usize, String, String)>,
}

/// Tries the stanzas in order until one releases a key, then opens the payload.
fn open(file: &SealedFile, backends: &mut [&mut dyn KeyBackend]) -> Result<Opened, UnsealError> {
    let mut notes = Vec::new();
    let mut best: Option<BackendError> = None;
    for (index, stanza) in file.header.stanzas.iter().enumerate() {
        let Some(backend) = backends.iter_mut().find(|b| b.kind() == stanza.kind) else {
            notes.push((
                index,
                stanza.kind.clone(),
                "no backend for this stanza type here".into(),
            ));
            continue;
        };
        match backend.unwrap(stanza) {
            // Every stanza wraps the same key and the header (all stanzas
            // included) is authenticated, so a released key that does not open
            // the payload means the file was modified: no point trying others.
            Ok(key) => {
                return match decrypt(&key, file) {
                    Ok(plaintext) => Ok(Opened {
                        plaintext,
                        stanza_index: index,
                        notes,
                    }),
                    Err(_) => Err(UnsealError::Tampered {
                        opened_by: Some(format!("stanza {} ({})", index + 1, stanza.kind)),
                    }),
                };
            }
            Err(e) => {
                // Only the most specific failure is returned; the others are
                // worth a line when someone looks closer.
                tracing::info!(stanza = index + 1, backend = %stanza.kind, error = %e, "stanza could not be unwrapped");
                notes.push((index, stanza.kind.clone(), e.to_string()));
                if best
                    .as_ref()
                    .is_none_or(|b| e.precedence() > b.precedence())
                {
                    best = Some(e);
                }
            }
        }
    }
    match best {
        Some(e) => Err(UnsealError::Backend(e)),
        None => Err(UnsealError::NoUsableStanza {
            present: join(file.header.stanzas.iter().map(|s| s.kind.as_str())),
            usable: join(backends.iter().map(|b| b.kind())),
        }),
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Encrypts the payload under `key` with `header_bytes` as associated data.
///
/// # Errors
/// [`SealError::Random`] if no nonce can be drawn.
pub fn encrypt(
    key: &DataKey,
    header_bytes: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|_| SealError::Random)?;
    let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| SealError::Cipher)?;
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: header_bytes,
            },
        )
        // aes-gcm only fails on inputs over 64 GiB; ours are capped at 1 MiB.
        .map_err(|_| SealError::Cipher)?;
    Ok((nonce, ciphertext))
}

/// Opens the payload of `file` under `key`.
///
/// # Errors
/// [`UnsealError::Tampered`] (without `opened_by`) if the tag does not verify.
pub fn decrypt(key: &DataKey, file: &SealedFile) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    let cipher = Aes256Gcm::new_from_slice(key.expose())
        .map_err(|_| UnsealError::Tampered { opened_by: None })?;
    cipher
        .decrypt(
            Nonce::from_slice(&file.nonce),
            Payload {
                msg: &file.ciphertext,
                aad: &file.header_bytes,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| UnsealError::Tampered { opened_by: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Stanza;

    /// A software backend for unit tests only: "wraps" by XOR with a fixed pad.
    /// Real backends are tested against SoftHSM and swtpm in tests/.
    struct XorBackend([u8; 32]);

    impl KeyBackend for XorBackend {
        fn kind(&self) -> &'static str {
            "test-xor"
        }
        fn wrap(&mut self, key: &DataKey) -> Result<Stanza, BackendError> {
            let bytes: Vec<u8> = key
                .expose()
                .iter()
                .zip(self.0)
                .map(|(a, b)| a ^ b)
                .collect();
            Ok(Stanza::new("test-xor").with_bytes("wrapped", &bytes))
        }
        fn unwrap(&mut self, stanza: &Stanza) -> Result<DataKey, BackendError> {
            let wrapped =
                stanza
                    .require_bytes("wrapped")
                    .map_err(|source| BackendError::Stanza {
                        backend: "test-xor",
                        source,
                    })?;
            let bytes: Zeroizing<Vec<u8>> =
                Zeroizing::new(wrapped.iter().zip(self.0).map(|(a, b)| a ^ b).collect());
            DataKey::from_slice(&bytes).ok_or(BackendError::Refused {
                backend: "test-xor",
                reason: "bad length".into(),
                hint: String::new(),
            })
        }
    }

    fn doc() -> SecretDocument {
        SecretDocument::parse_input(b"username=AKIAEXAMPLE\npassword=s3cret\n").unwrap()
    }

    #[test]
    fn seal_unseal_round_trip() {
        let mut b = XorBackend([5; 32]);
        let sealed = seal(&doc(), &SealOptions::new(Some("t".into())), &mut [&mut b]).unwrap();
        let out = unseal(&sealed, &mut [&mut b]).unwrap();
        assert_eq!(out.document.get("password").unwrap().expose(), "s3cret");
        assert_eq!(out.header.generation, 1);
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
    }

    #[test]
    fn every_header_and_body_byte_is_authenticated() {
        let mut b = XorBackend([5; 32]);
        let sealed = seal(&doc(), &SealOptions::new(None), &mut [&mut b]).unwrap();
        let header_len = format::parse(&sealed).unwrap().header_bytes.len();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            match unseal(&bad, &mut [&mut b]) {
                Ok(_) => panic!("flip at {i} accepted"),
                Err(UnsealError::Tampered { .. }) | Err(UnsealError::Format(_)) => {}
                Err(UnsealError::Backend(BackendError::Stanza { .. })) if i < header_len => {}
                Err(UnsealError::Backend(BackendError::Refused { .. })) if i < header_len => {}
                Err(UnsealError::NoUsableStanza { .. }) if i < header_len => {}
                Err(e) => panic!("flip at {i}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn unknown_stanza_is_skipped_when_another_works() {
        let mut b = XorBackend([5; 32]);
        let key = DataKey::generate().unwrap();
        let header = Header {
            created: now_rfc3339(),
            generation: 1,
            name: None,
            aead: Aead::Aes256Gcm,
            stanzas: vec![Stanza::new("from-the-future"), b.wrap(&key).unwrap()],
        };
        let header_bytes = format::encode_header(&header).unwrap();
        let (nonce, ciphertext) = encrypt(&key, &header_bytes, &doc().to_json()).unwrap();
        let bytes = format::encode(&header_bytes, &nonce, &ciphertext);
        let out = match unseal(&bytes, &mut [&mut b]) {
            Ok(out) => out,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(out.stanza_index, 1);
        assert_eq!(out.notes[0].1, "from-the-future");
    }

    #[test]
    fn no_usable_stanza() {
        let mut b = XorBackend([5; 32]);
        let sealed = seal(&doc(), &SealOptions::new(None), &mut [&mut b]).unwrap();
        let err = unseal(&sealed, &mut []).err().unwrap();
        assert!(matches!(err, UnsealError::NoUsableStanza { .. }), "{err:?}");
    }

    #[test]
    fn rewrap_and_rotation_options() {
        let mut b = XorBackend([5; 32]);
        let mut options = SealOptions::new(Some("prod".into()));
        options.created = "2020-01-02T03:04:05Z".into();
        options.generation = 7;
        let sealed = seal(&doc(), &options, &mut [&mut b]).unwrap();
        let header = format::parse(&sealed).unwrap().header;
        let rewrap = SealOptions::rewrap_of(&header).unwrap();
        assert_eq!(rewrap.generation, 8);
        assert_eq!(rewrap.created, "2020-01-02T03:04:05Z");
        assert_eq!(rewrap.name.as_deref(), Some("prod"));
        let rotation = SealOptions::rotation_of(&header).unwrap();
        assert_eq!(rotation.generation, 8);
        assert_ne!(rotation.created, "2020-01-02T03:04:05Z");
        assert_eq!(rotation.name.as_deref(), Some("prod"));
        let last = Header {
            generation: u64::MAX,
            ..header
        };
        assert!(matches!(
            SealOptions::rewrap_of(&last),
            Err(SealError::Generation(u64::MAX))
        ));
    }

    #[test]
    fn a_new_seal_of_the_same_document_uses_a_new_key() {
        let mut b = XorBackend([5; 32]);
        let first = seal(&doc(), &SealOptions::new(None), &mut [&mut b]).unwrap();
        let old = format::parse(&first).unwrap();
        let old_key = b.unwrap(&old.header.stanzas[0]).unwrap();
        let options = SealOptions::rewrap_of(&old.header).unwrap();
        let second = seal(&doc(), &options, &mut [&mut b]).unwrap();
        let new = format::parse(&second).unwrap();
        assert_ne!(old.nonce, new.nonce);
        assert!(decrypt(&old_key, &old).is_ok());
        assert!(matches!(
            decrypt(&old_key, &new),
            Err(UnsealError::Tampered { .. })
        ));
    }

    #[test]
    fn wrong_key_is_tampered() {
        let mut a = XorBackend([5; 32]);
        let mut b = XorBackend([6; 32]);
        let sealed = seal(&doc(), &SealOptions::new(None), &mut [&mut a]).unwrap();
        assert!(matches!(
            unseal(&sealed, &mut [&mut b]),
            Err(UnsealError::Tampered { .. })
        ));
    }

    /// Fails every unwrap with a fixed error kind.
    struct Failing(&'static str, fn() -> BackendError);

    impl KeyBackend for Failing {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn wrap(&mut self, _: &DataKey) -> Result<Stanza, BackendError> {
            Ok(Stanza::new(self.0))
        }
        fn unwrap(&mut self, _: &Stanza) -> Result<DataKey, BackendError> {
            Err((self.1)())
        }
    }

    #[test]
    fn a_temporary_failure_wins_so_the_caller_retries() {
        let refused = || BackendError::Refused {
            backend: "a",
            reason: "PCR 7 changed".into(),
            hint: String::new(),
        };
        let busy = || BackendError::Busy {
            backend: "b",
            reason: "session limit".into(),
            hint: String::new(),
        };
        let mut a = Failing("a", refused);
        let mut b = Failing("b", busy);
        let sealed = seal(&doc(), &SealOptions::new(None), &mut [&mut a, &mut b]).unwrap();
        match unseal(&sealed, &mut [&mut a, &mut b]) {
            Err(UnsealError::Backend(BackendError::Busy { .. })) => {}
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("unsealed"),
        }
        let unavailable = || BackendError::Unavailable {
            backend: "b",
            reason: "no token".into(),
            hint: String::new(),
        };
        let mut b = Failing("b", unavailable);
        match unseal(&sealed, &mut [&mut a, &mut b]) {
            Err(UnsealError::Backend(BackendError::Refused { .. })) => {}
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("unsealed"),
        }
    }
}
