//! AWS SES specifics: the SMTP password derivation, the SES secret document,
//! and (in [`smtp`]) a live SMTP AUTH check.
//!
//! This module is pure: no I/O, no clock (the caller passes the creation
//! time). Every buffer that holds a secret or a secret-derived value is wiped
//! when dropped.
//!
//! SES authenticates SMTP clients with an IAM user's access key id as the user
//! name and, as the password, a value derived from the user's secret access
//! key by AWS's documented algorithm ([`derive_smtp_password`]). The secret
//! access key itself is more powerful than the SMTP password (it signs any API
//! call the user may make), so it is only ever used to derive the password and
//! is never sealed.

pub mod smtp;

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use crate::secret::{printable, FieldName, SecretDocument, SecretValue};

/// Regions with an SES SMTP endpoint (`email-smtp.REGION.amazonaws.com`).
///
/// The list of AWS's own conversion script plus the regions the AWS General
/// Reference lists with an SMTP endpoint. AWS adds regions over time: callers
/// may accept an unlisted region explicitly ([`Region::parse`]).
pub const SMTP_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ca-central-1",
    "eu-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-south-1",
    "eu-north-1",
    "il-central-1",
    "me-south-1",
    "sa-east-1",
    "us-gov-east-1",
    "us-gov-west-1",
];

/// The SMTP submission port SES offers with STARTTLS (also 25 and 2587).
pub const DEFAULT_PORT: u16 = 587;

/// Fields of the SES document, as sealed.
pub const DOCUMENT_FIELDS: &[&str] = &["username", "password", "host", "port", "region", "created"];

// The constants of AWS's algorithm. They are fixed by SES, not by us: the
// "date" is a constant, not a date.
const SIGNING_DATE: &str = "11111111";
const SERVICE: &str = "ses";
const TERMINAL: &str = "aws4_request";
const MESSAGE: &str = "SendRawEmail";
const VERSION: u8 = 0x04;

/// Length of a derived SMTP password: base64 of 1 version byte + 32 MAC bytes.
pub const SMTP_PASSWORD_LEN: usize = 44;

/// Where a region, host or port came from. It decides whether an error may
/// quote the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line argument: typed by the user, not secret; errors quote it.
    Argument,
    /// A field of the secret input or of a sealed document: errors name the
    /// field and the rule, never the value, so that a credential pasted into
    /// the wrong field reaches neither the terminal nor the audit log.
    Document,
}

/// A rejected region, host or port, as an error shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The value of a command-line argument (control characters replaced,
    /// at most 80 characters), quoted in the message.
    Argument(String),
    /// The named field of a document; its value is not kept.
    Field(&'static str),
}

impl Rejected {
    fn new(origin: Origin, field: &'static str, value: &str) -> Self {
        match origin {
            Origin::Argument => Self::Argument(printable(value)),
            Origin::Document => Self::Field(field),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Argument(value) => write!(f, "{value:?}"),
            Self::Field(field) => write!(f, "the {field} field"),
        }
    }
}

/// Errors of this module. Messages name fields, never values taken from a
/// document; they quote only command-line arguments (see [`Rejected`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SesError {
    /// A region without an SES SMTP endpoint (or not in [`SMTP_REGIONS`]).
    #[error("{region} is not a region with an SES SMTP endpoint known to sesame (known: {known})")]
    UnknownRegion {
        /// The region given.
        region: Rejected,
        /// The known regions, comma-separated.
        known: String,
    },
    /// A region name that is not even shaped like one.
    #[error("{0} is not an AWS region name (like eu-west-1)")]
    BadRegion(Rejected),
    /// The secret access key is empty or contains whitespace or control characters.
    #[error("the secret access key is empty or contains spaces or control characters")]
    BadSecretKey,
    /// The access key id is not 16–128 letters and digits.
    #[error("the access key id is not 16 to 128 letters and digits (like AKIAIOSFODNN7EXAMPLE)")]
    BadAccessKeyId,
    /// The input has neither credential pair, or both.
    #[error("{0}")]
    Credentials(&'static str),
    /// A field the SES input does not accept (so nothing unexpected is sealed).
    #[error("unexpected field {field:?} (accepted: {accepted})")]
    UnexpectedField {
        /// The field name.
        field: String,
        /// The accepted names.
        accepted: &'static str,
    },
    /// A required field is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A host name that could not be an SMTP endpoint.
    #[error("{0} is not a host name or IPv4 address")]
    BadHost(Rejected),
    /// A port that is not 1–65535.
    #[error("{0} is not a port number from 1 to 65535")]
    BadPort(Rejected),
}

impl SesError {
    /// The rejected region, host or port, if the error is about one: whether
    /// it came from a command-line argument or from a document.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Self::UnknownRegion { region: r, .. }
            | Self::BadRegion(r)
            | Self::BadHost(r)
            | Self::BadPort(r) => Some(r),
            _ => None,
        }
    }
}

/// An AWS region, checked against [`SMTP_REGIONS`] unless explicitly allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region(String);

impl Region {
    /// Parses a region name. With `allow_unlisted`, any well-formed name
    /// (`[a-z]{2}(-[a-z]+)+-[0-9]+`) is accepted: for regions AWS added after
    /// this release. `origin` says where the name came from: an error quotes
    /// it only if it is a command-line argument.
    ///
    /// # Errors
    /// [`SesError::UnknownRegion`] listing the known regions, or
    /// [`SesError::BadRegion`].
    pub fn parse(name: &str, allow_unlisted: bool, origin: Origin) -> Result<Self, SesError> {
        if SMTP_REGIONS.contains(&name) {
            return Ok(Self(name.to_owned()));
        }
        if !well_formed_region(name) {
            return Err(SesError::BadRegion(Rejected::new(origin, "region", name)));
        }
        if allow_unlisted {
            return Ok(Self(name.to_owned()));
        }
        Err(SesError::UnknownRegion {
            region: Rejected::new(origin, "region", name),
            known: SMTP_REGIONS.join(", "),
        })
    }

    /// The region name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The region's SES SMTP endpoint.
    pub fn smtp_host(&self) -> String {
        format!("email-smtp.{}.amazonaws.com", self.0)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn well_formed_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
        && name.len() <= 32
}

/// Derives the SES SMTP password for `region` from an IAM secret access key,
/// with AWS's algorithm: an HMAC-SHA256 chain keyed with `"AWS4" + secret`
/// over `11111111`, the region, `ses`, `aws4_request` and `SendRawEmail`,
/// prefixed with the version byte 0x04, base64-encoded.
///
/// The key material, every intermediate MAC and the result live in buffers
/// of ours that are wiped on drop. Memory inside the `hmac` and `sha2` crates
/// is not: for each step, `new_from_slice` builds the key block XORed with
/// ipad and then opad in a stack buffer it does not wipe (one XOR gives the
/// key back: for the first step, `"AWS4"` + the secret access key, or its
/// SHA-256 if longer than 64 bytes, which is as good for HMAC), and the MAC
/// value keeps SHA-256 states derived from those blocks, not wiped on drop
/// either and enough to compute further MACs under that key. These copies
/// stay in freed stack memory until it is overwritten.
///
/// # Errors
/// [`SesError::BadSecretKey`] for an empty key or one with whitespace.
pub fn derive_smtp_password(
    secret_access_key: &str,
    region: &Region,
) -> Result<SecretValue, SesError> {
    if secret_access_key.is_empty()
        || secret_access_key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SesError::BadSecretKey);
    }
    let mut initial = Zeroizing::new(Vec::with_capacity(4 + secret_access_key.len()));
    initial.extend_from_slice(b"AWS4");
    initial.extend_from_slice(secret_access_key.as_bytes());
    // Two wiped slots used in turn, so no intermediate MAC is ever copied out
    // of wiped memory.
    let mut keys = Zeroizing::new([[0u8; 32]; 2]);
    hmac_into(&initial, SIGNING_DATE.as_bytes(), &mut keys[0]);
    for (step, message) in [region.as_str(), SERVICE, TERMINAL, MESSAGE]
        .into_iter()
        .enumerate()
    {
        let [a, b] = &mut *keys;
        let (from, to) = if step % 2 == 0 { (&*a, b) } else { (&*b, a) };
        hmac_into(from, message.as_bytes(), to);
    }
    // Four steps: the last one wrote slot 0.
    let key = &keys[0];
    let mut raw = Zeroizing::new([0u8; 33]);
    raw[0] = VERSION;
    raw[1..].copy_from_slice(key);
    // Exactly SMTP_PASSWORD_LEN bytes reserved: encoding never reallocates, so
    // no unwiped copy of the password is left behind in a freed buffer.
    let mut password = String::with_capacity(SMTP_PASSWORD_LEN);
    // A slice, not `*raw`: passing the array by value would leave an unwiped copy.
    STANDARD.encode_string(raw.as_slice(), &mut password);
    debug_assert_eq!(password.len(), SMTP_PASSWORD_LEN);
    Ok(SecretValue::new(password))
}

/// HMAC-SHA256 of `message` under `key`, written into `out`.
fn hmac_into(key: &[u8], message: &[u8], out: &mut [u8; 32]) {
    // Invariant: HMAC accepts keys of any length; new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    let mut tag = mac.finalize().into_bytes();
    out.copy_from_slice(&tag);
    tag.as_mut_slice().zeroize();
}

/// Where the sealed SES document points, and when it was made.
#[derive(Clone, Debug, Default)]
pub struct SesOptions {
    /// `--ses-region`; else the input's `region` field.
    pub region: Option<String>,
    /// Accept a well-formed region that is not in [`SMTP_REGIONS`].
    pub allow_unlisted_region: bool,
    /// `--ses-endpoint`; else the input's `host`; else the region's endpoint.
    pub host: Option<String>,
    /// `--ses-port`; else the input's `port`; else [`DEFAULT_PORT`].
    pub port: Option<u16>,
    /// Creation time to record (RFC 3339).
    pub created: String,
}

/// Input field names accepted by [`build_document`], for messages.
pub const INPUT_FIELDS: &str = "access_key_id + secret_access_key (or aws_access_key_id + \
aws_secret_access_key), or username + password; optionally region, host, port";

/// Builds the complete SES document (`username`, `password`, `host`, `port`,
/// `region`, `created`) from user input holding either an IAM access key
/// (`access_key_id` + `secret_access_key`; the password is derived and the
/// secret key dropped) or ready SMTP credentials (`username` + `password`).
/// Field names match case-insensitively; `aws_` prefixes are accepted so that
/// AWS credential files' names work as they are.
///
/// # Errors
/// A [`SesError`] naming the problem, never a value.
pub fn build_document(
    input: &SecretDocument,
    options: &SesOptions,
) -> Result<SecretDocument, SesError> {
    let mut access_key_id = None;
    let mut secret_access_key = None;
    let mut username = None;
    let mut password = None;
    let mut region_field = None;
    let mut host_field = None;
    let mut port_field = None;
    for (name, value) in input.iter() {
        let lower = name.as_str().to_ascii_lowercase();
        let slot = match lower.strip_prefix("aws_").unwrap_or(&lower) {
            "access_key_id" => &mut access_key_id,
            "secret_access_key" => &mut secret_access_key,
            "username" | "user" => &mut username,
            "password" => &mut password,
            "region" => &mut region_field,
            "host" => &mut host_field,
            "port" => &mut port_field,
            _ => {
                return Err(SesError::UnexpectedField {
                    field: name.to_string(),
                    accepted: INPUT_FIELDS,
                })
            }
        };
        if slot.is_some() {
            return Err(SesError::Credentials(
                "the same field is given twice under different names",
            ));
        }
        *slot = Some(value);
    }

    let region = match (&options.region, region_field) {
        (Some(r), _) => Region::parse(r, options.allow_unlisted_region, Origin::Argument)?,
        (None, Some(r)) => Region::parse(
            r.expose().trim(),
            options.allow_unlisted_region,
            Origin::Document,
        )?,
        (None, None) => {
            return Err(SesError::Missing(
                "region (give --ses-region or a region field)",
            ))
        }
    };

    let has_key = access_key_id.is_some() || secret_access_key.is_some();
    let has_smtp = username.is_some() || password.is_some();
    let (user, pass) = match (has_key, has_smtp) {
        (true, true) => return Err(SesError::Credentials(
            "give either an access key (access_key_id + secret_access_key) or SMTP credentials \
                 (username + password), not both",
        )),
        (false, false) => return Err(SesError::Credentials("no credentials given")),
        (true, false) => {
            let (Some(id), Some(secret)) = (access_key_id, secret_access_key) else {
                return Err(SesError::Credentials(
                    "access_key_id and secret_access_key must be given together",
                ));
            };
            let id = id.expose().trim();
            if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(SesError::BadAccessKeyId);
            }
            (
                id.to_owned(),
                derive_smtp_password(secret.expose().trim(), &region)?,
            )
        }
        (false, true) => {
            let (Some(user), Some(pass)) = (username, password) else {
                return Err(SesError::Credentials(
                    "username and password must be given together",
                ));
            };
            if user.expose().is_empty() || pass.expose().is_empty() {
                return Err(SesError::Credentials(
                    "username and password must not be empty",
                ));
            }
            (
                user.expose().to_owned(),
                SecretValue::new(pass.expose().to_owned()),
            )
        }
    };

    let host = match (&options.host, host_field) {
        (Some(h), _) => {
            check_host(h, Origin::Argument)?;
            h.clone()
        }
        (None, Some(h)) => {
            let h = h.expose().trim();
            check_host(h, Origin::Document)?;
            h.to_owned()
        }
        (None, None) => region.smtp_host(),
    };
    let port = match (options.port, port_field) {
        (Some(p), _) => p,
        (None, Some(p)) => parse_port(p.expose().trim(), Origin::Document)?,
        (None, None) => DEFAULT_PORT,
    };

    let mut doc = SecretDocument::new();
    let fields = [
        ("username", SecretValue::new(user)),
        ("password", pass),
        ("host", SecretValue::new(host)),
        ("port", SecretValue::new(port.to_string())),
        ("region", SecretValue::new(region.0)),
        ("created", SecretValue::new(options.created.clone())),
    ];
    for (name, value) in fields {
        // Invariant: fixed, valid and distinct names.
        doc.insert(FieldName::new(name).expect("valid name"), value)
            .expect("distinct names");
    }
    Ok(doc)
}

/// Accepts DNS names and IPv4 addresses: `[A-Za-z0-9.-]`, not starting with
/// `-`. Anything else (spaces, `:`) would also break Exim's `passwd.client`.
/// `origin` says where the host came from: an error quotes it only if it is a
/// command-line argument.
///
/// # Errors
/// [`SesError::BadHost`].
pub fn check_host(host: &str, origin: Origin) -> Result<(), SesError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SesError::BadHost(Rejected::new(origin, "host", host)))
    }
}

/// Parses a TCP port, 1–65535. `origin` says where the text came from: an
/// error quotes it only if it is a command-line argument.
///
/// # Errors
/// [`SesError::BadPort`].
pub fn parse_port(text: &str, origin: Origin) -> Result<u16, SesError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(SesError::BadPort(Rejected::new(origin, "port", text))),
    }
}

/// The SMTP settings of a sealed SES document, with overrides applied.
pub struct SmtpSettings<'a> {
    /// Server host name (also the name its certificate must carry).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// SMTP user name.
    pub username: &'a str,
    /// SMTP password.
    pub password: &'a str,
}

impl<'a> SmtpSettings<'a> {
    /// Reads `username` and `password` from `doc`; host from `host_override`,
    /// else the `host` field, else the `region` field's endpoint; port from
    /// `port_override`, else the `port` field, else [`DEFAULT_PORT`].
    ///
    /// # Errors
    /// [`SesError::Missing`] naming the absent field, or a bad host or port.
    pub fn from_document(
        doc: &'a SecretDocument,
        host_override: Option<&str>,
        port_override: Option<u16>,
    ) -> Result<Self, SesError> {
        let username = doc
            .get("username")
            .ok_or(SesError::Missing("username field in the sealed document"))?
            .expose();
        let password = doc
            .get("password")
            .ok_or(SesError::Missing("password field in the sealed document"))?
            .expose();
        let host = match (host_override, doc.get("host")) {
            (Some(h), _) => {
                check_host(h, Origin::Argument)?;
                h.to_owned()
            }
            (None, Some(h)) => {
                check_host(h.expose(), Origin::Document)?;
                h.expose().to_owned()
            }
            (None, None) => match doc.get("region") {
                // An unlisted region is fine here: it was accepted at seal time.
                Some(r) => Region::parse(r.expose(), true, Origin::Document)?.smtp_host(),
                None => return Err(SesError::Missing("host or region field (or --host)")),
            },
        };
        let port = match (port_override, doc.get("port")) {
            (Some(p), _) => p,
            (None, Some(p)) => parse_port(p.expose(), Origin::Document)?,
            (None, None) => DEFAULT_PORT,
        };
        Ok(Self {
            host,
            port,
            username,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str) -> Region {
        Region::parse(name, false, Origin::Argument).unwrap()
    }

    /// The vectors of terraform-provider-aws (TestSESSMTPPasswordFromSecretKeySigV4),
    /// an implementation known to authenticate against SES.
    #[test]
    fn terraform_vectors() {
        let cases = [
            (
                "eu-central-1",
                "some+secret+key",
                "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2",
            ),
            (
                "eu-central-1",
                "another+secret+key",
                "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh",
            ),
            (
                "us-west-1",
                "some+secret+key",
                "BH+jbMzper5WwlwUar9E1ySBqHa9whi0GPo+sJ0mVYJj",
            ),
            (
                "us-west-1",
                "another+secret+key",
                "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF",
            ),
        ];
        for (r, secret, expected) in cases {
            let got = derive_smtp_password(secret, &region(r)).unwrap();
            assert_eq!(got.expose(), expected, "{r} {secret}");
        }
    }

    #[test]
    fn password_shape() {
        let p = derive_smtp_password(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            &region("us-east-1"),
        )
        .unwrap();
        assert_eq!(p.expose().len(), SMTP_PASSWORD_LEN);
        // Version byte 0x04 encodes to a leading 'B'.
        assert!(p.expose().starts_with('B'));
        // The region is part of the derivation.
        let q = derive_smtp_password(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            &region("us-east-2"),
        )
        .unwrap();
        assert_ne!(p.expose(), q.expose());
    }

    #[test]
    fn rejects_bad_secret_keys() {
        for bad in ["", "with space", "tab\there", "nl\n"] {
            assert_eq!(
                derive_smtp_password(bad, &region("eu-west-1")).err(),
                Some(SesError::BadSecretKey)
            );
        }
    }

    #[test]
    fn regions() {
        assert_eq!(
            region("eu-west-1").smtp_host(),
            "email-smtp.eu-west-1.amazonaws.com"
        );
        let err = Region::parse("xx-nowhere-9", false, Origin::Argument).unwrap_err();
        assert!(
            matches!(&err, SesError::UnknownRegion { known, .. } if known.contains("us-east-1"))
        );
        assert!(Region::parse("xx-nowhere-9", true, Origin::Argument).is_ok());
        for bad in [
            "",
            "eu",
            "eu-west",
            "EU-WEST-1",
            "eu-west-x",
            "eu west 1",
            "e-west-1",
        ] {
            assert!(
                matches!(
                    Region::parse(bad, true, Origin::Argument),
                    Err(SesError::BadRegion(_))
                ),
                "{bad}"
            );
        }
    }

    fn input(text: &str) -> SecretDocument {
        SecretDocument::parse_input(text.as_bytes()).unwrap()
    }

    fn options() -> SesOptions {
        SesOptions {
            region: Some("eu-central-1".into()),
            created: "2026-01-02T03:04:05Z".into(),
            ..SesOptions::default()
        }
    }

    #[test]
    fn builds_from_an_access_key_and_drops_the_secret_key() {
        let doc = build_document(
            &input("access_key_id=AKIAIOSFODNN7EXAMPLE\nsecret_access_key=some+secret+key\n"),
            &options(),
        )
        .unwrap();
        assert_eq!(
            doc.names(),
            vec!["created", "host", "password", "port", "region", "username"]
        );
        assert_eq!(
            doc.get("username").unwrap().expose(),
            "AKIAIOSFODNN7EXAMPLE"
        );
        assert_eq!(
            doc.get("password").unwrap().expose(),
            "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2"
        );
        assert_eq!(
            doc.get("host").unwrap().expose(),
            "email-smtp.eu-central-1.amazonaws.com"
        );
        assert_eq!(doc.get("port").unwrap().expose(), "587");
        assert_eq!(doc.get("region").unwrap().expose(), "eu-central-1");
        assert_eq!(doc.get("created").unwrap().expose(), "2026-01-02T03:04:05Z");
        let json = doc.to_json();
        assert!(!json.windows(15).any(|w| w == b"some+secret+key"));
    }

    #[test]
    fn accepts_aws_names_and_ready_credentials_with_overrides() {
        let doc = build_document(
            &input(
                r#"{"AWS_ACCESS_KEY_ID":"AKIAIOSFODNN7EXAMPLE","AWS_SECRET_ACCESS_KEY":"some+secret+key"}"#,
            ),
            &options(),
        )
        .unwrap();
        assert_eq!(
            doc.get("username").unwrap().expose(),
            "AKIAIOSFODNN7EXAMPLE"
        );

        let mut opts = options();
        opts.region = None;
        opts.port = Some(2587);
        let doc = build_document(
            &input("username=AKIAX\npassword=ready\nregion=us-west-2\nhost=vpce.example.com\n"),
            &opts,
        )
        .unwrap();
        assert_eq!(doc.get("password").unwrap().expose(), "ready");
        assert_eq!(doc.get("host").unwrap().expose(), "vpce.example.com");
        assert_eq!(doc.get("port").unwrap().expose(), "2587");
        assert_eq!(doc.get("region").unwrap().expose(), "us-west-2");
    }

    #[test]
    fn rejects_incomplete_mixed_and_unexpected_input() {
        let cases = [
            ("access_key_id=AKIAIOSFODNN7EXAMPLE\n", "Credentials"),
            ("secret_access_key=SECRET\n", "Credentials"),
            ("username=u\n", "Credentials"),
            (
                "access_key_id=AKIAIOSFODNN7EXAMPLE\nsecret_access_key=SECRET\npassword=SECRET\n",
                "Credentials",
            ),
            (
                "access_key_id=AKIA\nsecret_access_key=SECRET\n",
                "BadAccessKeyId",
            ),
            (
                "username=u\npassword=SECRET\nnote=SECRET\n",
                "UnexpectedField",
            ),
            ("username=u\npassword=SECRET\nport=0\n", "BadPort"),
            ("username=u\npassword=SECRET\nhost=a:b\n", "BadHost"),
            ("username=u\npassword=SECRET\nuser=v\n", "Credentials"),
        ];
        for (text, variant) in cases {
            let err = build_document(&input(text), &options()).err().unwrap();
            assert!(format!("{err:?}").starts_with(variant), "{text}: {err:?}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
        let mut opts = options();
        opts.region = None;
        assert_eq!(
            build_document(&input("username=u\npassword=p\n"), &opts).err(),
            Some(SesError::Missing(
                "region (give --ses-region or a region field)"
            ))
        );
    }

    /// A credential pasted into the wrong field must not be echoed: errors
    /// about document fields name the field, never the value; only
    /// command-line arguments are quoted.
    #[test]
    fn errors_quote_arguments_but_never_document_values() {
        const LEAK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let mut opts = options();
        opts.region = None;
        let cases = [
            (format!("username=u\npassword=p\nregion={LEAK}\n"), "region"),
            (
                format!("username=u\npassword=p\nregion=xx-{LEAK}-1\n"),
                "region",
            ),
            (
                format!("username=u\npassword=p\nregion=eu-west-1\nhost={LEAK}\n"),
                "host",
            ),
            (
                format!("username=u\npassword=p\nregion=eu-west-1\nport={LEAK}\n"),
                "port",
            ),
        ];
        for (text, field) in &cases {
            let err = build_document(&input(text), &opts).err().unwrap();
            assert_eq!(err.rejected(), Some(&Rejected::Field(field)), "{err:?}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("the {field} field ")),
                "{message}"
            );
            assert!(!message.contains("EXAMPLEKEY"), "{message}");
            assert!(!format!("{err:?}").contains("EXAMPLEKEY"), "{err:?}");
        }
        // The lowercase region is well formed but unknown.
        let err = build_document(
            &input("username=u\npassword=p\nregion=xx-secretvalue-1\n"),
            &opts,
        )
        .err()
        .unwrap();
        assert!(matches!(err, SesError::UnknownRegion { .. }), "{err:?}");
        assert!(!err.to_string().contains("secretvalue"), "{err}");

        // The same checks on a document being read back for `ses check`.
        for (text, field) in &cases {
            let doc = input(text);
            let err = SmtpSettings::from_document(&doc, None, None)
                .err()
                .unwrap_or_else(|| panic!("{text}"));
            assert_eq!(err.rejected(), Some(&Rejected::Field(field)), "{err:?}");
            assert!(!err.to_string().contains("EXAMPLEKEY"), "{err}");
        }

        // Command-line arguments are the user's own and are quoted.
        let mut opts = options();
        opts.region = Some("eu west 1".into());
        let err = build_document(&input("username=u\npassword=p\n"), &opts)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "\"eu west 1\" is not an AWS region name (like eu-west-1)"
        );
        assert!(matches!(err.rejected(), Some(Rejected::Argument(_))));
        let mut opts = options();
        opts.host = Some("bad host".into());
        let err = build_document(&input("username=u\npassword=p\nhost=ok.example\n"), &opts)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "\"bad host\" is not a host name or IPv4 address"
        );
        let doc = input("username=u\npassword=p\nregion=eu-west-1\n");
        let err = SmtpSettings::from_document(&doc, Some("a:b"), None)
            .err()
            .unwrap();
        assert_eq!(err.rejected(), Some(&Rejected::Argument("a:b".into())));
        assert_eq!(
            parse_port("0", Origin::Argument).unwrap_err().to_string(),
            "\"0\" is not a port number from 1 to 65535"
        );
        assert_eq!(
            parse_port("0", Origin::Document).unwrap_err().to_string(),
            "the port field is not a port number from 1 to 65535"
        );
    }

    #[test]
    fn smtp_settings_from_a_document() {
        let doc = input("username=u\npassword=p\nregion=eu-west-1\n");
        let s = SmtpSettings::from_document(&doc, None, None).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port),
            ("email-smtp.eu-west-1.amazonaws.com", 587)
        );
        let s = SmtpSettings::from_document(&doc, Some("127.0.0.1"), Some(2525)).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.username, s.password),
            ("127.0.0.1", 2525, "u", "p")
        );
        let doc = input("username=u\n");
        assert!(matches!(
            SmtpSettings::from_document(&doc, None, None),
            Err(SesError::Missing(_))
        ));
    }
}
