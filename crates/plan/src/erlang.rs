//! Erlang B (loss systems: SIP trunk channels, SFU admission slots) and
//! Erlang C (queues: agents), with the smallest-N solvers the planner needs.
//!
//! Offered load `a` is in erlangs (arrival rate × mean holding time, same
//! time unit). Erlang B uses the stable recursion
//! `B(0) = 1, B(n) = a·B(n−1) / (n + a·B(n−1))`, which never overflows
//! (no factorials or powers) and stays in [0, 1] for any `n`; Erlang C is
//! derived from it: `C = n·B / (n − a·(1 − B))` for `n > a`, else 1.

use serde::Serialize;

/// The solvers refuse to go beyond this many servers (agents, channels,
/// slots): a plan that needs more is an input error, not a plan.
pub const MAX_SERVERS: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErlangError {
    #[error(
        "{what} needs more than {max} servers (offered load {load:.0} erlangs); check {fields}"
    )]
    TooManyServers {
        what: &'static str,
        /// The inputs that drive the load, so the user knows where to look.
        fields: &'static str,
        load: f64,
        max: u64,
    },
    #[error("{what}: offered load must be a finite number ≥ 0 (got {load})")]
    BadLoad { what: &'static str, load: f64 },
    #[error("{what}: target {target} must be in (0, 1)")]
    BadTarget { what: &'static str, target: f64 },
}

/// Blocking probability of an M/M/n/n (or M/G/n/n) loss system.
pub fn erlang_b(a: f64, n: u64) -> f64 {
    if a <= 0.0 {
        return if n == 0 { 1.0 } else { 0.0 };
    }
    let mut b = 1.0;
    for k in 1..=n {
        b = a * b / (k as f64 + a * b);
    }
    b
}

/// Probability that an arrival waits in an M/M/n queue (1 when `n ≤ a`:
/// the queue is unstable and everyone waits).
pub fn erlang_c(a: f64, n: u64) -> f64 {
    c_from_b(a, n, erlang_b(a, n))
}

fn c_from_b(a: f64, n: u64, b: f64) -> f64 {
    let n = n as f64;
    if a <= 0.0 {
        return 0.0;
    }
    if n <= a {
        return 1.0;
    }
    (n * b / (n - a * (1.0 - b))).clamp(0.0, 1.0)
}

/// Share of arrivals answered within `t` (same unit as `h`), M/M/n FIFO:
/// `1 − C·e^(−(n−a)·t/h)`.
pub fn service_level(a: f64, n: u64, t: f64, h: f64) -> f64 {
    sl_from_c(a, n, t, h, erlang_c(a, n))
}

fn sl_from_c(a: f64, n: u64, t: f64, h: f64, c: f64) -> f64 {
    let n = n as f64;
    if a <= 0.0 {
        return 1.0;
    }
    if n <= a {
        return 0.0;
    }
    (1.0 - c * (-(n - a) * t / h).exp()).clamp(0.0, 1.0)
}

/// Average speed of answer (mean wait over all arrivals): `C·h / (n − a)`.
pub fn asa(a: f64, n: u64, h: f64) -> f64 {
    let n_f = n as f64;
    if n_f <= a {
        return f64::INFINITY;
    }
    erlang_c(a, n) * h / (n_f - a)
}

/// Share of time a server is busy: `a / n`.
pub fn occupancy(a: f64, n: u64) -> f64 {
    if n == 0 { 1.0 } else { (a / n as f64).min(1.0) }
}

fn check(what: &'static str, a: f64, target: f64) -> Result<(), ErlangError> {
    if !a.is_finite() || a < 0.0 {
        return Err(ErlangError::BadLoad { what, load: a });
    }
    if !(target > 0.0 && target < 1.0) {
        return Err(ErlangError::BadTarget { what, target });
    }
    Ok(())
}

/// The smallest `n` with Erlang B ≤ `blocking`.
pub fn servers_for_blocking(
    what: &'static str,
    fields: &'static str,
    a: f64,
    blocking: f64,
) -> Result<u64, ErlangError> {
    check(what, a, blocking)?;
    if a == 0.0 {
        return Ok(0);
    }
    let too_many = ErlangError::TooManyServers {
        what,
        fields,
        load: a,
        max: MAX_SERVERS,
    };
    // B > 0.5 whenever n < a/2, so there is nothing to test below that.
    if a > 2.0 * MAX_SERVERS as f64 {
        return Err(too_many);
    }
    let (mut n, mut b) = skip_ahead(a);
    if b <= blocking {
        // The answer lies below the skipped part: walk from 0.
        (n, b) = (0, 1.0);
    }
    for k in n + 1..=MAX_SERVERS {
        b = a * b / (k as f64 + a * b);
        if b <= blocking {
            return Ok(k);
        }
    }
    Err(too_many)
}

/// `(n, B(a, n))` for n = ⌊a − 10√a⌋ without the O(a) walk from 0 (for
/// a above about 400): the recursion starts at n₀ = ⌊a − 20√a⌋ from the fluid
/// estimate B ≈ 1 − n₀/a. In the form 1/B(n) = 1 + (n/a)·1/B(n−1) an error
/// in the start value is multiplied by Π k/a over the steps, about
/// e^(−150) by n, so the result is B itself to double precision (a unit
/// test compares it with the full recursion). Below 400 erlangs: `(0, 1)`.
fn skip_ahead(a: f64) -> (u64, f64) {
    let s = a.sqrt();
    let n0 = (a - 20.0 * s).floor();
    if n0 < 1.0 {
        return (0, 1.0);
    }
    let (n0, n1) = (n0 as u64, (a - 10.0 * s).floor() as u64);
    let mut b = 1.0 - n0 as f64 / a;
    for k in n0 + 1..=n1 {
        b = a * b / (k as f64 + a * b);
    }
    (n1, b)
}

/// What the agent solver found for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Staffing {
    /// Agents on calls (before shrinkage).
    pub agents: u64,
    pub offered_erlangs: f64,
    pub prob_wait: f64,
    pub service_level: f64,
    /// Average speed of answer, seconds.
    pub asa_secs: f64,
    pub occupancy: f64,
}

/// The smallest number of agents meeting a service level (`sl_target` of
/// arrivals answered within `answer_secs`) and an occupancy cap, for
/// `a` erlangs of handle time `handle_secs`.
pub fn agents_for_service_level(
    fields: &'static str,
    a: f64,
    handle_secs: f64,
    answer_secs: f64,
    sl_target: f64,
    max_occupancy: f64,
) -> Result<Staffing, ErlangError> {
    let what = "agents";
    check(what, a, sl_target)?;
    if a == 0.0 {
        return Ok(Staffing {
            agents: 0,
            offered_erlangs: 0.0,
            prob_wait: 0.0,
            service_level: 1.0,
            asa_secs: 0.0,
            occupancy: 0.0,
        });
    }
    let too_many = ErlangError::TooManyServers {
        what,
        fields,
        load: a,
        max: MAX_SERVERS,
    };
    if a >= MAX_SERVERS as f64 {
        return Err(too_many);
    }
    // Walk B up to the first n > a, then test each n.
    let (mut n, mut b) = skip_ahead(a);
    let start = (a.floor() as u64 + 1).max((a / max_occupancy.clamp(1e-9, 1.0)).ceil() as u64);
    while n < start.min(MAX_SERVERS) {
        n += 1;
        b = a * b / (n as f64 + a * b);
    }
    loop {
        if n > MAX_SERVERS {
            return Err(too_many);
        }
        let c = c_from_b(a, n, b);
        let sl = sl_from_c(a, n, answer_secs, handle_secs, c);
        if sl >= sl_target && occupancy(a, n) <= max_occupancy + 1e-12 {
            return Ok(Staffing {
                agents: n,
                offered_erlangs: a,
                prob_wait: c,
                service_level: sl,
                asa_secs: c * handle_secs / (n as f64 - a),
                occupancy: occupancy(a, n),
            });
        }
        n += 1;
        b = a * b / (n as f64 + a * b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_load() {
        assert_eq!(erlang_b(0.0, 3), 0.0);
        assert_eq!(erlang_c(0.0, 3), 0.0);
        assert_eq!(servers_for_blocking("x", "f", 0.0, 0.01), Ok(0));
    }

    #[test]
    fn skipping_ahead_gives_the_full_recursion() {
        for a in [500.0, 1_000.0, 9_800.0, 123_456.7, 900_000.0] {
            let (n, b) = skip_ahead(a);
            assert!(n > 0);
            let full = erlang_b(a, n);
            assert!((b / full - 1.0).abs() < 1e-12, "A={a} n={n}: {b} vs {full}");
        }
        assert_eq!(skip_ahead(399.0), (0, 1.0));
        // The solvers agree with a walk from 0.
        for (a, t) in [(9_800.0, 0.01), (9_800.0, 0.2), (50_000.0, 0.001)] {
            let n = servers_for_blocking("x", "f", a, t).unwrap();
            assert!(
                erlang_b(a, n) <= t && erlang_b(a, n - 1) > t,
                "A={a} target={t}: {n}"
            );
        }
    }

    #[test]
    fn unstable_queue_waits_always() {
        assert_eq!(erlang_c(5.0, 5), 1.0);
        assert_eq!(service_level(5.0, 4, 20.0, 300.0), 0.0);
        assert!(asa(5.0, 5, 300.0).is_infinite());
    }
}
