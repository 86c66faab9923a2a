//! The ACME account: created once per directory, its credentials (which hold the account's
//! private key) sealed and kept in the store, restored on every start so the account URI,
//! which CAA `accounturi` records pin, stays the same.

use crate::CertbotError;
use base64::Engine;
use gatehouse_store::Zeroizing;
use gatehouse_store::{Sealer, Store};
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, ExternalAccountKey, Key, NewAccount,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to hold an account.
#[derive(Clone)]
pub struct AccountSettings {
    /// The directory URL.
    pub directory: String,
    /// Contact URIs.
    pub contact: Vec<String>,
    /// A PEM CA for the ACME server's TLS (tests); `None` = the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// External account binding: key id and the decoded HMAC key (wiped when dropped).
    pub eab: Option<(String, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for AccountSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSettings")
            .field("directory", &self.directory)
            .field("contact", &self.contact)
            .field("ca_file", &self.ca_file)
            .field("eab_kid", &self.eab.as_ref().map(|(kid, _)| kid))
            .finish()
    }
}

/// Decodes an EAB HMAC key as CAs hand it out (base64url, padding optional).
pub fn decode_eab_key(text: &str) -> Result<Zeroizing<Vec<u8>>, CertbotError> {
    let t = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map(Zeroizing::new)
        .map_err(|e| CertbotError::Config(format!("EAB HMAC key is not base64url: {e}")))
}

/// The store key of the account for `directory`.
pub fn store_key(directory: &str) -> String {
    let safe: String = directory
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("acme/accounts/{safe}")
}

fn builder(s: &AccountSettings) -> Result<AccountBuilder, CertbotError> {
    let b = match &s.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    b.map_err(|e| CertbotError::acme("HTTP client", e))
}

/// The lock a node holds while it creates the account.
const ACCOUNT_LOCK: &str = "acme-account";
/// How long a node that died while creating the account keeps the others waiting.
const ACCOUNT_LOCK_TTL: Duration = Duration::from_secs(30);

/// The account for `s.directory`: restored from the store, or created and stored (sealed).
/// Returns the account and whether it was created now.
pub async fn load_or_create(
    s: &AccountSettings,
    store: &dyn Store,
    sealer: &dyn Sealer,
) -> Result<(Account, bool), CertbotError> {
    let key = store_key(&s.directory);
    if let Some(stored) = store.get(&key).await? {
        return Ok((restore(s, &key, &stored.value, sealer).await?, false));
    }
    // One node creates the account, the others wait for it: the CA would otherwise see one
    // account per node, all but one never used.
    let _creating = loop {
        match store
            .try_lock(
                ACCOUNT_LOCK,
                &format!("pid-{}", std::process::id()),
                ACCOUNT_LOCK_TTL,
            )
            .await?
        {
            Ok(lock) => break lock,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
        if let Some(stored) = store.get(&key).await? {
            return Ok((restore(s, &key, &stored.value, sealer).await?, false));
        }
    };
    if let Some(stored) = store.get(&key).await? {
        return Ok((restore(s, &key, &stored.value, sealer).await?, false));
    }
    let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
    let (account, creds) = match &s.eab {
        // instant-acme has no key-first form with external account binding: a kill between
        // the CA's answer and the store write below leaves one unused account at the CA.
        Some((kid, hmac)) => nonce_retried!(
            "new account",
            builder(s)?
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    s.directory.clone(),
                    Some(&ExternalAccountKey::new(kid.clone(), hmac)),
                )
                .await
        )
        .map_err(|e| CertbotError::acme("new account", e))?,
        None => {
            let pkcs8 = account_key(&s.directory, store, sealer).await?;
            // The same key each try: the CA answers a repeat with the account it made.
            let (account, creds) = nonce_retried!("new account", {
                let key = Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(pkcs8.as_slice()))
                    .map_err(|e| CertbotError::acme("the account key", e))?;
                let pair = (key, PrivateKeyDer::Pkcs8(pkcs8.to_vec().into()));
                builder(s)?.create_from_key(pair, s.directory.clone()).await
            })
            .map_err(|e| CertbotError::acme("new account", e))?;
            if !contact.is_empty() {
                nonce_retried!("account contacts", account.update_contacts(&contact).await)
                    .map_err(|e| CertbotError::acme("account contacts", e))?;
            }
            (account, creds)
        }
    };
    let plain = serde_json::to_vec(&creds)
        .map(Zeroizing::new)
        .map_err(|e| CertbotError::Config(format!("serializing the account: {e}")))?;
    let sealed = sealer.seal(&key, &plain)?;
    // Another node may have created one meanwhile: keep the first one stored.
    if let Err(Some(theirs)) = store.compare_and_swap(&key, 0, &sealed).await? {
        return Ok((restore(s, &key, &theirs.value, sealer).await?, false));
    }
    // The credentials hold the key now; a failure here leaves a record the next creation
    // would reuse, which is harmless.
    if let Err(e) = store.delete(&account_key_store_key(&s.directory)).await {
        tracing::warn!("the account's key record stays behind: {e}");
    }
    Ok((account, true))
}

/// The URI of the account stored for `directory`, if any (no network).
pub async fn stored_uri(
    directory: &str,
    store: &dyn Store,
    sealer: &dyn Sealer,
) -> Result<Option<String>, CertbotError> {
    let key = store_key(directory);
    let Some(stored) = store.get(&key).await? else {
        return Ok(None);
    };
    let plain = sealer.unseal(&key, &stored.value)?;
    let creds: serde_json::Value = serde_json::from_slice(&plain)
        .map_err(|e| CertbotError::Config(format!("stored account {key}: {e}")))?;
    Ok(creds["id"].as_str().map(str::to_owned))
}

/// Where the account's key waits, sealed, between being made and the account being stored.
fn account_key_store_key(directory: &str) -> String {
    store_key(directory).replacen("acme/accounts/", "acme/account-keys/", 1)
}

/// The key the account is created with (PKCS#8), stored sealed before the CA sees it: a kill
/// after the CA made the account but before its credentials were stored leaves the key, and
/// the next start asks for the account of that key, which the CA answers with the same
/// account (RFC 8555 §7.3.1), so no second account is made and the URI that CAA `accounturi`
/// records pin is the one stored.
pub async fn account_key(
    directory: &str,
    store: &dyn Store,
    sealer: &dyn Sealer,
) -> Result<Zeroizing<Vec<u8>>, CertbotError> {
    let key = account_key_store_key(directory);
    let stored = match store.get(&key).await? {
        Some(v) => v.value,
        None => {
            let (_, pkcs8) =
                Key::generate_pkcs8().map_err(|e| CertbotError::acme("the account key", e))?;
            let sealed = sealer.seal(&key, pkcs8.secret_pkcs8_der())?;
            match store.compare_and_swap(&key, 0, &sealed).await? {
                Ok(_) => sealed,
                Err(Some(theirs)) => theirs.value,
                Err(None) => {
                    return Err(CertbotError::Config(format!(
                        "{key}: changed while it was written"
                    )))
                }
            }
        }
    };
    Ok(sealer.unseal(&key, &stored)?)
}

/// The account from its sealed credentials (the CA's directory is fetched again).
async fn restore(
    s: &AccountSettings,
    key: &str,
    sealed: &[u8],
    sealer: &dyn Sealer,
) -> Result<Account, CertbotError> {
    let plain = sealer.unseal(key, sealed)?;
    let creds: AccountCredentials = serde_json::from_slice(&plain)
        .map_err(|e| CertbotError::Config(format!("stored account {key}: {e}")))?;
    builder(s)?
        .from_credentials(creds)
        .await
        .map_err(|e| CertbotError::acme("restore account", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_keys_are_decoded_with_or_without_padding() {
        assert_eq!(*decode_eab_key("AQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(*decode_eab_key(" AQI= \n").unwrap(), vec![1, 2]);
        assert_eq!(*decode_eab_key("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_eab_key("not*base64").is_err());
    }

    #[test]
    fn store_keys_are_valid_and_distinct_per_directory() {
        let a = store_key("https://127.0.0.1:14000/dir");
        let b = store_key("https://acme-v02.api.letsencrypt.org/directory");
        gatehouse_store::check_key(&a).unwrap();
        gatehouse_store::check_key(&b).unwrap();
        assert_ne!(a, b);
    }
}
