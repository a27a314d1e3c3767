//! A live SMTP AUTH check: connect, EHLO, STARTTLS (certificate verified),
//! EHLO, AUTH, QUIT — no mail is sent. Built on lettre's `SmtpConnection`,
//! driven one phase at a time so that each failure is attributed to the phase
//! it happened in: an unreachable endpoint, a TLS failure and a refused login
//! call for different fixes.

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;

/// Ports where SES speaks TLS from the first byte (no STARTTLS).
pub const IMPLICIT_TLS_PORTS: &[u16] = &[465, 2465];

/// What to check.
pub struct CheckParams<'a> {
    /// Server host name; the certificate must be valid for it.
    pub host: &'a str,
    /// Server port (a STARTTLS port: 587, 25 or 2587 for SES).
    pub port: u16,
    /// SMTP user name.
    pub username: &'a str,
    /// SMTP password.
    pub password: &'a str,
    /// Extra trust anchors (PEM), added to the system's.
    pub extra_roots_pem: Option<&'a [u8]>,
    /// Per-operation network timeout.
    pub timeout: Duration,
}

/// What a successful check saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The server's name from its EHLO reply.
    pub server_name: String,
    /// The AUTH mechanism used.
    pub mechanism: String,
}

/// Why the check failed. Messages carry the server's replies, never the
/// credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The endpoint could not be reached or dropped the connection before TLS:
    /// DNS, routing, firewall, nothing listening, timeout.
    #[error("{host}:{port} unreachable: {reason}")]
    Unreachable {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The network error.
        reason: String,
    },
    /// TLS could not be established: no STARTTLS offered, handshake failed,
    /// certificate not trusted or not valid for the host name.
    #[error("TLS with {host}:{port} failed: {reason}")]
    Tls {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the credentials (a 5xx reply to AUTH).
    #[error("{host}:{port} refused the credentials: {reply}")]
    AuthRefused {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The server's reply.
        reply: String,
    },
    /// The server answered with a temporary (4xx) failure.
    #[error("{host}:{port} reported a temporary failure: {reply}")]
    Temporary {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The server's reply.
        reply: String,
    },
    /// The server does not speak SMTP as SES does (e.g. no AUTH PLAIN/LOGIN).
    #[error("{host}:{port}: {reason}")]
    Protocol {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What was unexpected.
        reason: String,
    },
    /// The extra trust anchors are not usable PEM certificates.
    #[error("the CA file holds no usable PEM certificate: {0}")]
    BadCaFile(String),
    /// A port where SES expects TLS from the first byte: this check speaks STARTTLS.
    #[error("port {0} is an implicit-TLS port; this check speaks STARTTLS (use 587, 25 or 2587)")]
    ImplicitTlsPort(u16),
}

/// Performs the check.
///
/// # Errors
/// A [`CheckError`] naming the phase that failed.
pub fn check(params: &CheckParams<'_>) -> Result<CheckReport, CheckError> {
    let host = params.host;
    let port = params.port;
    if IMPLICIT_TLS_PORTS.contains(&port) {
        return Err(CheckError::ImplicitTlsPort(port));
    }
    let tls = tls_parameters(host, params.extra_roots_pem)?;
    let unreachable = |e: &SmtpError| CheckError::Unreachable {
        host: host.to_owned(),
        port,
        reason: describe(e),
    };
    let temporary = |e: &SmtpError| CheckError::Temporary {
        host: host.to_owned(),
        port,
        reply: describe(e),
    };
    let tls_failed = |reason: String| CheckError::Tls {
        host: host.to_owned(),
        port,
        reason,
    };
    let hello = ClientId::default();

    // Phase 1: TCP, greeting, EHLO in clear.
    let mut conn = SmtpConnection::connect((host, port), Some(params.timeout), &hello, None, None)
        .map_err(|e| {
            if e.is_transient() {
                temporary(&e)
            } else {
                unreachable(&e)
            }
        })?;

    // Phase 2: STARTTLS. Never fall back to clear text: the password would
    // cross the network unprotected.
    if !conn.can_starttls() {
        conn.abort();
        return Err(tls_failed("the server does not offer STARTTLS".into()));
    }
    // With rustls the handshake runs inside the EHLO that follows STARTTLS, so
    // anything failing in this phase is a TLS failure, whatever lettre calls it.
    if let Err(e) = conn.starttls(&tls, &hello) {
        conn.abort();
        return Err(tls_failed(describe(&e)));
    }

    // Phase 3: AUTH.
    let mechanisms = [Mechanism::Plain, Mechanism::Login];
    let Some(mechanism) = conn.server_info().get_auth_mechanism(&mechanisms) else {
        conn.abort();
        return Err(CheckError::Protocol {
            host: host.to_owned(),
            port,
            reason: "the server offers neither AUTH PLAIN nor AUTH LOGIN after STARTTLS".into(),
        });
    };
    let server_name = conn.server_info().name().to_owned();
    // lettre's Credentials holds plain Strings: these two copies are not wiped
    // on drop. They live only for the AUTH exchange below.
    let credentials = Credentials::new(params.username.to_owned(), params.password.to_owned());
    let outcome = conn.auth(&[mechanism], &credentials);
    drop(credentials);
    match outcome {
        Ok(_) => {}
        Err(e) => {
            conn.abort();
            return Err(if e.is_permanent() {
                CheckError::AuthRefused {
                    host: host.to_owned(),
                    port,
                    reply: describe(&e),
                }
            } else if e.is_transient() {
                temporary(&e)
            } else {
                unreachable(&e)
            });
        }
    }

    // Phase 4: QUIT. The credentials are proven; a failing goodbye changes nothing.
    if conn.quit().is_err() {
        conn.abort();
    }
    Ok(CheckReport {
        server_name,
        mechanism: mechanism.to_string(),
    })
}

const CERT_PEM_LABEL: &[u8] = b"-----BEGIN CERTIFICATE-----";

fn tls_parameters(host: &str, extra_roots_pem: Option<&[u8]>) -> Result<TlsParameters, CheckError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = extra_roots_pem {
        // lettre accepts a PEM file without certificates (and then trusts
        // nothing extra): say so instead of failing later with "untrusted".
        if !pem
            .windows(CERT_PEM_LABEL.len())
            .any(|w| w == CERT_PEM_LABEL)
        {
            return Err(CheckError::BadCaFile("no CERTIFICATE block".into()));
        }
        let cert = Certificate::from_pem(pem).map_err(|e| CheckError::BadCaFile(describe(&e)))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| CheckError::Tls {
        host: host.to_owned(),
        port: 0,
        reason: describe(&e),
    })
}

/// lettre's error with its whole source chain, on one line.
fn describe(e: &SmtpError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let next = s.to_string();
        // lettre's Display already includes the first source.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text.replace(['\r', '\n'], " ")
}
