//! Issue 20's dashboard, in headless Chromium: sign in with a token, see a seeded app and its
//! instances with their traffic, drain one through the page's button and see traffic stop
//! reaching it. The screenshot is kept (`target/artifacts/dashboard.png`; the README's
//! picture comes from it).

use gatehouse_tests::admin::call;
use gatehouse_tests::browser::{save_artifact, Browser};
use gatehouse_tests::http::{request, text, HttpGateway};
use gatehouse_tests::servers::{bind_same_port, http_whoami};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "dash-token-5e21c0";

/// The shop row's requests/s cell (the fourth) shows a rate above zero.
const RATE_SHOWN: &str =
    "parseFloat(document.querySelector('tr[data-app=\"shop\"]').children[3].textContent) > 0";

async fn served_by(gw: &HttpGateway, n: usize) -> Vec<String> {
    let mut who = Vec::new();
    for _ in 0..n {
        let mut h1 = gw.h1("shop.gw.test").await;
        let resp = h1
            .send_request(
                request("GET", "shop.gw.test", "/")
                    .body(gatehouse_tests::http::body(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        who.push(
            text(resp)
                .await
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    who
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_signs_in_shows_the_app_and_drains_an_instance() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: scripts/test.sh installs it"
    );
    let (port, mut listeners) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    http_whoami(listeners.remove(0), "one");
    http_whoami(listeners.remove(0), "two");
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let gw = HttpGateway::start_edited("", "", |c| {
        c.replace(
            "insecure_no_auth = true",
            &format!("token_file = {:?}", token_file.display().to_string()),
        )
    });
    let admin = gw.gw.admin.unwrap();
    // The seeded app, made through the API.
    let shop = json!({ "id": "shop", "mode": "http", "default_port": port,
        "instances": [{ "address": "127.0.0.1" }, { "address": "127.0.0.2" }] });
    let a = call(admin, "POST", "/v1/apps", Some(TOKEN), Some(&shop));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let before = served_by(&gw, 20).await;
    assert!(
        before.contains(&"one".into()) && before.contains(&"two".into()),
        "{before:?}"
    );

    let mut page = tokio::task::block_in_place(|| Browser::launch(&[]));
    let url = format!("http://{admin}/");
    tokio::task::block_in_place(|| {
        page.goto(&url);
        page.wait_for(
            "document.body && document.body.dataset.ready === '1'",
            "the sign-in form with its handlers",
            Duration::from_secs(10),
        );
        // A wrong token is refused, and nothing is shown.
        page.eval("document.getElementById('token').value = 'wrong'; document.getElementById('signin').click(); true");
        page.wait_for(
            "document.getElementById('login-error').textContent.includes('refused')",
            "the refusal",
            Duration::from_secs(10),
        );
        assert_eq!(
            page.eval("document.getElementById('board').hidden"),
            json!(true)
        );
        page.eval(&format!(
            "document.getElementById('token').value = '{TOKEN}'; document.getElementById('signin').click(); true"
        ));
        page.wait_for(
            "document.querySelectorAll('tr[data-app=\"shop\"] .instance').length === 2",
            "the app and its two instances",
            Duration::from_secs(10),
        );
    });
    // Traffic, so the page shows a request rate on its next refresh.
    served_by(&gw, 30).await;
    tokio::task::block_in_place(|| {
        page.wait_for(
            RATE_SHOWN,
            "a request rate for shop",
            Duration::from_secs(10),
        );
        page.eval("document.querySelector('button[data-action=\"drain\"][data-address=\"127.0.0.1\"]').click(); true");
        page.wait_for(
            "document.querySelector('[data-instance=\"shop/127.0.0.1\"] [data-state]').dataset.state === 'drained'",
            "the instance shown drained",
            Duration::from_secs(10),
        );
    });
    let after = served_by(&gw, 20).await;
    assert!(
        after.iter().all(|w| w == "two"),
        "drained in the page: nothing reaches one: {after:?}"
    );
    let a = call(admin, "GET", "/v1/apps/shop", Some(TOKEN), None);
    assert_eq!(a.body["instances"][0]["drained"], true);
    assert!(gw
        .gw
        .log()
        .contains("token=default POST /v1/apps/shop/instances/127.0.0.1/drain -> 200"));

    // The picture shows the page under traffic.
    served_by(&gw, 30).await;
    let png = tokio::task::block_in_place(|| {
        page.wait_for(
            RATE_SHOWN,
            "a request rate after the drain",
            Duration::from_secs(10),
        );
        page.screenshot()
    });
    save_artifact(&png, "dashboard.png");
}
