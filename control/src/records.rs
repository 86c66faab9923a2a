//! What the admin API stores: apps created through it (`control/apps/<id>`) and drained
//! instances (`control/drained/<app>/<address>`). Every record is sealed under its key by the
//! node's sealer (the cluster key on etcd), so whoever can write the store (an etcd operator)
//! can neither read nor forge a route: a record that does not open is ignored and logged.
//! With the etcd backend a change made through one node reaches every node through the watch.

use crate::ControlError;
use gatehouse::route::{AppSpec, Drained, Origin};
use gatehouse_config::AppConfig;
use gatehouse_store::{Sealer, Store};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The prefix every control-plane record lives under.
pub const PREFIX: &str = "control/";
const APPS: &str = "control/apps/";

/// The app id a store key names, when it is an app's record.
pub fn app_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(APPS)
}
const DRAINED: &str = "control/drained/";
const DOMAINS: &str = "control/domains/";
const REACH: &str = "control/vpc-reach/";

/// A custom domain added through the API (its certificate is kept by ACME).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DomainRecord {
    /// The app its TXT record named when it was added.
    pub app: String,
    /// Unix seconds.
    pub at: u64,
    /// The token id that added it.
    pub by: String,
}

/// A drained instance's record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DrainRecord {
    /// Unix seconds.
    at: u64,
    /// The token id that drained it.
    by: String,
}

/// The control plane's stored records.
#[derive(Debug, Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
}

/// An app as the API stores it, with its record's version (for compare-and-swap).
#[derive(Debug, Clone)]
pub struct StoredApp {
    /// The app.
    pub app: AppConfig,
    /// The record's version.
    pub version: gatehouse_store::Version,
}

impl Records {
    /// Records in `store`, sealed by `sealer`.
    pub fn new(store: Arc<dyn Store>, sealer: Arc<dyn Sealer>) -> Records {
        Records { store, sealer }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn seal<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, ControlError> {
        let json = serde_json::to_vec(value).map_err(|e| ControlError::Record(e.to_string()))?;
        Ok(self.sealer.seal(key, &json)?)
    }

    fn open<T: serde::de::DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Option<T> {
        let plain = match self.sealer.unseal(key, sealed) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key, "control record ignored: it does not open ({e})");
                return None;
            }
        };
        match serde_json::from_slice(&plain) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key, "control record ignored: {e}");
                None
            }
        }
    }

    /// Every stored app, by id.
    pub async fn apps(&self) -> Result<BTreeMap<String, StoredApp>, ControlError> {
        let listing = self.store.list(APPS).await?;
        let mut apps = BTreeMap::new();
        for (key, v) in listing {
            let Some(app) = self.open::<AppConfig>(&key, &v.value) else {
                continue;
            };
            if key[APPS.len()..] != app.id {
                tracing::warn!(key, "control record ignored: it names app {:?}", app.id);
                continue;
            }
            apps.insert(
                app.id.clone(),
                StoredApp {
                    app,
                    version: v.version,
                },
            );
        }
        Ok(apps)
    }

    /// One stored app (`None` when there is none, or its record does not open or names
    /// another app).
    pub async fn app(&self, id: &str) -> Result<Option<StoredApp>, ControlError> {
        let key = format!("{APPS}{id}");
        let Some(v) = self.store.get(&key).await? else {
            return Ok(None);
        };
        Ok(self
            .open::<AppConfig>(&key, &v.value)
            .filter(|app| app.id == id)
            .map(|app| StoredApp {
                app,
                version: v.version,
            }))
    }

    /// Stores a new app; false when one with its id is stored already.
    pub async fn create(&self, app: &AppConfig) -> Result<bool, ControlError> {
        let key = format!("{APPS}{}", app.id);
        let sealed = self.seal(&key, app)?;
        Ok(self.store.compare_and_swap(&key, 0, &sealed).await?.is_ok())
    }

    /// Replaces a stored app if its record is still at `version`; false when it changed.
    pub async fn replace(
        &self,
        app: &AppConfig,
        version: gatehouse_store::Version,
    ) -> Result<bool, ControlError> {
        let key = format!("{APPS}{}", app.id);
        let sealed = self.seal(&key, app)?;
        Ok(self
            .store
            .compare_and_swap(&key, version, &sealed)
            .await?
            .is_ok())
    }

    /// Deletes a stored app and its drains; false when none was stored.
    pub async fn delete(&self, id: &str) -> Result<bool, ControlError> {
        let deleted = self.store.delete(&format!("{APPS}{id}")).await?;
        for (key, _) in self.store.list(&format!("{DRAINED}{id}/")).await? {
            self.store.delete(&key).await?;
        }
        Ok(deleted)
    }

    /// Every drained instance.
    pub async fn drained(&self) -> Result<Drained, ControlError> {
        let listing = self.store.list(DRAINED).await?;
        let mut out = Drained::new();
        for (key, v) in listing {
            if self.open::<DrainRecord>(&key, &v.value).is_none() {
                continue;
            }
            let Some((app, addr)) = key[DRAINED.len()..].split_once('/') else {
                continue;
            };
            if let Ok(addr) = addr.parse::<IpAddr>() {
                out.insert((app.to_owned(), addr));
            }
        }
        Ok(out)
    }

    /// Drains (`true`) or undrains an instance, recording who did.
    pub async fn set_drained(
        &self,
        app: &str,
        addr: IpAddr,
        drained: bool,
        by: &str,
    ) -> Result<(), ControlError> {
        let key = format!("{DRAINED}{app}/{addr}");
        if drained {
            let record = DrainRecord {
                at: gatehouse_attest::unix_now(),
                by: by.to_owned(),
            };
            self.store.put(&key, &self.seal(&key, &record)?).await?;
        } else {
            self.store.delete(&key).await?;
        }
        Ok(())
    }
}

impl Records {
    /// Every custom domain added through the API.
    pub async fn domains(&self) -> Result<BTreeMap<String, DomainRecord>, ControlError> {
        let mut out = BTreeMap::new();
        for (key, v) in self.store.list(DOMAINS).await? {
            if let Some(d) = self.open::<DomainRecord>(&key, &v.value) {
                out.insert(key[DOMAINS.len()..].to_owned(), d);
            }
        }
        Ok(out)
    }

    /// Adds a custom domain; false when it is added already.
    pub async fn add_domain(
        &self,
        domain: &str,
        record: &DomainRecord,
    ) -> Result<bool, ControlError> {
        let key = format!("{DOMAINS}{domain}");
        let sealed = self.seal(&key, record)?;
        Ok(self.store.compare_and_swap(&key, 0, &sealed).await?.is_ok())
    }

    /// Removes a custom domain; false when it was not added.
    pub async fn delete_domain(&self, domain: &str) -> Result<bool, ControlError> {
        Ok(self.store.delete(&format!("{DOMAINS}{domain}")).await?)
    }
}

/// Who a VPC app may reach, as set through the API (it replaces the file's `reach`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReachRecord {
    /// The apps its instances may reach.
    pub reach: Vec<String>,
    /// Unix seconds.
    pub at: u64,
    /// The token id that set it.
    pub by: String,
}

impl Records {
    /// Every `reach` set through the API, by app.
    pub async fn vpc_reach(&self) -> Result<BTreeMap<String, ReachRecord>, ControlError> {
        let mut out = BTreeMap::new();
        for (key, v) in self.store.list(REACH).await? {
            if let Some(r) = self.open::<ReachRecord>(&key, &v.value) {
                out.insert(key[REACH.len()..].to_owned(), r);
            }
        }
        Ok(out)
    }

    /// Sets (`Some`) or forgets (`None`: the file's again) an app's `reach`.
    pub async fn set_vpc_reach(
        &self,
        app: &str,
        record: Option<&ReachRecord>,
    ) -> Result<(), ControlError> {
        let key = format!("{REACH}{app}");
        match record {
            Some(r) => {
                self.store.put(&key, &self.seal(&key, r)?).await?;
            }
            None => {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }
}

/// The route spec of an app created through the API.
pub fn spec(app: &AppConfig) -> AppSpec {
    let mut spec = AppSpec::from(app);
    spec.origin = Origin::Api;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let store = gatehouse_store::Embedded::open(&dir.path().join("s.redb")).unwrap();
        let sealer = gatehouse_store::AesGcmSealer::load_or_create(&dir.path().join("k")).unwrap();
        (dir, Records::new(Arc::new(store), Arc::new(sealer)))
    }

    fn app(id: &str) -> AppConfig {
        let text = format!("id = {id:?}\ninstances = [{{ address = \"10.0.0.2\" }}]");
        toml::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn admin_api_records_are_sealed_and_a_forged_one_is_ignored() {
        let (_dir, r) = records();
        assert!(r.create(&app("web")).await.unwrap());
        assert!(
            !r.create(&app("web")).await.unwrap(),
            "second create refused"
        );
        let stored = r.apps().await.unwrap();
        assert_eq!(stored["web"].app.instances.len(), 1);
        let raw = r.store.get("control/apps/web").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw.value).contains("10.0.0.2"));
        // Someone with write access to the store but not the key plants a route.
        r.store
            .put("control/apps/evil", br#"{"id":"evil"}"#)
            .await
            .unwrap();
        // ... or moves a sealed record under another name.
        r.store.put("control/apps/web2", &raw.value).await.unwrap();
        let ids: Vec<String> = r.apps().await.unwrap().into_keys().collect();
        assert_eq!(ids, ["web"]);
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        r.set_drained("web", addr, true, "ops").await.unwrap();
        assert!(r.drained().await.unwrap().contains(&("web".into(), addr)));
        assert!(r.delete("web").await.unwrap());
        assert!(
            r.drained().await.unwrap().is_empty(),
            "drains go with the app"
        );
    }
}
