//! Routing diagnostics: the load-balance quantities of the Yi-Lightning report, section 2.2, over a batch.
//!
//! For N experts and a batch B, with p_i(x) the router probability of expert i for token x:
//!   f_i = |B|^-1 * sum_x 1[argmax_j p_j(x) = i]      P_i = |B|^-1 * sum_x p_i(x)
//!   L_ST = alpha_ST * N * sum_i f_i * P_i
//! EP load balancing applies the same formula inside each EP group g of N^g experts, over B^g, the tokens
//! dispatched to that group (their argmax expert lies in it); PEP does so inside each partition of N^p
//! experts of a group. Experts are split into groups and partitions in index order.

use crate::bail;
use crate::error::Result;

/// The report's coefficients: alpha_ST, alpha_EP, alpha_PEP.
pub const ALPHA_ST: f64 = 1e-6;
pub const ALPHA_EP: f64 = 1e-4;
pub const ALPHA_PEP: f64 = 1e-3;

#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub tokens: usize,
    /// f_i: fraction of tokens whose most probable expert is i.
    pub f: Vec<f64>,
    /// P_i: mean router probability of expert i.
    pub p: Vec<f64>,
    /// Fraction of tokens that activate expert i under the model's actual routing (top-k or top-p).
    pub load: Vec<f64>,
    /// N * sum f_i P_i (multiply by ALPHA_ST for the loss).
    pub l_st: f64,
    /// N^g * sum over group g of f_i^g P_i^g, per EP group (groups no token was dispatched to are 0).
    pub l_ep_groups: Vec<f64>,
    /// The same per partition, groups in order, partitions in order within each.
    pub l_pep_partitions: Vec<f64>,
    /// histogram[n] = tokens that activated n experts.
    pub experts_per_token: Vec<usize>,
}

impl LayerStats {
    /// Mean of the per-group EP terms.
    pub fn l_ep(&self) -> f64 {
        mean(&self.l_ep_groups)
    }
    pub fn l_pep(&self) -> f64 {
        mean(&self.l_pep_partitions)
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Accumulates one MoE layer's routing over any number of steps.
#[derive(Clone, Debug)]
pub struct RoutingAccumulator {
    n_experts: usize,
    /// Per token: argmax expert and full probabilities.
    argmax: Vec<usize>,
    probs: Vec<f32>,
    activated: Vec<usize>,
    counts: Vec<usize>,
}

impl RoutingAccumulator {
    pub fn new(n_experts: usize) -> Self {
        RoutingAccumulator {
            n_experts,
            argmax: Vec::new(),
            probs: Vec::new(),
            activated: vec![0; n_experts],
            counts: Vec::new(),
        }
    }

    /// Adds tokens: `probs` [tokens, experts], `chosen` the experts each token activated.
    pub fn add(&mut self, probs: &[f32], chosen: &[Vec<(usize, f32)>]) {
        for (row, picks) in probs.chunks_exact(self.n_experts).zip(chosen) {
            let best = (0..self.n_experts).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            self.argmax.push(best);
            self.probs.extend_from_slice(row);
            for &(e, _) in picks {
                self.activated[e] += 1;
            }
            self.counts.push(picks.len());
        }
    }

    /// The statistics with experts split into `ep_groups` groups of `partitions` partitions each.
    pub fn stats(&self, ep_groups: usize, partitions: usize) -> Result<LayerStats> {
        let n = self.n_experts;
        if ep_groups == 0 || partitions == 0 || n % ep_groups != 0 || (n / ep_groups) % partitions != 0 {
            bail!("{n} experts cannot be split into {ep_groups} EP groups of {partitions} equal partitions");
        }
        let tokens = self.argmax.len();
        let all: Vec<usize> = (0..tokens).collect();
        let (f, p, l_st) = balance_term(self, &all, 0..n);
        let group_size = n / ep_groups;
        let part_size = group_size / partitions;
        let in_range = |range: std::ops::Range<usize>| -> Vec<usize> {
            (0..tokens).filter(|&t| range.contains(&self.argmax[t])).collect()
        };
        let l_ep_groups = (0..ep_groups)
            .map(|g| {
                let range = g * group_size..(g + 1) * group_size;
                balance_term(self, &in_range(range.clone()), range).2
            })
            .collect();
        let l_pep_partitions = (0..ep_groups * partitions)
            .map(|q| {
                let range = q * part_size..(q + 1) * part_size;
                balance_term(self, &in_range(range.clone()), range).2
            })
            .collect();
        let max_count = self.counts.iter().copied().max().unwrap_or(0);
        let mut experts_per_token = vec![0; max_count + 1];
        self.counts.iter().for_each(|&c| experts_per_token[c] += 1);
        let load = self
            .activated
            .iter()
            .map(|&a| if tokens == 0 { 0.0 } else { a as f64 / tokens as f64 })
            .collect();
        Ok(LayerStats {
            tokens,
            f,
            p,
            load,
            l_st,
            l_ep_groups,
            l_pep_partitions,
            experts_per_token,
        })
    }
}

/// f_i and P_i of the experts in `experts` over the tokens `batch`, and |experts| * sum f_i P_i.
fn balance_term(
    acc: &RoutingAccumulator,
    batch: &[usize],
    experts: std::ops::Range<usize>,
) -> (Vec<f64>, Vec<f64>, f64) {
    let size = batch.len();
    let mut f = vec![0.0; experts.len()];
    let mut p = vec![0.0; experts.len()];
    if size == 0 {
        return (f, p, 0.0);
    }
    for &t in batch {
        if experts.contains(&acc.argmax[t]) {
            f[acc.argmax[t] - experts.start] += 1.0;
        }
        let row = &acc.probs[t * acc.n_experts..(t + 1) * acc.n_experts];
        for (k, e) in experts.clone().enumerate() {
            p[k] += row[e] as f64;
        }
    }
    f.iter_mut().for_each(|x| *x /= size as f64);
    p.iter_mut().for_each(|x| *x /= size as f64);
    let term = experts.len() as f64 * f.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
    (f, p, term)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_routing_gives_the_minimum_of_one() {
        // Four tokens, each sent to a different expert with probability 1: f = P = 1/4, L = 4 * 4/16 = 1.
        let mut acc = RoutingAccumulator::new(4);
        let mut probs = vec![0.0f32; 16];
        for t in 0..4 {
            probs[t * 4 + t] = 1.0;
        }
        acc.add(&probs, &(0..4).map(|t| vec![(t, 1.0)]).collect::<Vec<_>>());
        let s = acc.stats(2, 2).unwrap();
        assert!((s.l_st - 1.0).abs() < 1e-12);
        assert_eq!(s.f, vec![0.25; 4]);
        // Each group sees its own two tokens, balanced: 2 * (1/2*1/2 + 1/2*1/2) = 1.
        assert_eq!(s.l_ep_groups, vec![1.0, 1.0]);
        assert_eq!(s.l_pep_partitions, vec![1.0; 4]);
        assert_eq!(s.experts_per_token, vec![0, 4]);
    }

    #[test]
    fn collapse_onto_one_expert_gives_n() {
        let mut acc = RoutingAccumulator::new(4);
        let probs: Vec<f32> = (0..3).flat_map(|_| [1.0, 0.0, 0.0, 0.0]).collect();
        acc.add(&probs, &vec![vec![(0, 1.0), (1, 0.0)]; 3]);
        let s = acc.stats(1, 1).unwrap();
        assert!((s.l_st - 4.0).abs() < 1e-12);
        assert_eq!(s.load, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(s.experts_per_token, vec![0, 0, 3]);
        assert!(acc.stats(3, 1).is_err());
    }
}
