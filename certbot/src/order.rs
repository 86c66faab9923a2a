//! One ACME order, start to certificate: challenges set up, answered, cleaned up whatever
//! the outcome; the key generated here; only a CSR leaves.

use crate::alpn::AlpnChallenges;
use crate::challenges::{ChallengeRecord, Ledger};
use crate::keys::{CertKey, KeyType};
use crate::pending::{PendingOrder, SavePending};
use crate::stored::Issued;
use crate::{problem_text, CertbotError};
use gatehouse_dns::propagation::{wait_for_txt, Poll};
use gatehouse_dns::DnsProvider;
use instant_acme::{
    Account, AuthorizationHandle, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use std::sync::Arc;
use std::time::Duration;

/// How the CA's challenges are answered.
#[derive(Debug, Clone)]
pub enum Solver {
    /// DNS-01: TXT at `_acme-challenge.<name>` through the provider, polled until visible.
    Dns01 {
        /// Writes the record.
        provider: Arc<dyn DnsProvider>,
        /// Where to look for it; `None` = the zone's NS, found through `resolvers`.
        authoritative: Option<Vec<std::net::SocketAddr>>,
        /// Resolvers for finding the zone's authoritative servers.
        resolvers: Vec<std::net::SocketAddr>,
        /// Longest wait for propagation.
        timeout: Duration,
    },
    /// TLS-ALPN-01 answered by the gateway's listener.
    TlsAlpn01(Arc<AlpnChallenges>),
}

impl Solver {
    /// The RFC 8657 `validationmethods` label of this solver.
    pub fn method(&self) -> &'static str {
        match self {
            Solver::Dns01 { .. } => "dns-01",
            Solver::TlsAlpn01(_) => "tls-alpn-01",
        }
    }
}

/// What an order asks for.
pub struct Request<'a> {
    /// DNS names (a `*.` prefix for wildcards).
    pub names: &'a [String],
    /// The key to generate.
    pub key_type: KeyType,
    /// An ACME profile, if the CA offers profiles.
    pub profile: Option<&'a str>,
    /// The certificate this one replaces (ARI `replaces`), as its leaf DER.
    pub replaces: Option<&'a [u8]>,
}

/// Something to undo once the order ends.
enum Cleanup {
    /// The TXT records in the ledger.
    Txt,
    Alpn(String),
}

/// Runs one order to a certificate. `before_finalize` stores the order and its key before
/// the CSR goes out (an error there aborts the order), so a certificate lost after finalize
/// can be fetched again with [`resume`].
pub async fn issue(
    account: &Account,
    solver: &Solver,
    req: Request<'_>,
    before_finalize: SavePending<'_>,
) -> Result<Issued, CertbotError> {
    let ledger = Ledger {
        id: before_finalize.id,
        store: before_finalize.store,
    };
    // What an earlier order of this target left in DNS (it was killed before its clean-up).
    if let Solver::Dns01 { provider, .. } = solver {
        ledger.sweep(provider.as_ref()).await?;
    }
    let mut cleanup = Vec::new();
    let result = run(account, solver, &req, &mut cleanup, before_finalize, ledger).await;
    for c in cleanup {
        match (c, solver) {
            (Cleanup::Txt, Solver::Dns01 { provider, .. }) => {
                if let Err(e) = ledger.sweep(provider.as_ref()).await {
                    tracing::warn!("the challenge records are left for the next order: {e}");
                }
            }
            (Cleanup::Alpn(name), Solver::TlsAlpn01(alpn)) => alpn.withdraw(&name).await,
            _ => {}
        }
    }
    result
}

/// What became of a pending order.
pub enum Resumed {
    /// Its certificate, downloaded (and finalized first if the CA was still waiting for it).
    Issued(Issued),
    /// The CA no longer has a usable order (expired, invalid, unknown): order anew.
    Gone(String),
}

/// Fetches a pending order and downloads its certificate. A transport failure is an error
/// (keep the pending order, retry later); an order the CA refuses or cannot finish is
/// [`Resumed::Gone`].
pub async fn resume(account: &Account, pending: PendingOrder) -> Result<Resumed, CertbotError> {
    let mut order = match nonce_retried!("order", account.order(pending.url.clone()).await) {
        Ok(order) => order,
        Err(instant_acme::Error::Api(p)) => return Ok(Resumed::Gone(problem_text(&p))),
        Err(e) => return Err(CertbotError::acme("fetching the pending order", e)),
    };
    match order.state().status {
        OrderStatus::Processing | OrderStatus::Valid => {}
        OrderStatus::Ready => {
            let csr = pending.key.csr(&pending.names)?;
            match nonce_retried!("finalize", order.finalize_csr(&csr).await) {
                Ok(()) => {}
                Err(instant_acme::Error::Api(p)) => return Ok(Resumed::Gone(problem_text(&p))),
                Err(e) => return Err(CertbotError::acme("finalize", e)),
            }
        }
        other => return Ok(Resumed::Gone(format!("the order is {other:?}"))),
    }
    let chain = match nonce_retried!(
        "certificate download",
        order.poll_certificate(&retry_policy()).await
    ) {
        Ok(chain) => chain,
        Err(instant_acme::Error::Api(p)) => return Ok(Resumed::Gone(problem_text(&p))),
        Err(e) => return Err(CertbotError::acme("certificate download", e)),
    };
    checked(pending.names, &chain, pending.key).map(Resumed::Issued)
}

/// Polling for validation and for the certificate.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(180))
}

/// The CA's chain as an [`Issued`], held to the order first: exactly the ordered names, a
/// chain to the issuer sent with it, our key.
fn checked(names: Vec<String>, chain_pem: &str, key: CertKey) -> Result<Issued, CertbotError> {
    let issued = Issued::from_pem(names, chain_pem, key)?;
    crate::stored::check_chain(&issued.names, &issued.chain)?;
    issued.key.certified(issued.chain.clone())?;
    Ok(issued)
}

/// Whether the CA refused `replaces` because that certificate already has a replacement.
fn already_replaced(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:alreadyReplaced"))
}

async fn run(
    account: &Account,
    solver: &Solver,
    req: &Request<'_>,
    cleanup: &mut Vec<Cleanup>,
    before_finalize: SavePending<'_>,
    ledger: Ledger<'_>,
) -> Result<Issued, CertbotError> {
    let ids: Vec<Identifier> = req
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let build = || match req.profile {
        Some(p) => NewOrder::new(&ids).profile(p),
        None => NewOrder::new(&ids),
    };
    let mut new = build();
    let replaced = req
        .replaces
        .map(|der| rustls_pki_types::CertificateDer::from(der.to_vec()));
    if let Some(der) = &replaced {
        if let Ok(id) = CertificateIdentifier::try_from(der) {
            new = new.replaces(id.into_owned());
        }
    }
    let mut order = match nonce_retried!("new order", account.new_order(&new).await) {
        Ok(order) => order,
        // A replacement of this certificate was finalized already (its certificate lost
        // before we kept it, and its order gone): order without `replaces`.
        Err(e) if already_replaced(&e) => {
            tracing::warn!(names = ?req.names, "the CA says the current certificate was already replaced: ordering without `replaces`");
            nonce_retried!("new order", account.new_order(&build()).await)
                .map_err(|e| CertbotError::acme("new order", e))?
        }
        Err(e) => return Err(CertbotError::acme("new order", e)),
    };

    // An authorization whose fetch met a refused nonce is fetched again by a new pass over
    // the order's list (instant-acme's pass moves on); `answered` keeps a pass from answering
    // one twice.
    let mut answered = std::collections::HashSet::new();
    let mut refused = 1;
    'pass: loop {
        let mut auths = order.authorizations();
        while let Some(auth) = auths.next().await {
            let auth = match auth {
                Ok(auth) => auth,
                Err(e) if crate::nonce::is_bad_nonce(&e) && refused < crate::nonce::NONCE_TRIES => {
                    refused += 1;
                    continue 'pass;
                }
                Err(e) => return Err(CertbotError::acme("authorization", e)),
            };
            if auth.status == AuthorizationStatus::Valid || !answered.insert(auth.url().to_owned())
            {
                continue; // reused, or answered in an earlier pass
            }
            answer(auth, solver, cleanup, ledger).await?;
        }
        break;
    }

    let policy = retry_policy();
    let status = nonce_retried!("waiting for validation", order.poll_ready(&policy).await)
        .map_err(|e| CertbotError::acme("waiting for validation", e))?;
    if status != OrderStatus::Ready {
        return Err(validation_error(&mut order, status).await);
    }
    let pending = PendingOrder {
        url: order.url().to_owned(),
        names: req.names.to_vec(),
        key: CertKey::generate(req.key_type)?,
    };
    before_finalize.save(&pending).await?;
    let csr = pending.key.csr(req.names)?;
    nonce_retried!("finalize", order.finalize_csr(&csr).await)
        .map_err(|e| CertbotError::acme("finalize", e))?;
    let chain = nonce_retried!(
        "certificate download",
        order.poll_certificate(&policy).await
    )
    .map_err(|e| CertbotError::acme("certificate download", e))?;
    checked(pending.names, &chain, pending.key)
}

/// Answers one authorization's challenge: the TXT record or the TLS-ALPN certificate in place
/// (and noted for the cleanup), then the CA told to validate.
async fn answer(
    mut auth: AuthorizationHandle<'_>,
    solver: &Solver,
    cleanup: &mut Vec<Cleanup>,
    ledger: Ledger<'_>,
) -> Result<(), CertbotError> {
    let ident = auth.identifier().identifier.clone();
    let Identifier::Dns(domain) = ident else {
        return Err(CertbotError::Config(format!(
            "unsupported identifier {ident:?}"
        )));
    };
    let kind = match solver {
        Solver::Dns01 { .. } => ChallengeType::Dns01,
        Solver::TlsAlpn01(_) => ChallengeType::TlsAlpn01,
    };
    let mut challenge = auth
        .challenge(kind.clone())
        .ok_or_else(|| CertbotError::Validation {
            name: domain.clone(),
            detail: format!("the CA offers no {kind:?} challenge"),
        })?;
    let key_auth = challenge.key_authorization();
    match solver {
        Solver::Dns01 {
            provider,
            authoritative,
            resolvers,
            timeout,
        } => {
            let name = format!("_acme-challenge.{domain}");
            let value = key_auth.dns_value();
            ledger
                .add(ChallengeRecord {
                    name: name.clone(),
                    value: value.clone(),
                })
                .await?;
            if !matches!(cleanup.first(), Some(Cleanup::Txt)) {
                cleanup.insert(0, Cleanup::Txt);
            }
            provider.add_txt(&name, &value).await?;
            let servers = match authoritative {
                Some(s) if !s.is_empty() => s.clone(),
                _ => authoritative_for(&domain, resolvers).await?,
            };
            let poll = Poll {
                servers,
                timeout: *timeout,
                interval: Duration::from_millis(500),
            };
            wait_for_txt(&poll, &name, &value).await?;
        }
        Solver::TlsAlpn01(alpn) => {
            alpn.publish(&domain, key_auth.digest().as_ref()).await?;
            cleanup.push(Cleanup::Alpn(domain.clone()));
        }
    }
    tracing::debug!(%domain, method = solver.method(), "challenge ready");
    nonce_retried!("challenge ready", challenge.set_ready().await)
        .map_err(|e| CertbotError::acme("challenge ready", e))?;
    Ok(())
}

/// The reason the CA gave for the first failed authorization.
async fn validation_error(order: &mut instant_acme::Order, status: OrderStatus) -> CertbotError {
    let mut auths = order.authorizations();
    while let Some(Ok(mut auth)) = auths.next().await {
        let Ok(state) = auth.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = state.identifier().to_string();
        let detail = state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref().map(problem_text))
            .unwrap_or_else(|| format!("authorization {:?}", state.status));
        return CertbotError::Validation { name, detail };
    }
    let detail = order
        .state()
        .error
        .as_ref()
        .map(problem_text)
        .unwrap_or_else(|| format!("order ended {status:?}"));
    CertbotError::Validation {
        name: "order".into(),
        detail,
    }
}

/// The authoritative servers of the zone holding `domain`: the NS set of the nearest
/// ancestor that has one.
async fn authoritative_for(
    domain: &str,
    resolvers: &[std::net::SocketAddr],
) -> Result<Vec<std::net::SocketAddr>, CertbotError> {
    let mut name = domain.trim_start_matches("*.").to_owned();
    loop {
        match gatehouse_dns::propagation::authoritative_servers(&name, resolvers).await {
            Ok(servers) => return Ok(servers),
            Err(e) => match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent.to_owned(),
                _ => return Err(e.into()),
            },
        }
    }
}
