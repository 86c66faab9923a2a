//! Who may reach whom over the VPC, through the API: `GET /v1/vpc/reach`,
//! `PUT /v1/vpc/apps/{id}/reach` (`{"reach": ["db"]}`: replaces the file's list for that
//! app), `DELETE /v1/vpc/apps/{id}/reach` (back to the file's). Stored sealed
//! (`control/vpc-reach/<app>`), so a change through one node reaches every node of a cluster
//! and outlasts restarts; each change reaches the agents' netmaps at once.

use crate::records::ReachRecord;
use crate::server::{error, json, problems, Reply};
use crate::tokens::Caller;
use crate::Control;
use gatehouse_vpc::mesh::Reach;
use serde_json::Value;

impl Control {
    /// The file's `reach` lists with the API's on top; `None` without `[vpc]`.
    async fn effective_reach(
        &self,
    ) -> Result<Option<(Reach, std::collections::BTreeSet<String>)>, crate::ControlError> {
        let config = self.config();
        let Some(vpc) = &config.vpc else {
            return Ok(None);
        };
        let mut reach = Reach::from_config(vpc);
        let mut from_api = std::collections::BTreeSet::new();
        if let Some(records) = self.records.get() {
            for (app, r) in records.vpc_reach().await? {
                if vpc.apps.contains_key(&app) {
                    reach.set(&app, &r.reach);
                    from_api.insert(app);
                }
            }
        }
        Ok(Some((reach, from_api)))
    }

    /// Hands the policy in force to the VPC's coordinator (after a reload or a stored
    /// change).
    pub async fn publish_reach(&self) -> Result<(), crate::ControlError> {
        if let (Some(vpc), Some((reach, _))) = (self.vpc.get(), self.effective_reach().await?) {
            vpc.set_reach(reach);
        }
        Ok(())
    }
}

/// `GET /v1/vpc/reach`: per VPC app, what it may reach and where that comes from.
pub async fn get(control: &Control) -> Reply {
    match control.effective_reach().await {
        Ok(Some((reach, from_api))) => {
            let config = control.config();
            let apps = config
                .vpc
                .as_ref()
                .map(|v| v.apps.keys())
                .into_iter()
                .flatten();
            let view: serde_json::Map<String, Value> = apps
                .map(|app| {
                    let source = if from_api.contains(app) {
                        "api"
                    } else {
                        "config"
                    };
                    (
                        app.clone(),
                        serde_json::json!({ "reach": reach.of(app), "source": source }),
                    )
                })
                .collect();
            json(200, &view)
        }
        Ok(None) => error(404, "no VPC here ([vpc] is not configured)"),
        Err(e) => error(503, e),
    }
}

/// `PUT` (`Some(body)`) or `DELETE` (`None`) `/v1/vpc/apps/{id}/reach`.
pub async fn set(control: &Control, app: &str, body: Option<Value>, caller: &Caller) -> Reply {
    let config = control.config();
    let Some(vpc) = &config.vpc else {
        return error(404, "no VPC here ([vpc] is not configured)");
    };
    if !vpc.apps.contains_key(app) {
        return error(404, format!("{app:?} is not a [vpc.apps] entry"));
    }
    let Some(records) = control.records.get() else {
        return error(503, "no store for the admin API's records");
    };
    let record = match body {
        None => None,
        Some(v) => {
            let reach: Vec<String> = match v.get("reach").cloned().map(serde_json::from_value) {
                Some(Ok(r)) => r,
                _ => return error(400, "the body must be {\"reach\": [\"<app id>\", ...]}"),
            };
            let refused: Vec<String> = reach
                .iter()
                .enumerate()
                .filter(|(_, other)| !vpc.apps.contains_key(*other))
                .map(|(i, other)| {
                    format!("reach[{i}]: {other:?} is not a [vpc.apps] entry: nothing of it joins the VPC")
                })
                .collect();
            if !refused.is_empty() {
                return problems(422, "reach refused", refused);
            }
            Some(ReachRecord {
                reach,
                at: gatehouse_attest::unix_now(),
                by: caller.id.clone(),
            })
        }
    };
    if let Err(e) = records.set_vpc_reach(app, record.as_ref()).await {
        return error(503, e);
    }
    // This node at once; the others through the store's watch.
    if let Err(e) = control.publish_reach().await {
        return error(503, e);
    }
    get(control).await
}
