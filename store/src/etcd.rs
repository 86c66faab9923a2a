//! The etcd backend, for a cluster of gateway nodes.
//!
//! Keys live under a prefix (`gatehouse/` by default) so that one etcd can hold several
//! clusters or other tenants. A version is the key's `mod_revision`; a conditional write is a
//! `Txn` comparing it (`create_revision == 0` for "absent"); a listing is read at one revision,
//! page by page, and a watch resumes from that revision + 1. When etcd has compacted the history
//! a watch needs (or the connection drops), the follower re-lists and sends the difference.
//!
//! etcd stands outside the TEE's trust: it can deny service but every value that matters
//! reaches it sealed by the caller. Each call has a deadline, and an etcd that cannot be reached
//! is [`StoreError::Unavailable`], so a node keeps serving what it holds (fail static).

use crate::watch::{Mirror, WATCH_CHANNEL};
use crate::{
    check_key, lock_key, Event, Fence, Fenced, Listing, Lock, Store, StoreError, Version,
    Versioned, Watch,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// Keys read per range request while listing (each page at the first page's revision).
const PAGE: i64 = 500;

/// Client certificate and trust for etcd over TLS (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates.
    pub ca_pem: Vec<u8>,
    /// This node's client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, crate::Zeroizing<Vec<u8>>)>,
}

/// Where etcd is and how to talk to it.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` client URLs of the members.
    pub endpoints: Vec<String>,
    /// Prepended to every key; ends with `/`.
    pub prefix: String,
    /// TLS to etcd; required for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// The deadline of each call (and of connecting).
    pub timeout: Duration,
}

/// An etcd-backed [`Store`] shared by the nodes of a cluster.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn version(kv: &KeyValue) -> Version {
    u64::try_from(kv.mod_revision()).unwrap_or(0)
}

impl Etcd {
    /// Connects to the members in `options.endpoints` (the client balances across them and
    /// fails over when one stops).
    pub async fn connect(options: EtcdOptions) -> Result<Etcd, StoreError> {
        if !options.prefix.ends_with('/') || options.prefix.starts_with('/') {
            return Err(StoreError::Backend(format!(
                "etcd key prefix {:?} must end with '/' and not start with one",
                options.prefix
            )));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(10), options.timeout);
        if let Some(tls) = &options.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key.as_slice()));
            }
            connect = connect.with_tls(t);
        }
        let client = tokio::time::timeout(
            options.timeout,
            Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| unavailable(format!("no member of {:?} answered", options.endpoints)))?
        .map_err(|e| unavailable(format!("{:?}: {e}", options.endpoints)))?;
        let store = Etcd {
            client,
            prefix: options.prefix.clone(),
            timeout: options.timeout,
        };
        // Fail at start, with the cause, rather than at the first write.
        let probe = store.prefix.clone();
        let keys_only = GetOptions::new().with_keys_only().with_limit(1);
        store
            .call(|mut c| async move { c.get(probe, Some(keys_only)).await })
            .await
            .map_err(|e| {
                let cause = e.to_string();
                let cause = cause
                    .strip_prefix("store unavailable: etcd: ")
                    .unwrap_or(&cause);
                unavailable(format!(
                    "no member of {:?} answered: {cause}",
                    options.endpoints
                ))
            })?;
        Ok(store)
    }

    /// The client, for what lies outside the key-value trait (leases, locks, members).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn strip(&self, kv: &KeyValue) -> Result<(String, Versioned), StoreError> {
        let key = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(&self.prefix))
            .ok_or_else(|| StoreError::Backend(format!("unexpected etcd key {:?}", kv.key())))?;
        Ok((
            key.to_owned(),
            Versioned {
                value: kv.value().to_vec(),
                version: version(kv),
            },
        ))
    }

    /// Runs one call with the deadline.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// One page of keys in `[from, end)` at `revision` (0 = now); returns the page, the
    /// revision it was read at, and whether more follow.
    async fn read_page(
        &self,
        from: &str,
        end: Vec<u8>,
        revision: i64,
    ) -> Result<(Vec<KeyValue>, i64, bool), StoreError> {
        let mut options = GetOptions::new().with_range(end).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let from = from.to_owned();
        let mut resp = self
            .call(|mut c| async move { c.get(from, Some(options)).await })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let more = resp.more();
        Ok((resp.take_kvs(), revision, more))
    }

    /// Every key under `prefix` at one revision, and that revision.
    async fn list_at(&self, prefix: &str) -> Result<(Listing, u64), StoreError> {
        let start = format!("{}{prefix}", self.prefix);
        let mut from = start.clone();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let end = prefix_end(start.as_bytes());
            let (kvs, at, more) = self.read_page(&from, end, revision).await?;
            revision = at;
            let mut last = None;
            for kv in &kvs {
                out.push(self.strip(kv)?);
                last = Some(kv.key().to_vec());
            }
            match (more, last) {
                (true, Some(mut last)) => {
                    last.push(0);
                    from =
                        String::from_utf8(last).map_err(|e| StoreError::Backend(e.to_string()))?;
                }
                _ => return Ok((out, revision as u64)),
            }
        }
    }

    /// A watch of `prefix` that resumes after `revision`, from a snapshot read at it. Public
    /// for the tests that compact the history under a lagging watcher.
    #[doc(hidden)]
    pub fn watch_after(&self, prefix: &str, listing: &Listing, revision: u64) -> Watch {
        let mirror = Mirror::new(prefix, listing, revision);
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let follower = tokio::spawn(follow(self.clone(), prefix.to_owned(), mirror, tx));
        Watch::new(rx, follower)
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Follows etcd's watch for one watcher; whenever the watch ends (compacted history, lost
/// connection), re-lists, sends the difference and watches again from the listing's revision.
async fn follow(store: Etcd, prefix: String, mut mirror: Mirror, out: mpsc::Sender<Event>) {
    let full = format!("{}{prefix}", store.prefix);
    let mut backoff = Duration::from_millis(100);
    loop {
        let resume = mirror.revision() as i64 + 1;
        let options = WatchOptions::new()
            .with_range(prefix_end(full.as_bytes()))
            .with_start_revision(resume)
            .with_progress_notify();
        let key = full.clone();
        let stream = store
            .call(|mut c| async move { c.watch(key, Some(options)).await })
            .await;
        let why = match stream {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => {
                        break if resp.compact_revision() > 0 {
                            format!(
                                "history before revision {} was compacted",
                                resp.compact_revision()
                            )
                        } else {
                            format!("watch canceled: {}", resp.cancel_reason())
                        };
                    }
                    Ok(Some(resp)) => {
                        backoff = Duration::from_millis(100);
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            let Ok((key, value)) = store.strip(kv) else {
                                continue;
                            };
                            let revision = version(kv);
                            let event = match e.event_type() {
                                EventType::Put => Event::Put { key, value },
                                EventType::Delete => Event::Delete { key },
                            };
                            if let Some(event) = mirror.apply(revision, event) {
                                if out.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Ok(None) => break "the watch stream ended".to_owned(),
                    Err(e) => break format!("{e}"),
                }
            },
            Err(e) => e.to_string(),
        };
        if out.is_closed() {
            return;
        }
        // Re-list until etcd answers, then send what changed while we were not watching.
        loop {
            match store.list_at(&prefix).await {
                Ok((listing, revision)) => {
                    tracing::info!(
                        prefix,
                        why,
                        revision,
                        "etcd watch resumed from a fresh listing"
                    );
                    for event in mirror.resync(listing, revision) {
                        if out.send(event).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(prefix, why, error = %e, "etcd watch: re-list failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let full = self.full(key)?;
        let mut resp = self
            .call(|mut c| async move { c.get(full, None).await })
            .await?;
        match resp.take_kvs().first() {
            Some(kv) => Ok(Some(self.strip(kv)?.1)),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Version, StoreError> {
        let full = self.full(key)?;
        let value = value.to_vec();
        let resp = self
            .call(|mut c| async move { c.put(full, value, None).await })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()) as u64)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>, StoreError> {
        let full = self.full(key)?;
        let compare = if expected == 0 {
            Compare::create_revision(full.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(full.clone(), CompareOp::Equal, expected as i64)
        };
        let txn = etcd_client::Txn::new()
            .when([compare])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), None)])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            return Ok(Ok(resp.header().map_or(0, |h| h.revision()) as u64));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return match get.kvs().first() {
                    Some(kv) => Ok(Err(Some(self.strip(kv)?.1))),
                    None => Ok(Err(None)),
                };
            }
        }
        Ok(Err(None))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let full = self.full(key)?;
        let resp = self
            .call(|mut c| async move { c.delete(full, None).await })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn compare_and_delete(&self, key: &str, expected: Version) -> Result<bool, StoreError> {
        let full = self.full(key)?;
        if expected == 0 {
            return Ok(false);
        }
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected as i64,
            )])
            .and_then([TxnOp::delete(full, None)]);
        let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        Ok(self.list_at(prefix).await?.0)
    }

    async fn watch(&self, prefix: &str) -> Result<(Listing, Watch), StoreError> {
        let (listing, revision) = self.list_at(prefix).await?;
        let watch = self.watch_after(prefix, &listing, revision);
        Ok((listing, watch))
    }

    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Result<Lock, String>, StoreError> {
        let key = lock_key(name)?;
        let full = self.full(&key)?;
        let seconds = ttl.as_secs().max(2) as i64;
        let lease = self
            .call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await?
            .id();
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                full.clone(),
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = match self.call(|mut c| async move { c.txn(txn).await }).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke(lease);
                return Err(e);
            }
        };
        if !resp.succeeded() {
            self.revoke(lease);
            let theirs = resp
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    _ => None,
                })
                .unwrap_or_else(|| "another holder".into());
            return Ok(Err(theirs));
        }
        let revision = resp.header().map_or(0, |h| h.revision()) as u64;
        let keepalive = tokio::spawn(keep_alive(self.client(), lease, ttl, key.clone()));
        let store = self.clone();
        Ok(Ok(Lock::new(Fence { key, revision }, move |release| {
            keepalive.abort();
            if release {
                store.revoke(lease);
            }
        })))
    }

    async fn compare_and_swap_fenced(
        &self,
        fence: &Fence,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Fenced, StoreError> {
        let full = self.full(key)?;
        let lock = self.full(&fence.key)?;
        let compare = if expected == 0 {
            Compare::create_revision(full.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(full.clone(), CompareOp::Equal, expected as i64)
        };
        let txn = etcd_client::Txn::new()
            .when([
                Compare::mod_revision(lock.clone(), CompareOp::Equal, fence.revision as i64),
                compare,
            ])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), None)])
            .or_else([TxnOp::get(lock, None), TxnOp::get(full, None)]);
        let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            return Ok(Fenced::Written(
                resp.header().map_or(0, |h| h.revision()) as u64
            ));
        }
        let gets: Vec<Option<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
                _ => None,
            })
            .collect();
        match gets.as_slice() {
            [Some(lock), current] if version(lock) == fence.revision => {
                Ok(Fenced::Changed(match current {
                    Some(kv) => Some(self.strip(kv)?.1),
                    None => None,
                }))
            }
            _ => Ok(Fenced::LockLost),
        }
    }
}

impl Etcd {
    /// Revokes `lease` in the background (its keys go with it); an error leaves it to expire.
    fn revoke(&self, lease: i64) {
        let mut client = self.client();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}

/// Keeps a lock's lease alive every third of its TTL until aborted; when etcd answers that the
/// lease is gone (it expired while this process was paused or cut off), says so and stops: the
/// holder's fenced writes then fail.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, key: String) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    let lost = match client.lease_keep_alive(lease).await {
        Ok((mut keeper, mut answers)) => loop {
            tokio::time::sleep(every).await;
            if let Err(e) = keeper.keep_alive().await {
                break e.to_string();
            }
            match answers.message().await {
                Ok(Some(a)) if a.ttl() > 0 => {}
                Ok(_) => break "the lease expired".to_owned(),
                Err(e) => break e.to_string(),
            }
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(lock = %key, "lock lost: {lost}; writes fenced by it will be refused");
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(super::prefix_end(b"gatehouse/"), b"gatehouse0");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), vec![0]);
    }
}
