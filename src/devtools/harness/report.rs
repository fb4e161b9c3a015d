//! What the benches share around their measurements: the knobs read from the environment, and
//! the cells of their markdown tables, so every report prints a missing figure, a number and a
//! verdict the same way.

use super::probe::Cores;

/// `BENCH_QUICK=1`: a small smoke run that only prints.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// The positive integer in the env var `name`; unset, `quick_default` in a [`quick`] run and
/// `default` otherwise. Anything else there is a mistake in the run's command line, which must
/// not be measured as if it were the default.
pub fn knob_count(name: &str, quick_default: usize, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name} is a positive integer, not {v:?}")),
        Err(_) if quick() => quick_default,
        Err(_) => default,
    }
}

/// The positive, finite number in the env var `name` (see [`knob_count`]).
pub fn knob_number(name: &str, quick_default: f64, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .unwrap_or_else(|| panic!("{name} is a positive number, not {v:?}")),
        Err(_) if quick() => quick_default,
        Err(_) => default,
    }
}

/// The command line that reproduces a run of `bench`: its knobs as they were, with
/// `BENCH_QUICK=1` first in a quick run.
pub fn reproduce(bench: &str, knobs: &[(&str, String)]) -> String {
    let mut line = String::new();
    if quick() {
        line.push_str("BENCH_QUICK=1 ");
    }
    for (name, value) in knobs {
        line.push_str(&format!("{name}={value} "));
    }
    line.push_str(&format!("cargo bench --bench {bench}"));
    line
}

/// `v` with no decimals; `n/a` for NaN (a figure that could not be measured).
pub fn f0(v: f64) -> String {
    fixed(v, 0)
}

/// `v` with two decimals; `n/a` for NaN.
pub fn f2(v: f64) -> String {
    fixed(v, 2)
}

fn fixed(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.decimals$}")
    }
}

/// The four cores cells of a phase: routers, nats-server, bench, other.
pub fn cores_cells(c: &Cores) -> String {
    format!(
        "{} | {} | {} | {}",
        f2(c.routers),
        f2(c.nats),
        f2(c.bench),
        f2(c.other)
    )
}

/// A target's verdict cell.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**NOT met**"
    }
}

/// A check's cell.
pub fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**NO**"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(f0(1234.56), "1235");
        assert_eq!(f2(0.125), "0.12");
        assert_eq!(f2(f64::NAN), "n/a");
        assert_eq!(f0(f64::NAN), "n/a");
        assert_eq!((met(true), met(false)), ("met", "**NOT met**"));
        assert_eq!((yes(true), yes(false)), ("yes", "**NO**"));
    }
}
