//! RFC 7512 PKCS#11 URIs: `pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin`.
//!
//! What sesame does with each attribute, explicitly:
//! - path `token`, `serial`, `manufacturer`, `model` select the token (at
//!   least `token` or `serial` is required to seal: slots are never named,
//!   their numbers change when tokens are added);
//! - path `object` (the key's `CKA_LABEL`), `id` (`CKA_ID`, raw bytes,
//!   percent-encoded) and `type` (`secret-key`, `public`, `private`) select the key;
//! - query `module-path` names the PKCS#11 library, `pin-source` where the
//!   PIN is read from (`file:PATH`);
//! - query `pin-value` is **refused**: the URI is stored in the sealed file and
//!   a PIN must never be;
//! - vendor attributes (`x-…`) are ignored, as RFC 7512 §2.3 allows; they are
//!   kept in [`Pkcs11Uri::ignored`] so the caller can log that they were;
//! - every other attribute, standard or misspelt, is refused: a typo such as
//!   `objet=` must not silently widen which key is used, and the standard
//!   `slot-*`, `library-*` and `module-name` selectors are not supported.
//!
//! [`Pkcs11Uri`]'s `Display` writes a canonical form (fixed attribute order,
//! minimal percent-encoding) that parses back to the same value; that form is
//! what the sealed file records.

use std::fmt;
use std::path::PathBuf;

use crate::pin::PinSource;

/// URI scheme, matched case-insensitively.
const SCHEME: &str = "pkcs11:";

/// The longest URI accepted (a sealed-file header line has room for more, but
/// nothing legitimate comes close).
pub const MAX_URI_LEN: usize = 4096;

/// Which kind of key object the URI asks for (`type=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `type=secret-key`: an AES key.
    SecretKey,
    /// `type=public`: the public half of an RSA key pair.
    Public,
    /// `type=private`: the private half of an RSA key pair.
    Private,
}

impl ObjectType {
    /// The RFC 7512 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretKey => "secret-key",
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

/// A parsed PKCS#11 URI: only the attributes sesame uses (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `manufacturer=`: the token's manufacturer id.
    pub manufacturer: Option<String>,
    /// `model=`: the token's model.
    pub model: Option<String>,
    /// `serial=`: the token's serial number.
    pub serial: Option<String>,
    /// `object=`: the key's label.
    pub object: Option<String>,
    /// `id=`: the key's `CKA_ID` bytes.
    pub id: Option<Vec<u8>>,
    /// `type=`: the object class.
    pub object_type: Option<ObjectType>,
    /// `module-path=`: the PKCS#11 library to load.
    pub module_path: Option<PathBuf>,
    /// `pin-source=`: where the PIN is read from.
    pub pin_source: Option<PinSource>,
    /// Vendor attributes (`x-…`) that were present and ignored (names only).
    pub ignored: Vec<String>,
}

/// Why a URI was refused. Never quotes a `pin-value`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    /// Does not start with `pkcs11:`.
    #[error("not a PKCS#11 URI (it must start with \"pkcs11:\")")]
    Scheme,
    /// Longer than [`MAX_URI_LEN`].
    #[error("the URI is longer than {MAX_URI_LEN} bytes")]
    TooLong,
    /// `name` without `=value`, or an empty name. Only the position is
    /// reported: the text might be a mistyped PIN.
    #[error("the {0} is not of the form name=value")]
    Malformed(String),
    /// A `%` not followed by two hex digits, or a value that is not UTF-8.
    #[error("attribute {0}: bad percent-encoding or not UTF-8")]
    Encoding(String),
    /// The same attribute twice.
    #[error("attribute {0} appears twice")]
    Duplicate(String),
    /// `pin-value=`: a PIN in the URI would be stored in the sealed file.
    #[error("pin-value is refused: the URI is stored in the sealed file and a PIN must never be")]
    PinValue,
    /// A standard attribute sesame does not support, or an unknown one.
    #[error("attribute {name} is not supported ({why})")]
    Unsupported {
        /// The attribute name.
        name: String,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// A `type=` other than `secret-key`, `public` or `private`.
    #[error("type={0} is not a key type sesame can use (use secret-key, public or private)")]
    BadType(String),
    /// A `pin-source` that is not `file:PATH`.
    #[error("pin-source is not file:PATH")]
    BadPinSource,
    /// An empty `module-path`.
    #[error("module-path is empty")]
    EmptyModulePath,
}

impl Pkcs11Uri {
    /// Parses an RFC 7512 URI (see the module docs for what is accepted).
    ///
    /// # Errors
    /// A [`UriError`] naming the offending attribute.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        if text.len() > MAX_URI_LEN {
            return Err(UriError::TooLong);
        }
        let rest = match text.get(..SCHEME.len()) {
            Some(s) if s.eq_ignore_ascii_case(SCHEME) => &text[SCHEME.len()..],
            _ => return Err(UriError::Scheme),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for (n, attr) in path.split(';').enumerate().filter(|(_, a)| !a.is_empty()) {
            let (name, raw) = split_attr(attr, "path", n)?;
            uri.note_once(&mut seen, name)?;
            uri.set_path_attr(name, raw)?;
        }
        for (n, attr) in query.into_iter().flat_map(|q| q.split('&')).enumerate() {
            if attr.is_empty() {
                continue;
            }
            let (name, raw) = split_attr(attr, "query", n)?;
            uri.note_once(&mut seen, name)?;
            uri.set_query_attr(name, raw)?;
        }
        Ok(uri)
    }

    /// Records `name` as seen, refusing repeats (RFC 7512 forbids repeated
    /// path attributes; a repeated query attribute would be ambiguous here).
    fn note_once(&self, seen: &mut Vec<String>, name: &str) -> Result<(), UriError> {
        if seen.iter().any(|s| s == name) {
            return Err(UriError::Duplicate(name.to_owned()));
        }
        seen.push(name.to_owned());
        Ok(())
    }

    fn set_path_attr(&mut self, name: &str, raw: &str) -> Result<(), UriError> {
        match name {
            "token" => self.token = Some(decode_text(name, raw)?),
            "manufacturer" => self.manufacturer = Some(decode_text(name, raw)?),
            "model" => self.model = Some(decode_text(name, raw)?),
            "serial" => self.serial = Some(decode_text(name, raw)?),
            "object" => self.object = Some(decode_text(name, raw)?),
            "id" => self.id = Some(decode(name, raw)?),
            "type" => {
                self.object_type = Some(match decode_text(name, raw)?.as_str() {
                    "secret-key" => ObjectType::SecretKey,
                    "public" => ObjectType::Public,
                    "private" => ObjectType::Private,
                    other => return Err(UriError::BadType(other.to_owned())),
                });
            }
            "slot-id" | "slot-description" | "slot-manufacturer" => {
                return Err(UriError::Unsupported {
                    name: name.to_owned(),
                    why:
                        "slots change when tokens are added; name the token with token= or serial=",
                })
            }
            "library-manufacturer" | "library-description" | "library-version" => {
                return Err(UriError::Unsupported {
                    name: name.to_owned(),
                    why: "name the library with module-path= instead",
                })
            }
            other => return self.other_attr(other),
        }
        Ok(())
    }

    fn set_query_attr(&mut self, name: &str, raw: &str) -> Result<(), UriError> {
        match name {
            // Checked before decoding so that a malformed PIN is never echoed.
            "pin-value" => return Err(UriError::PinValue),
            "module-path" => {
                let path = decode_text(name, raw)?;
                if path.is_empty() {
                    return Err(UriError::EmptyModulePath);
                }
                self.module_path = Some(PathBuf::from(path));
            }
            "pin-source" => {
                let text = decode_text(name, raw)?;
                self.pin_source =
                    Some(PinSource::parse(&text).map_err(|_| UriError::BadPinSource)?);
            }
            "module-name" => {
                return Err(UriError::Unsupported {
                    name: name.to_owned(),
                    why: "give the library's full path with module-path= (see hsm/profiles/)",
                })
            }
            other => return self.other_attr(other),
        }
        Ok(())
    }

    fn other_attr(&mut self, name: &str) -> Result<(), UriError> {
        if name.starts_with("x-") {
            self.ignored.push(name.to_owned());
            Ok(())
        } else {
            Err(UriError::Unsupported {
                name: name.to_owned(),
                why: "unknown attribute; sesame reads token, serial, manufacturer, model, object, id, type, module-path and pin-source",
            })
        }
    }

    /// A short, printable description of the key for messages:
    /// `key "ses-kek" on token "sesame"`.
    pub fn describe(&self) -> String {
        let key = match (&self.object, &self.id) {
            (Some(label), _) => format!("key {label:?}"),
            (None, Some(id)) => format!("key with id {}", hex::encode(id)),
            (None, None) => "key".to_owned(),
        };
        let token = match (&self.token, &self.serial) {
            (Some(label), _) => format!("token {label:?}"),
            (None, Some(serial)) => format!("token with serial {serial:?}"),
            (None, None) => "token".to_owned(),
        };
        format!("{key} on {token}")
    }
}

impl fmt::Display for Pkcs11Uri {
    /// The canonical form: path attributes in a fixed order, then the query.
    /// Vendor attributes that were ignored are not written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path: Vec<String> = Vec::new();
        let text_attrs = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ];
        for (name, value) in text_attrs {
            if let Some(v) = value {
                path.push(format!("{name}={}", encode(v.as_bytes(), PATH_SAFE)));
            }
        }
        if let Some(id) = &self.id {
            // Every byte encoded: ids are binary, and this is how RFC 7512 writes them.
            path.push(format!("id={}", encode(id, b"")));
        }
        if let Some(t) = self.object_type {
            path.push(format!("type={}", t.as_str()));
        }
        let mut query: Vec<String> = Vec::new();
        if let Some(p) = &self.module_path {
            query.push(format!(
                "module-path={}",
                encode(p.to_string_lossy().as_bytes(), QUERY_SAFE)
            ));
        }
        if let Some(PinSource::File(p)) = &self.pin_source {
            query.push(format!(
                "pin-source={}",
                encode(
                    format!("file:{}", p.to_string_lossy()).as_bytes(),
                    QUERY_SAFE
                )
            ));
        }
        write!(f, "{SCHEME}{}", path.join(";"))?;
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

/// Characters besides RFC 3986 unreserved ones written as-is in path values
/// (a subset of RFC 7512 `pk11-pchar`).
const PATH_SAFE: &[u8] = b":@!$'()*+,=";
/// The same for query values (`pk11-qchar` also allows `/`, `?` and `|`;
/// `/` keeps module paths readable).
const QUERY_SAFE: &[u8] = b":@!$'()*+,=/|";

fn encode(bytes: &[u8], safe: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split_attr<'a>(attr: &'a str, part: &str, n: usize) -> Result<(&'a str, &'a str), UriError> {
    match attr.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name, value)),
        _ => Err(UriError::Malformed(format!("{part} attribute #{}", n + 1))),
    }
}

fn decode(name: &str, raw: &str) -> Result<Vec<u8>, UriError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&c| hex_digit(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex_digit(c));
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(UriError::Encoding(name.to_owned())),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_text(name: &str, raw: &str) -> Result<String, UriError> {
    String::from_utf8(decode(name, raw)?).map_err(|_| UriError::Encoding(name.to_owned()))
}

fn hex_digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("sesame"));
        assert_eq!(uri.object.as_deref(), Some("ses-kek"));
        assert_eq!(
            uri.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            uri.pin_source,
            Some(PinSource::File("/etc/sesame/hsm.pin".into()))
        );
        assert_eq!(uri.describe(), "key \"ses-kek\" on token \"sesame\"");
    }

    #[test]
    fn percent_decoding_and_ids() {
        let uri = Pkcs11Uri::parse(
            "PKCS11:token=my%20token;object=k%C3%A9y;id=%01%ff%A0;serial=DECC0401648;type=secret-key",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("my token"));
        assert_eq!(uri.object.as_deref(), Some("kéy"));
        assert_eq!(uri.id, Some(vec![0x01, 0xff, 0xa0]));
        assert_eq!(uri.serial.as_deref(), Some("DECC0401648"));
        assert_eq!(uri.object_type, Some(ObjectType::SecretKey));
        for bad in ["pkcs11:token=%4", "pkcs11:token=%zz", "pkcs11:object=%ff"] {
            assert!(
                matches!(Pkcs11Uri::parse(bad), Err(UriError::Encoding(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn canonical_form_round_trips() {
        let texts = [
            "pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin",
            "pkcs11:token=a%20b%3Bc;serial=0123;object=k%25;id=%00%FF;type=private?module-path=/opt/x%26y.so",
            "pkcs11:",
        ];
        for text in texts {
            let uri = Pkcs11Uri::parse(text).unwrap();
            assert_eq!(uri.to_string(), text);
            assert_eq!(Pkcs11Uri::parse(&uri.to_string()).unwrap(), uri);
        }
        // Non-canonical input (attribute order, needless escapes) is normalised.
        let uri =
            Pkcs11Uri::parse("pkcs11:object=%6b;token=t?pin-source=/p&module-path=/m").unwrap();
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=t;object=k?module-path=/m&pin-source=file:/p"
        );
    }

    #[test]
    fn refuses_pin_value_without_echoing_it() {
        let err = Pkcs11Uri::parse("pkcs11:token=t?pin-value=SECRET%zz").unwrap_err();
        assert_eq!(err, UriError::PinValue);
        assert!(!err.to_string().contains("SECRET"));
        let err = Pkcs11Uri::parse("pkcs11:token=t?pin-valueSECRET").unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn refuses_unknown_duplicate_and_unsupported_attributes() {
        let cases = [
            ("pkcs11:objet=k", "Unsupported"),
            ("pkcs11:slot-id=0", "Unsupported"),
            ("pkcs11:library-version=1", "Unsupported"),
            ("pkcs11:token=t?module-name=softhsm2", "Unsupported"),
            ("pkcs11:token=a;token=b", "Duplicate"),
            ("pkcs11:token=a?module-path=/a&module-path=/b", "Duplicate"),
            ("pkcs11:type=cert", "BadType"),
            ("pkcs11:token", "Malformed"),
            ("pkcs11:=x", "Malformed"),
            ("pkcs11:token=t?pin-source=env:PIN", "BadPinSource"),
            ("pkcs11:token=t?module-path=", "EmptyModulePath"),
            ("file:/x", "Scheme"),
            ("pkcs1", "Scheme"),
        ];
        for (text, variant) in cases {
            let err = Pkcs11Uri::parse(text).unwrap_err();
            assert!(format!("{err:?}").starts_with(variant), "{text}: {err:?}");
        }
        assert_eq!(
            Pkcs11Uri::parse(&format!("pkcs11:token={}", "a".repeat(MAX_URI_LEN))),
            Err(UriError::TooLong)
        );
    }

    #[test]
    fn ignores_vendor_attributes_but_says_so() {
        let uri = Pkcs11Uri::parse("pkcs11:token=t;x-vendor=1?x-other=2").unwrap();
        assert_eq!(uri.ignored, vec!["x-vendor", "x-other"]);
        assert_eq!(uri.to_string(), "pkcs11:token=t");
    }
}
