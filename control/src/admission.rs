//! `[admission]`: the operator's decision on each app created through the API and each app
//! CVM joining the VPC. A webhook gets the candidate as JSON (`POST`, `application/json`:
//! app id, purpose, and for a CVM its verified measurements and event log digest); a 2xx
//! answer admits, any other status, a refused connection or no answer within the timeout
//! denies (fail closed). Answers are cached per candidate for `cache_for`, so a flood of
//! registrations asks once. The allow-list file is the simpler alternative: app ids, one per
//! line, read at each decision (edit it and the next decision sees it).

use gatehouse::app_admission::{AdmitApps, Candidate};
use gatehouse_config::AdmissionConfig;
use http_body_util::{BodyExt, Full};
use std::path::PathBuf;
use std::time::Duration;

/// The decision `[admission]` configures.
#[derive(Debug)]
pub struct Admission {
    how: How,
    cache: moka::future::Cache<Candidate, Result<(), String>>,
}

#[derive(Debug)]
enum How {
    Webhook { url: hyper::Uri, timeout: Duration },
    AllowList(PathBuf),
}

impl Admission {
    /// The decision of `config`.
    pub fn new(config: &AdmissionConfig) -> Result<Admission, crate::ControlError> {
        let how = match (&config.webhook, &config.allow_list) {
            (Some(url), _) => How::Webhook {
                url: url.parse().map_err(|e| {
                    crate::ControlError::Config(format!("admission.webhook {url:?}: {e}"))
                })?,
                timeout: config.timeout,
            },
            (None, Some(path)) => How::AllowList(path.clone()),
            (None, None) => {
                return Err(crate::ControlError::Config(
                    "admission: neither webhook nor allow_list".into(),
                ))
            }
        };
        Ok(Admission {
            how,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.cache_for.max(Duration::from_millis(1)))
                .build(),
        })
    }

    async fn decide(&self, candidate: &Candidate) -> Result<(), String> {
        match &self.how {
            How::AllowList(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("allow list {}: {e}", path.display()))?;
                let listed = text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .any(|id| id == candidate.app_id);
                match listed {
                    true => Ok(()),
                    false => Err(format!(
                        "app {:?} is not in the allow list {}",
                        candidate.app_id,
                        path.display()
                    )),
                }
            }
            How::Webhook { url, timeout } => {
                match tokio::time::timeout(*timeout, ask(url, candidate)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("webhook {url} did not answer within {timeout:?}")),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl AdmitApps for Admission {
    async fn admit(&self, candidate: &Candidate) -> Result<(), String> {
        let how = match &self.how {
            How::AllowList(_) => return self.decide(candidate).await, // cheap: never cached
            How::Webhook { .. } => "webhook",
        };
        let answer = self
            .cache
            .get_with_by_ref(candidate, self.decide(candidate))
            .await;
        match &answer {
            Ok(()) => {
                tracing::info!(app = %candidate.app_id, purpose = candidate.purpose, "admitted by the {how}")
            }
            Err(why) => {
                tracing::warn!(app = %candidate.app_id, purpose = candidate.purpose, "denied: {why}")
            }
        }
        answer
    }
}

/// The largest webhook answer read (only its status counts; the body is for the message).
const ANSWER_LIMIT: usize = 4096;

/// POSTs `candidate` to `url`; a 2xx status admits.
async fn ask(url: &hyper::Uri, candidate: &Candidate) -> Result<(), String> {
    let host = url.host().unwrap_or("localhost");
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("webhook {url}: {e}"))?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(candidate).map_err(|e| e.to_string())?;
    let authority = url.authority().map_or(host.to_owned(), |a| a.to_string());
    let req = hyper::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = http_body_util::Limited::new(resp.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let said: String = String::from_utf8_lossy(&body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Err(format!("webhook answered {status}: {}", said.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_allow_list_is_read_at_each_decision() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("allowed");
        std::fs::write(&list, "# apps\nweb  # the site\n").unwrap();
        let config = AdmissionConfig {
            webhook: None,
            allow_list: Some(list.clone()),
            timeout: Duration::from_secs(1),
            cache_for: Duration::from_secs(60),
        };
        let a = Admission::new(&config).unwrap();
        let c = |id: &str| Candidate {
            app_id: id.into(),
            purpose: "create",
            measurements: None,
            domain: None,
        };
        assert!(a.admit(&c("web")).await.is_ok());
        let denied = a.admit(&c("db")).await.unwrap_err();
        assert!(denied.contains("not in the allow list"), "{denied}");
        std::fs::write(&list, "web\ndb\n").unwrap();
        assert!(a.admit(&c("db")).await.is_ok(), "the edit counts at once");
    }
}
