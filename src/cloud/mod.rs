//! The cloud side: a thin OpenStack REST client of our own (Keystone v3,
//! Glance v2, Trove's management API, Nova flavors and keypairs) and the
//! publish flow built on it.
//!
//! No SDK: none covers Trove's management API and a streamed Glance upload
//! well, and the few calls we need are easier to audit as plain HTTP.

pub mod auth;
pub mod config;
pub mod glance;
pub mod http;
pub mod nova;
pub mod publish;
pub mod rotate;
pub mod trove;

pub use auth::Session;
pub use config::{CloudConfig, Selection};

/// Errors talking to a cloud. Messages never contain tokens or passwords.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// clouds.yaml / OS_* variables are missing or wrong.
    #[error("{0}")]
    Config(String),
    /// Keystone refused the credentials.
    #[error(
        "authentication failed at {url}: {message} (HTTP {status}); check the user, password or \
         application credential of {origin}"
    )]
    Auth {
        /// Keystone's token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Keystone's explanation.
        message: String,
        /// Where the credentials came from.
        origin: String,
    },
    /// No connection could be made (refused, DNS, TLS, timeout).
    #[error("cannot reach {service} at {url}: {message}")]
    Connect {
        /// Which service (Keystone, Glance, …).
        service: String,
        /// The URL tried.
        url: String,
        /// What went wrong, with a hint.
        message: String,
    },
    /// The service answered with an error status.
    #[error("{service} refused {method} {url}: {message} (HTTP {status})")]
    Http {
        /// Which service.
        service: String,
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The service's explanation, or a hint of ours for well-known statuses.
        message: String,
    },
    /// The catalog lacks a service, or lacks it in the requested region.
    #[error("{0}")]
    Catalog(String),
    /// Anything else that went wrong in a cloud workflow (bad answers,
    /// checksum mismatch, timeouts waiting for a state).
    #[error("{0}")]
    Failed(String),
}

impl CloudError {
    /// The HTTP status, when the error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Http { status, .. } | CloudError::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }
}
