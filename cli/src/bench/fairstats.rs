//! The arithmetic of `bench fairness` (pure): weighted max-min entitlements,
//! Jain's fairness index, percentiles.

/// Weighted max-min fair shares of `capacity` for tenants with `demands`
/// (`f64::INFINITY` = backlogged the whole time) and `weights`: water-filling
/// — a tenant that asks for less than its weighted share gets its demand,
/// the rest is shared by weight among the others.
pub fn entitlements(capacity: f64, demands: &[f64], weights: &[f64]) -> Vec<f64> {
    let n = demands.len();
    let mut share = vec![0.0; n];
    let mut open: Vec<usize> = (0..n).filter(|&i| weights[i] > 0.0).collect();
    let mut left = capacity.max(0.0);
    while !open.is_empty() && left > 1e-12 {
        let w: f64 = open.iter().map(|&i| weights[i]).sum();
        let satisfied: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| demands[i] - share[i] <= left * weights[i] / w)
            .collect();
        if satisfied.is_empty() {
            for &i in &open {
                share[i] += left * weights[i] / w;
            }
            break;
        }
        for &i in &satisfied {
            left -= demands[i] - share[i];
            share[i] = demands[i];
        }
        open.retain(|i| !satisfied.contains(i));
    }
    share
}

/// Jain's fairness index of `x` (1 = perfectly even; 1/n = one gets all).
pub fn jain(x: &[f64]) -> f64 {
    let (s, s2) = x.iter().fold((0.0, 0.0), |(s, s2), v| (s + v, s2 + v * v));
    if s2 == 0.0 {
        return 1.0;
    }
    s * s / (x.len() as f64 * s2)
}

/// Jain's index of each tenant's delivered service relative to its
/// weighted max-min entitlement of `capacity` (the worker's calibrated
/// capacity, not what was delivered: see [`utilisation`] for how much of it
/// was used; tenants with no entitlement left out).
pub fn jain_vs_entitlement(
    delivered: &[f64],
    demands: &[f64],
    weights: &[f64],
    capacity: f64,
) -> f64 {
    let e = entitlements(capacity, demands, weights);
    let x: Vec<f64> = delivered
        .iter()
        .zip(&e)
        .filter(|(_, e)| **e > 0.0)
        .map(|(d, e)| d / e)
        .collect();
    jain(&x)
}

/// The share of `capacity` delivered to all tenants together (a scheduler
/// that idles the worker scores low here, whatever its Jain index).
pub fn utilisation(delivered: &[f64], capacity: f64) -> f64 {
    delivered.iter().sum::<f64>() / capacity.max(1e-9)
}

/// The `p`-th percentile (0-100, nearest rank) of `v` in milliseconds.
pub fn percentile_ms(v: &[std::time::Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn water_filling() {
        let inf = f64::INFINITY;
        // Both backlogged: shares by weight.
        assert_eq!(entitlements(90.0, &[inf, inf], &[2.0, 1.0]), [60.0, 30.0]);
        // A quiet tenant gets its demand; the flood gets the rest.
        assert_eq!(entitlements(100.0, &[inf, 20.0], &[1.0, 1.0]), [80.0, 20.0]);
        // Nobody backlogged: everyone gets its demand.
        assert_eq!(
            entitlements(100.0, &[30.0, 20.0], &[1.0, 1.0]),
            [30.0, 20.0]
        );
    }

    #[test]
    fn jain_index() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        // FIFO under a 10:1 flood: the quiet tenant gets 1/11 of capacity
        // instead of its demand of 20%.
        let j = jain_vs_entitlement(
            &[100.0 * 10.0 / 11.0, 100.0 / 11.0],
            &[1e9, 20.0],
            &[1.0, 1.0],
            100.0,
        );
        assert!(j < 0.9, "{j}");
        let fair = jain_vs_entitlement(&[80.0, 20.0], &[1e9, 20.0], &[1.0, 1.0], 100.0);
        assert!((fair - 1.0).abs() < 1e-9, "{fair}");
        // Against capacity: a scheduler that idles half the worker keeps a
        // fair split (Jain 1) but shows in the utilisation.
        let idle = [40.0, 10.0];
        assert!((jain_vs_entitlement(&idle, &[1e9, 1e9], &[4.0, 1.0], 100.0) - 1.0).abs() < 1e-9);
        assert!((utilisation(&idle, 100.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn percentiles() {
        let v: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }
}
