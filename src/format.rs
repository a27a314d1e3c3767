//! The sealed-file format, version 1: pure code over bytes (no I/O, no crypto,
//! no backends). `docs/FORMAT.md` is the specification; this module is its
//! reference implementation.
//!
//! ```text
//! sesame-sealed v1
//! created: 2026-12-03T16:00:00Z
//! generation: 1
//! name: ses-prod                     (optional)
//! aead: aes-256-gcm
//! -> pkcs11                          (one or more stanzas)
//! uri: pkcs11:token=sesame;object=ses-kek?module-path=...
//! mechanism: aes-gcm
//! ...
//! ---
//! <12-byte nonce><AES-256-GCM ciphertext and 16-byte tag>
//! ```
//!
//! The header is everything up to and including the `---` line; it is the
//! AEAD's associated data exactly as stored, so no canonical form is needed to
//! verify it. Parsing is strict so that there is exactly one way to write a
//! header: fixed field order, no duplicates, no unknown header fields.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// First word of every sealed file.
pub const MAGIC: &str = "sesame-sealed";
/// The version this code reads and writes.
pub const VERSION: u32 = 1;
/// Largest sealed file accepted, in bytes.
pub const MAX_FILE_LEN: usize = 1 << 20;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// Length of the AES-GCM nonce that starts the body.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag that ends the body.
pub const TAG_LEN: usize = 16;
/// Longest header or stanza field key.
pub const MAX_KEY_LEN: usize = 32;

const STANZA_PREFIX: &str = "-> ";
const END_LINE: &str = "---";

/// The payload cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aead {
    /// AES-256-GCM, 96-bit random nonce, 128-bit tag.
    Aes256Gcm,
}

impl Aead {
    /// The identifier written in the header.
    pub fn id(self) -> &'static str {
        match self {
            Aead::Aes256Gcm => "aes-256-gcm",
        }
    }
}

/// One backend's wrapping of the data key: a type and ordered `key: value` fields.
///
/// The format layer only checks the syntax; the backend that owns the type
/// parses and validates the fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stanza {
    /// Stanza type, e.g. `pkcs11` or `tpm2`: which backend can unwrap it.
    pub kind: String,
    /// Fields in stored order; keys are unique.
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// A stanza with no fields yet.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            fields: Vec::new(),
        }
    }

    /// Appends a text field (builder style).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.fields.push((key.to_owned(), value.into()));
        self
    }

    /// Appends a binary field, base64-encoded (builder style).
    pub fn with_bytes(self, key: &str, value: &[u8]) -> Self {
        self.with(key, STANDARD.encode(value))
    }

    /// A field's value, if present.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A required field.
    ///
    /// # Errors
    /// [`FormatError::MissingStanzaField`] when absent.
    pub fn require(&self, key: &str) -> Result<&str, FormatError> {
        self.field(key)
            .ok_or_else(|| FormatError::MissingStanzaField {
                stanza: self.kind.clone(),
                field: key.to_owned(),
            })
    }

    /// A required base64 field, decoded.
    ///
    /// # Errors
    /// [`FormatError::MissingStanzaField`] or [`FormatError::InvalidValue`].
    pub fn require_bytes(&self, key: &str) -> Result<Vec<u8>, FormatError> {
        let text = self.require(key)?;
        STANDARD
            .decode(text)
            .map_err(|_| FormatError::InvalidValue {
                field: format!("{}.{key}", self.kind),
                reason: "not valid base64".into(),
            })
    }

    /// Rejects fields this version of the backend does not know, so that a
    /// misspelt or injected field cannot be silently ignored.
    ///
    /// # Errors
    /// [`FormatError::UnknownStanzaField`] naming the first unknown field.
    pub fn only_fields(&self, known: &[&str]) -> Result<(), FormatError> {
        match self
            .fields
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(FormatError::UnknownStanzaField {
                stanza: self.kind.clone(),
                field: k.clone(),
            }),
        }
    }
}

/// The parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Creation time, RFC 3339 UTC with seconds (`2026-12-03T16:00:00Z`).
    pub created: String,
    /// Generation counter: 1 for a new file, +1 for each rewrap or rotation.
    pub generation: u64,
    /// Optional name or purpose (printable ASCII).
    pub name: Option<String>,
    /// Payload cipher.
    pub aead: Aead,
    /// One or more wrappings of the same data key; any one can unseal.
    pub stanzas: Vec<Stanza>,
}

impl Header {
    /// The stanza types in file order, joined with `,` (e.g. `tpm2,pkcs11`),
    /// for logs and audit records.
    pub fn kinds(&self) -> String {
        let kinds: Vec<&str> = self.stanzas.iter().map(|s| s.kind.as_str()).collect();
        kinds.join(",")
    }
}

/// A parsed sealed file: the header, its exact bytes, and the encrypted body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedFile {
    /// The parsed header.
    pub header: Header,
    /// The header exactly as stored, including the `---` line: the AEAD's
    /// associated data.
    pub header_bytes: Vec<u8>,
    /// The payload nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The payload ciphertext followed by its tag.
    pub ciphertext: Vec<u8>,
}

/// Why a file is not a valid sealed file. Every variant maps to exit code 65,
/// except where the CLI notes otherwise (an empty file is still "malformed").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Over [`MAX_FILE_LEN`].
    #[error("the file is {len} bytes, more than the {MAX_FILE_LEN}-byte limit")]
    TooLarge {
        /// Actual length.
        len: usize,
    },
    /// Does not start with the magic line.
    #[error("not a sesame sealed file (bad magic)")]
    BadMagic,
    /// A version other than [`VERSION`].
    #[error("sealed-file version {0} is not supported by this sesame (it reads v{VERSION}; upgrade sesame)")]
    UnsupportedVersion(u32),
    /// The header ends before its `---` line, or the body is shorter than nonce + tag.
    #[error("the file is truncated")]
    Truncated,
    /// Over [`MAX_HEADER_LEN`] without a `---` line.
    #[error("the header is longer than {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge,
    /// A header line that is not `key: value`, `-> type` or `---`.
    #[error("header line {line}: {reason}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A required header field is absent or out of order.
    #[error("header field {0:?} is missing or out of order")]
    MissingField(&'static str),
    /// A header field this version does not define, or a repeated one.
    #[error("header line {line}: unexpected field {field:?}")]
    UnexpectedField {
        /// 1-based line number.
        line: usize,
        /// The field key.
        field: String,
    },
    /// A stanza repeats a field key.
    #[error("stanza {stanza:?} repeats field {field:?}")]
    DuplicateStanzaField {
        /// Stanza type.
        stanza: String,
        /// The repeated key.
        field: String,
    },
    /// A stanza lacks a field its backend requires.
    #[error("stanza {stanza:?} lacks field {field:?}")]
    MissingStanzaField {
        /// Stanza type.
        stanza: String,
        /// The missing key.
        field: String,
    },
    /// A stanza has a field its backend does not define.
    #[error("stanza {stanza:?} has unknown field {field:?}")]
    UnknownStanzaField {
        /// Stanza type.
        stanza: String,
        /// The unknown key.
        field: String,
    },
    /// No stanza at all: nothing could ever unseal the file.
    #[error("the header has no key stanza")]
    NoStanza,
    /// An AEAD identifier this version does not know.
    #[error("unknown payload cipher {0:?}")]
    UnknownAead(String),
    /// A field value that does not parse.
    #[error("field {field}: {reason}")]
    InvalidValue {
        /// `field` or `stanza.field`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a whole sealed file.
///
/// # Errors
/// A [`FormatError`] describing the first problem found.
pub fn parse(bytes: &[u8]) -> Result<SealedFile, FormatError> {
    let (header_bytes, body) = split_header(bytes)?;
    let header = parse_header(header_bytes)?;
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(FormatError::Truncated);
    }
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    Ok(SealedFile {
        header,
        header_bytes: header_bytes.to_vec(),
        // Invariant: split_at(NONCE_LEN) gives exactly NONCE_LEN bytes.
        nonce: nonce.try_into().expect("nonce slice has NONCE_LEN bytes"),
        ciphertext: ciphertext.to_vec(),
    })
}

/// Reads only the header, for callers that need its fields but not the body
/// (the generation of a file about to be replaced, for example).
///
/// # Errors
/// As [`parse`], minus body checks.
pub fn parse_header_only(bytes: &[u8]) -> Result<Header, FormatError> {
    parse_header(split_header(bytes)?.0)
}

/// Checks size and magic, and splits the file after its `---` line.
fn split_header(bytes: &[u8]) -> Result<(&[u8], &[u8]), FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty);
    }
    if bytes.len() > MAX_FILE_LEN {
        return Err(FormatError::TooLarge { len: bytes.len() });
    }
    check_magic(bytes)?;
    Ok(bytes.split_at(find_header_end(bytes)?))
}

/// Serialises a header. The result is what [`parse`] reads back byte for byte.
///
/// # Errors
/// [`FormatError::InvalidValue`] or [`FormatError::MalformedLine`] if a value
/// cannot be written (control characters, bad keys, no stanza).
pub fn encode_header(header: &Header) -> Result<Vec<u8>, FormatError> {
    let mut out = String::new();
    out.push_str(&format!("{MAGIC} v{VERSION}\n"));
    push_field(&mut out, "created", &header.created)?;
    push_field(&mut out, "generation", &header.generation.to_string())?;
    if let Some(name) = &header.name {
        push_field(&mut out, "name", name)?;
    }
    push_field(&mut out, "aead", header.aead.id())?;
    if header.stanzas.is_empty() {
        return Err(FormatError::NoStanza);
    }
    for stanza in &header.stanzas {
        check_key(&stanza.kind).map_err(|reason| FormatError::InvalidValue {
            field: "stanza type".into(),
            reason,
        })?;
        out.push_str(STANZA_PREFIX);
        out.push_str(&stanza.kind);
        out.push('\n');
        let mut seen = Vec::new();
        for (key, value) in &stanza.fields {
            if seen.contains(&key) {
                return Err(FormatError::DuplicateStanzaField {
                    stanza: stanza.kind.clone(),
                    field: key.clone(),
                });
            }
            seen.push(key);
            push_field(&mut out, key, value)?;
        }
    }
    out.push_str(END_LINE);
    out.push('\n');
    if out.len() > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge);
    }
    // Validate by parsing: the writer must never produce what the reader rejects.
    parse_header(out.as_bytes())?;
    Ok(out.into_bytes())
}

/// Checks a `name` header value before any work is done: printable ASCII
/// on one line.
///
/// # Errors
/// [`FormatError::InvalidValue`] for field `name`.
pub fn check_name(name: &str) -> Result<(), FormatError> {
    push_field(&mut String::new(), "name", name)
}

/// Joins an encoded header and the encrypted body into the file's bytes.
pub fn encode(header_bytes: &[u8], nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_bytes.len() + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(header_bytes);
    out.extend_from_slice(nonce);
    out.extend_from_slice(ciphertext);
    out
}

fn check_magic(bytes: &[u8]) -> Result<(), FormatError> {
    let first_line_end = bytes.iter().position(|&b| b == b'\n');
    let first_line = &bytes[..first_line_end.unwrap_or(bytes.len().min(64))];
    let expected = format!("{MAGIC} v{VERSION}");
    if first_line == expected.as_bytes() {
        return if first_line_end.is_some() {
            Ok(())
        } else {
            Err(FormatError::Truncated)
        };
    }
    let prefix = format!("{MAGIC} v");
    if let Some(rest) = first_line.strip_prefix(prefix.as_bytes()) {
        let version = std::str::from_utf8(rest).ok().and_then(|v| v.parse().ok());
        return match version {
            Some(v) if first_line_end.is_some() => Err(FormatError::UnsupportedVersion(v)),
            Some(_) => Err(FormatError::Truncated),
            None => Err(FormatError::BadMagic),
        };
    }
    if expected.as_bytes().starts_with(first_line) && first_line_end.is_none() {
        return Err(FormatError::Truncated);
    }
    Err(FormatError::BadMagic)
}

/// Length of the header including the `---\n` line.
fn find_header_end(bytes: &[u8]) -> Result<usize, FormatError> {
    let needle = b"\n---\n";
    let limit = bytes.len().min(MAX_HEADER_LEN);
    match bytes[..limit]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        Some(pos) => Ok(pos + needle.len()),
        None if bytes.len() > MAX_HEADER_LEN => Err(FormatError::HeaderTooLarge),
        None => Err(FormatError::Truncated),
    }
}

fn parse_header(header_bytes: &[u8]) -> Result<Header, FormatError> {
    let text = std::str::from_utf8(header_bytes).map_err(|e| FormatError::MalformedLine {
        line: 1 + header_bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        reason: "not ASCII".into(),
    })?;
    // Invariant: find_header_end guarantees a trailing "\n---\n".
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .skip(1);

    let mut fields: Vec<(usize, &str, &str)> = Vec::new();
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut ended = false;
    for (number, line) in lines.by_ref() {
        if line == END_LINE {
            ended = true;
            break;
        }
        if let Some(kind) = line.strip_prefix(STANZA_PREFIX) {
            check_line_chars(number, line)?;
            check_key(kind).map_err(|reason| FormatError::MalformedLine {
                line: number,
                reason: format!("stanza type: {reason}"),
            })?;
            stanzas.push(Stanza::new(kind));
            continue;
        }
        let (key, value) = split_field(number, line)?;
        match stanzas.last_mut() {
            None => fields.push((number, key, value)),
            Some(stanza) => {
                if stanza.field(key).is_some() {
                    return Err(FormatError::DuplicateStanzaField {
                        stanza: stanza.kind.clone(),
                        field: key.to_owned(),
                    });
                }
                stanza.fields.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    if !ended || lines.next().is_some() {
        return Err(FormatError::Truncated);
    }

    let mut fields = fields.into_iter().peekable();
    let mut take = |name: &'static str, optional: bool| -> Result<Option<&str>, FormatError> {
        match fields.peek() {
            Some((_, key, value)) if *key == name => {
                let value = *value;
                fields.next();
                Ok(Some(value))
            }
            _ if optional => Ok(None),
            _ => Err(FormatError::MissingField(name)),
        }
    };
    let created = take("created", false)?.unwrap_or_default().to_owned();
    let generation = take("generation", false)?.unwrap_or_default();
    let name = take("name", true)?.map(str::to_owned);
    let aead = take("aead", false)?.unwrap_or_default();
    if let Some((line, field, _)) = fields.next() {
        return Err(FormatError::UnexpectedField {
            line,
            field: field.to_owned(),
        });
    }

    check_timestamp(&created)?;
    let generation = parse_generation(generation)?;
    let aead = match aead {
        "aes-256-gcm" => Aead::Aes256Gcm,
        other => return Err(FormatError::UnknownAead(other.to_owned())),
    };
    if stanzas.is_empty() {
        return Err(FormatError::NoStanza);
    }
    Ok(Header {
        created,
        generation,
        name,
        aead,
        stanzas,
    })
}

fn split_field(number: usize, line: &str) -> Result<(&str, &str), FormatError> {
    check_line_chars(number, line)?;
    let (key, value) = line
        .split_once(": ")
        .ok_or_else(|| FormatError::MalformedLine {
            line: number,
            reason: "expected \"key: value\"".into(),
        })?;
    check_key(key).map_err(|reason| FormatError::MalformedLine {
        line: number,
        reason,
    })?;
    Ok((key, value))
}

fn check_line_chars(number: usize, line: &str) -> Result<(), FormatError> {
    if line.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(FormatError::MalformedLine {
            line: number,
            reason: "contains a byte outside printable ASCII".into(),
        })
    }
}

/// Keys and stanza types: `[a-z0-9][a-z0-9-]*`, at most [`MAX_KEY_LEN`].
fn check_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('-')
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid key (lowercase letters, digits and -, at most {MAX_KEY_LEN})",
            key.chars().take(40).collect::<String>()
        ))
    }
}

fn push_field(out: &mut String, key: &str, value: &str) -> Result<(), FormatError> {
    check_key(key).map_err(|reason| FormatError::InvalidValue {
        field: key.to_owned(),
        reason,
    })?;
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(FormatError::InvalidValue {
            field: key.to_owned(),
            reason: "only printable ASCII can be stored in a header".into(),
        });
    }
    out.push_str(key);
    out.push_str(": ");
    out.push_str(value);
    out.push('\n');
    Ok(())
}

fn parse_generation(text: &str) -> Result<u64, FormatError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse::<u64>() {
        Ok(n) if canonical && n >= 1 => Ok(n),
        _ => Err(FormatError::InvalidValue {
            field: "generation".into(),
            reason: "expected a decimal number ≥ 1 without leading zeros".into(),
        }),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, a valid UTC instant.
fn check_timestamp(text: &str) -> Result<(), FormatError> {
    let shaped = text.len() == 20
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && humantime::parse_rfc3339(text).is_ok();
    if shaped {
        Ok(())
    } else {
        Err(FormatError::InvalidValue {
            field: "created".into(),
            reason: "expected an RFC 3339 UTC time like 2026-12-03T16:00:00Z".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> Header {
        Header {
            created: "2026-12-03T16:00:00Z".into(),
            generation: 3,
            name: Some("ses prod".into()),
            aead: Aead::Aes256Gcm,
            stanzas: vec![
                Stanza::new("pkcs11")
                    .with("uri", "pkcs11:token=a;object=b")
                    .with_bytes("wrapped", &[1, 2, 3]),
                Stanza::new("future-thing").with("x", ""),
            ],
        }
    }

    fn sample_file() -> Vec<u8> {
        let header = encode_header(&sample_header()).unwrap();
        encode(&header, &[9; NONCE_LEN], &[8; 40])
    }

    #[test]
    fn round_trip_is_byte_exact() {
        let bytes = sample_file();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.header, sample_header());
        let again = encode(
            &encode_header(&parsed.header).unwrap(),
            &parsed.nonce,
            &parsed.ciphertext,
        );
        assert_eq!(again, bytes);
        assert_eq!(
            parsed.header_bytes,
            encode_header(&sample_header()).unwrap()
        );
        assert!(parsed.header_bytes.ends_with(b"\n---\n"));
    }

    #[test]
    fn header_text_is_as_documented() {
        let text = String::from_utf8(encode_header(&sample_header()).unwrap()).unwrap();
        assert_eq!(
            text,
            "sesame-sealed v1\ncreated: 2026-12-03T16:00:00Z\ngeneration: 3\nname: ses prod\n\
             aead: aes-256-gcm\n-> pkcs11\nuri: pkcs11:token=a;object=b\nwrapped: AQID\n\
             -> future-thing\nx: \n---\n"
        );
    }

    fn with_header(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        v
    }

    #[test]
    fn strictness() {
        use FormatError as E;
        let ok = "sesame-sealed v1\ncreated: 2026-12-03T16:00:00Z\ngeneration: 1\naead: aes-256-gcm\n-> t\nk: v\n---\n";
        assert!(parse(&with_header(ok)).is_ok());
        type Check = fn(&E) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (ok.replace("v1", "v2"), |e| *e == E::UnsupportedVersion(2)),
            (ok.replace("sesame-sealed", "age"), |e| *e == E::BadMagic),
            (ok.replace("generation: 1\n", ""), |e| {
                *e == E::MissingField("generation")
            }),
            (
                ok.replace("generation: 1\n", "generation: 1\ngeneration: 1\n"),
                |e| matches!(e, E::UnexpectedField { .. } | E::MissingField(_)),
            ),
            (
                ok.replace("aead: aes-256-gcm\n", "aead: aes-256-gcm\nextra: 1\n"),
                |e| matches!(e, E::UnexpectedField { .. }),
            ),
            (ok.replace("k: v\n", "k: v\nk: w\n"), |e| {
                matches!(e, E::DuplicateStanzaField { .. })
            }),
            (ok.replace("-> t\nk: v\n", ""), |e| *e == E::NoStanza),
            (ok.replace("generation: 1", "generation: 01"), |e| {
                matches!(e, E::InvalidValue { .. })
            }),
            (ok.replace("generation: 1", "generation: 0"), |e| {
                matches!(e, E::InvalidValue { .. })
            }),
            (ok.replace("2026-12-03T16:00:00Z", "yesterday"), |e| {
                matches!(e, E::InvalidValue { .. })
            }),
            (ok.replace("aes-256-gcm", "rot13"), |e| {
                matches!(e, E::UnknownAead(_))
            }),
            (ok.replace("k: v", "k:v"), |e| {
                matches!(e, E::MalformedLine { .. })
            }),
            (ok.replace("k: v", "K: v"), |e| {
                matches!(e, E::MalformedLine { .. })
            }),
            (ok.replace("k: v", "k: v\t"), |e| {
                matches!(e, E::MalformedLine { .. })
            }),
            (ok.replace("---\n", "--\n"), |e| *e == E::Truncated),
        ];
        for (text, expected) in cases {
            let err = parse(&with_header(&text)).unwrap_err();
            assert!(expected(&err), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let bytes = sample_file();
        // Past header + nonce + tag the length is plausible: the AEAD tag
        // catches a shortened ciphertext (tested in envelope).
        let min_len = encode_header(&sample_header()).unwrap().len() + NONCE_LEN + TAG_LEN;
        for len in 1..min_len {
            let err = parse(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated | FormatError::BadMagic),
                "len {len}: {err:?}"
            );
        }
        assert_eq!(parse(&[]).unwrap_err(), FormatError::Empty);
    }

    #[test]
    fn size_caps() {
        let big = vec![b'a'; MAX_FILE_LEN + 1];
        assert!(matches!(parse(&big), Err(FormatError::TooLarge { .. })));
        let mut long = b"sesame-sealed v1\n".to_vec();
        long.resize(MAX_HEADER_LEN + 10, b'a');
        assert_eq!(parse(&long).unwrap_err(), FormatError::HeaderTooLarge);
    }

    #[test]
    fn writer_refuses_what_reader_would_reject() {
        let mut header = sample_header();
        header.name = Some("two\nlines".into());
        assert!(encode_header(&header).is_err());
        let mut header = sample_header();
        header.stanzas[0]
            .fields
            .push(("uri".into(), "again".into()));
        assert!(encode_header(&header).is_err());
        let mut header = sample_header();
        header.stanzas.clear();
        assert_eq!(encode_header(&header).unwrap_err(), FormatError::NoStanza);
    }

    #[test]
    fn stanza_helpers() {
        let s = Stanza::new("x").with("a", "1").with_bytes("b", b"hi");
        assert_eq!(s.require("a").unwrap(), "1");
        assert_eq!(s.require_bytes("b").unwrap(), b"hi");
        assert!(matches!(
            s.require("c"),
            Err(FormatError::MissingStanzaField { .. })
        ));
        assert!(s.only_fields(&["a", "b"]).is_ok());
        assert!(matches!(
            s.only_fields(&["a"]),
            Err(FormatError::UnknownStanzaField { .. })
        ));
    }
}
