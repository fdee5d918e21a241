//! How `tally load` picks the accounts of a transfer: uniformly, or by a zipf law over ranks.

use rand::Rng;

/// Picks account indexes, uniformly or by a zipf law over ranks (index = rank).
pub enum Picker {
    Uniform(usize),
    Zipf(Zipf),
}

impl Picker {
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            Picker::Uniform(accounts) => rng.gen_range(0..*accounts),
            Picker::Zipf(zipf) => zipf.pick(rng),
        }
    }
}

/// A zipf law over ranks `1..=n` (weight `1 / k^s`), drawn by rejection-inversion (Hörmann and
/// Derflinger, "Rejection-inversion to generate variates from monotone discrete
/// distributions", 1996): a few logarithms a draw and no table.
///
/// A draw from a table of a million cumulative weights (8 MB), by binary search or through a
/// guide table, misses the cache: under zipf keys it took ~14% of `tally load`'s CPU, which is
/// the load's cost and not the ledger's.
pub struct Zipf {
    ranks: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_ranks: f64,
    /// Squeeze: a draw this close to its rank is accepted without the second test.
    squeeze: f64,
}

impl Zipf {
    pub fn new(ranks: usize, exponent: f64) -> Self {
        let mut zipf = Zipf {
            ranks: ranks.max(1) as f64,
            exponent,
            h_integral_x1: 0.0,
            h_integral_ranks: 0.0,
            squeeze: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_ranks = zipf.h_integral(zipf.ranks + 0.5);
        zipf.squeeze = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// A rank's index: `0..n`, 0 the hottest.
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        loop {
            let u = self.h_integral_ranks
                + rng.gen::<f64>() * (self.h_integral_x1 - self.h_integral_ranks);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.ranks);
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as usize - 1;
            }
        }
    }

    /// The weight at `x`: `x^-s`.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// An integral of `h`: `(x^(1-s) - 1) / (1 - s)`, and `ln x` for `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, and its limit 1 at 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, and its limit 1 at 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Draws `draws` ranks of `zipf` and compares each of the first `checked` ranks' share with
    /// its weight's share of the total: within four standard deviations.
    fn shares_match(ranks: usize, exponent: f64, checked: usize) {
        let zipf = Zipf::new(ranks, exponent);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let draws = 400_000;
        let mut counts = vec![0u64; ranks];
        for _ in 0..draws {
            let rank = zipf.pick(&mut rng);
            assert!(rank < ranks, "rank {rank} of {ranks}");
            counts[rank] += 1;
        }
        let weights: Vec<f64> = (1..=ranks).map(|k| (k as f64).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        for (rank, (&count, &weight)) in counts.iter().zip(&weights).take(checked).enumerate() {
            let expected = weight / total;
            let share = count as f64 / draws as f64;
            let deviation = (expected * (1.0 - expected) / draws as f64).sqrt();
            assert!(
                (share - expected).abs() < 4.0 * deviation,
                "{ranks} ranks, s = {exponent}: rank {rank} drawn {share}, expected {expected}"
            );
        }
        // And the tail as a whole, in decades of ranks.
        let mut from = checked;
        while from < ranks {
            let to = (from * 10).min(ranks);
            let expected = weights[from..to].iter().sum::<f64>() / total;
            let share = counts[from..to].iter().sum::<u64>() as f64 / draws as f64;
            let deviation = (expected * (1.0 - expected) / draws as f64).sqrt();
            assert!(
                (share - expected).abs() < 4.0 * deviation + 1e-9,
                "{ranks} ranks, s = {exponent}: ranks {from}..{to} drawn {share}, expected {expected}"
            );
            from = to;
        }
    }

    #[test]
    fn draws_follow_the_law() {
        shares_match(1000, 1.0, 50);
        shares_match(1_000_000, 1.0, 50);
        shares_match(10, 1.0, 10);
        shares_match(100, 0.5, 100);
        shares_match(100, 2.0, 20);
    }

    #[test]
    fn one_rank_is_always_drawn() {
        let zipf = Zipf::new(1, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert!((0..1000).all(|_| zipf.pick(&mut rng) == 0));
    }
}
