//! A CA's `badNonce` refusal, retried at the step that met it.
//!
//! RFC 8555 §6.5: a request refused with `badNonce` was not acted on, and the client retries it
//! with the fresh nonce the refusal carries. instant-acme does so inside each request, three
//! tries in all; a CA that refuses many nonces (a cluster whose nodes do not share them, or
//! Pebble's `PEBBLE_WFE_NONCEREJECT`) still beats three tries now and then, and an order has
//! a dozen requests. Without this, each such loss cost a whole order and the manager's
//! backoff (32 s, 71 s, 142 s, …). Every step retried here is safe to send again: the CA did
//! nothing with the refused one.

/// Tries of one step (each of them up to instant-acme's three requests) before the refusal
/// counts as the order's failure.
pub(crate) const NONCE_TRIES: u32 = 8;

/// Whether the CA refused the request's nonce.
pub(crate) fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce"))
}

/// Evaluates `$step` (an expression ending in `.await` that yields
/// `Result<_, instant_acme::Error>`) again while the CA refuses its nonce, up to
/// [`NONCE_TRIES`] times; `$what` names the step in the debug log.
macro_rules! nonce_retried {
    ($what:expr, $step:expr) => {{
        let mut tries = 1;
        loop {
            match $step {
                Err(e) if $crate::nonce::is_bad_nonce(&e) && tries < $crate::nonce::NONCE_TRIES => {
                    tries += 1;
                    tracing::debug!(
                        step = $what,
                        tries,
                        "the CA refused our nonce: trying again"
                    );
                }
                done => break done,
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str) -> instant_acme::Error {
        let p: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": kind, "detail": "JWS has an invalid anti-replay nonce", "status": 400
        }))
        .unwrap();
        instant_acme::Error::Api(p)
    }

    #[tokio::test]
    async fn nonce_refusals_are_retried_until_the_step_succeeds_and_others_are_not() {
        let mut calls = 0;
        let out: Result<u32, instant_acme::Error> = nonce_retried!("test", {
            calls += 1;
            async {
                if calls < 5 {
                    Err(problem("urn:ietf:params:acme:error:badNonce"))
                } else {
                    Ok(calls)
                }
            }
            .await
        });
        assert_eq!(out.unwrap(), 5);

        let mut calls = 0;
        let out: Result<(), instant_acme::Error> = nonce_retried!("test", {
            calls += 1;
            async { Err(problem("urn:ietf:params:acme:error:malformed")) }.await
        });
        assert!(out.is_err());
        assert_eq!(calls, 1, "only a nonce refusal is retried");

        let mut calls = 0;
        let out: Result<(), instant_acme::Error> = nonce_retried!("test", {
            calls += 1;
            async { Err(problem("urn:ietf:params:acme:error:badNonce")) }.await
        });
        assert!(is_bad_nonce(&out.unwrap_err()));
        assert_eq!(calls, NONCE_TRIES, "and only so many times");
    }
}
