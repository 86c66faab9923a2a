//! Per-app request counters and latency histograms of the `http` mode. One [`AppStats`] lives
//! in each app of the route table and carries over rebuilds (like its connection count), so a
//! request pays relaxed atomic adds only: no lock, no lookup by name.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One app's request statistics.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx; 5 = no response (client gone).
    by_class: [AtomicU64; 6],
    /// Requests per latency bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AppStats {
    /// Counts one finished request: its status (0 = none sent) and its time from the request
    /// header to the end of the response.
    pub fn record(&self, status: u16, took: Duration) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests finished so far (any status, or none), and the sum of their times in
    /// microseconds: a client that samples both twice gets the rate and the mean latency.
    pub fn totals(&self) -> (u64, u64) {
        let n = self
            .by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        (n, self.sum_micros.load(Ordering::Relaxed))
    }

    /// Requests answered with a status of class `c` (1..=5).
    pub fn count_class(&self, c: usize) -> u64 {
        self.by_class[c - 1].load(Ordering::Relaxed)
    }
}

/// Writes the `http` families for `apps` (id, stats) in the Prometheus text format.
pub fn render<'a>(out: &mut String, apps: impl Iterator<Item = (&'a str, &'a AppStats)>) {
    let apps: Vec<_> = apps.collect();
    let _ = writeln!(
        out,
        "# HELP gatehouse_http_requests_total HTTP requests of mode \"http\" apps, by status class.\n\
         # TYPE gatehouse_http_requests_total counter"
    );
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
    for (id, s) in &apps {
        for (class, n) in CLASSES.iter().zip(&s.by_class) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "gatehouse_http_requests_total{{app=\"{id}\",class=\"{class}\"}} {n}"
            );
        }
    }
    let name = "gatehouse_http_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from request header to response end.\n# TYPE {name} histogram"
    );
    for (id, s) in &apps {
        let mut total = 0;
        for (i, n) in s.buckets.iter().enumerate() {
            total += n.load(Ordering::Relaxed);
            let le = match BUCKETS.get(i) {
                Some(le) => le.to_string(),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{app=\"{id}\",le=\"{le}\"}} {total}");
        }
        let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{app=\"{id}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{app=\"{id}\"}} {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_cumulative_buckets() {
        let s = AppStats::default();
        s.record(200, Duration::from_micros(500));
        s.record(204, Duration::from_millis(30));
        s.record(503, Duration::from_secs(20));
        s.record(0, Duration::from_millis(1));
        assert_eq!((s.count_class(2), s.count_class(5)), (2, 1));
        let mut out = String::new();
        render(&mut out, [("web", &s)].into_iter());
        for line in [
            "gatehouse_http_requests_total{app=\"web\",class=\"2xx\"} 2",
            "gatehouse_http_requests_total{app=\"web\",class=\"none\"} 1",
            "gatehouse_http_request_duration_seconds_bucket{app=\"web\",le=\"0.001\"} 2",
            "gatehouse_http_request_duration_seconds_bucket{app=\"web\",le=\"0.05\"} 3",
            "gatehouse_http_request_duration_seconds_bucket{app=\"web\",le=\"10\"} 3",
            "gatehouse_http_request_duration_seconds_bucket{app=\"web\",le=\"+Inf\"} 4",
            "gatehouse_http_request_duration_seconds_count{app=\"web\"} 4",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
    }
}
