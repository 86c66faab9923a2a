//! Any string as an SNI against a small route table. Invariants: no panic; a route's app is
//! one the table holds; a port in the name is never 0.
#![no_main]
use gatehouse::route::name::{parse_label, Readings};
use gatehouse::route::{AppSpec, RouteTable};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let spec = |id: &str| AppSpec::new(id, 80, vec![]);
        RouteTable::build(&["gw.test".into(), "a.gw.test".into()], vec![spec("web"), spec("my-app"), spec("demos")], None).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Ok(r) = parse_label(name) {
        let readings = match r {
            Readings::One(a) => vec![a],
            Readings::Two(a, b) => vec![a, b],
        };
        for r in readings {
            assert!(r.port != Some(0));
            assert!(name.starts_with(r.app));
        }
    }
    if let Some(Ok(route)) = table().route_name(name) {
        assert!(table().app(&route.app.spec.id).is_some());
        assert!(route.port != 0);
    }
});
