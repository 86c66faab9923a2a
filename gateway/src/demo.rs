//! The built-in demo app of the development defaults: a tiny HTTP server on loopback, reached
//! through the gateway's terminating path like any app instance.

use crate::http_server::{serve, text, Limits};
use tokio::net::TcpListener;

/// Serves the demo app on `listener`.
pub async fn run(listener: TcpListener) {
    serve(listener, Limits::default(), |req, peer| async move {
        let body = format!(
            "Hello from the Gatehouse demo app.\n{} {} reached the app through the gateway (app saw {peer}).\n",
            req.method(),
            req.uri().path(),
        );
        text(200, body)
    })
    .await
}
