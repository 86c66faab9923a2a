//! Quotes and keys from the dstack guest agent, over its Unix socket (HTTP/1.1):
//! `POST /GetQuote {"report_data": hex}` → `{quote, event_log, report_data, vm_config}` and
//! `POST /GetKey {"path", "purpose"}` → `{key, signature_chain}` (a key derived by dstack's
//! KMS for this app, the sealing root when Gatehouse runs as a dstack app).

use crate::eventlog::Event;
use crate::provider::{Evidence, QuoteProvider, TeeKind};
use crate::AttestError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where dstack's SDKs look for the agent, in order.
pub const DEFAULT_SOCKETS: [&str; 4] = [
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
];
const TIMEOUT: Duration = Duration::from_secs(30);

/// The dstack guest agent client.
#[derive(Debug, Clone)]
pub struct DstackAgent {
    socket: PathBuf,
}

fn err(reason: impl Into<String>) -> AttestError {
    AttestError::Provider {
        provider: "dstack agent",
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct QuoteResponse {
    quote: String,
    #[serde(default)]
    event_log: String,
}

#[derive(Deserialize)]
struct KeyResponse {
    key: String,
}

impl DstackAgent {
    /// A client for the agent at `socket`.
    pub fn new(socket: PathBuf) -> DstackAgent {
        DstackAgent { socket }
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> Result<Bytes, AttestError> {
        let socket = self.socket.display().to_string();
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| err(format!("{socket}: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| err(format!("{socket}: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let request = hyper::Request::post(path)
                .header(hyper::header::HOST, "dstack")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| err(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| err(format!("{path}: {e}")))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| err(format!("{path}: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                return Err(err(format!("{path}: HTTP {status}: {text}")));
            }
            Ok(bytes)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| err(format!("{path}: no answer within {TIMEOUT:?}")))?
    }

    /// A key derived by the KMS for this app at `path` (32 bytes or more, raw).
    pub async fn get_key(&self, path: &str, purpose: &str) -> Result<Vec<u8>, AttestError> {
        let bytes = self
            .call(
                "/GetKey",
                serde_json::json!({"path": path, "purpose": purpose}),
            )
            .await?;
        let r: KeyResponse =
            serde_json::from_slice(&bytes).map_err(|e| err(format!("/GetKey answer: {e}")))?;
        crate::hex::decode(&r.key).ok_or_else(|| err("/GetKey answer: key is not hex"))
    }
}

/// Decodes a `GetQuoteResponse` and checks that its quote binds `report_data`.
pub fn decode_quote_response(
    bytes: &[u8],
    report_data: &[u8; 64],
) -> Result<Evidence, AttestError> {
    let r: QuoteResponse =
        serde_json::from_slice(bytes).map_err(|e| err(format!("/GetQuote answer: {e}")))?;
    let quote =
        crate::hex::decode(&r.quote).ok_or_else(|| err("/GetQuote answer: quote is not hex"))?;
    let event_log: Vec<Event> = if r.event_log.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&r.event_log)
            .map_err(|e| err(format!("/GetQuote answer: event_log: {e}")))?
    };
    let parsed = dcap_qvl::quote::Quote::parse(&quote)
        .map_err(|e| AttestError::malformed("quote", format!("{e:#}")))?;
    let bound = crate::verify::report_data_of(&parsed)?;
    if &bound != report_data {
        return Err(err(format!(
            "the agent returned a quote for report data {}…, not the one requested",
            crate::hex::encode(&bound[..8])
        )));
    }
    Ok(Evidence {
        tee: TeeKind::Tdx,
        quote,
        event_log,
    })
}

#[async_trait::async_trait]
impl QuoteProvider for DstackAgent {
    fn kind(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn describe(&self) -> String {
        format!("dstack guest agent ({})", self.socket.display())
    }

    async fn quote(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        let body = serde_json::json!({"report_data": crate::hex::encode(&report_data)});
        let bytes = self.call("/GetQuote", body).await?;
        decode_quote_response(&bytes, &report_data)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    const RECORDED: &str = include_str!("../testdata/dstack-getquote.json");

    /// The recorded response's quote and event log.
    pub(crate) fn recorded() -> (Vec<u8>, Vec<Event>) {
        let v: serde_json::Value = serde_json::from_str(RECORDED).unwrap();
        let quote = crate::hex::decode(v["quote"].as_str().unwrap()).unwrap();
        let events = serde_json::from_str(v["event_log"].as_str().unwrap()).unwrap();
        (quote, events)
    }

    fn recorded_report_data() -> [u8; 64] {
        let v: serde_json::Value = serde_json::from_str(RECORDED).unwrap();
        crate::hex::decode_array(v["report_data"].as_str().unwrap()).unwrap()
    }

    /// Serves the recorded agent answers on a Unix socket; remembers the request bodies.
    async fn replay_agent(dir: &std::path::Path) -> (PathBuf, Arc<std::sync::Mutex<Vec<String>>>) {
        let path = dir.join("dstack.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                log.lock()
                                    .unwrap()
                                    .push(format!("{path} {}", String::from_utf8_lossy(&body)));
                                let answer = match path.as_str() {
                                "/GetQuote" => RECORDED.to_owned(),
                                "/GetKey" => serde_json::json!({"key": "11".repeat(32), "signature_chain": []}).to_string(),
                                _ => String::new(),
                            };
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(answer),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (path, seen)
    }

    #[tokio::test]
    async fn quote_and_key_through_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, seen) = replay_agent(dir.path()).await;
        let agent = DstackAgent::new(socket);
        let rd = recorded_report_data();
        let evidence = agent.quote(rd).await.unwrap();
        assert_eq!(evidence.tee, TeeKind::Tdx);
        assert_eq!(evidence.quote, recorded().0);
        assert_eq!(evidence.event_log.len(), 29);
        assert!(
            seen.lock().unwrap()[0].contains(&crate::hex::encode(&rd)),
            "report data sent as hex"
        );

        // The agent answering with a quote for other report data is refused.
        let e = agent.quote([0; 64]).await.unwrap_err();
        assert!(e.to_string().contains("not the one requested"), "{e}");

        let key = agent.get_key("gatehouse/seal", "sealing").await.unwrap();
        assert_eq!(key, vec![0x11; 32]);
        assert!(seen.lock().unwrap()[2].contains("gatehouse/seal"));
    }

    #[tokio::test]
    async fn a_missing_socket_names_it() {
        let agent = DstackAgent::new("/nonexistent/dstack.sock".into());
        let e = agent.quote([0; 64]).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dstack.sock"), "{e}");
    }
}
