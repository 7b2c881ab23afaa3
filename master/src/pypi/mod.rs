//! Following PyPI: its changelog over XML-RPC ([`xmlrpc`]), the classification of its events
//! into what the farm must do ([`events`]), projects' summaries ([`description`]) and the
//! source files the simple index publishes ([`simple`]). PyPI's addresses are configuration;
//! no host is built in.

pub mod description;
pub mod events;
pub mod simple;
pub mod xmlrpc;

/// Makes ring the process's TLS crypto provider, which reqwest needs before building a client
/// (sqlx uses ring too, so the process has one provider). Calling it again changes nothing.
pub fn install_crypto_provider() {
    // An error only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
