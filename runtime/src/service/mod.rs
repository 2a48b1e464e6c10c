//! HTTPS with client certificates for the roles' APIs: rustls configurations
//! from credentials, an axum server that knows its peer's role, and a client.
pub mod client;
pub mod server;
pub mod tls;
