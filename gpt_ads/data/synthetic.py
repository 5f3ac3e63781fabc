"""Synthetic user ad-activity sequences from a discrete latent-segment process, with exact Bayes scores.

Every user has a static latent segment s in {0..K-1} (the last `num_bot_segments` segments are bots). Given s,
the events X_t = (event_type, ad_id, device, time_gap) follow a first-order process:

  event_type  e_0 ~ p0_e(s);  e_t ~ T_s[e_{t-1}]                              (peaked, segment-specific rows)
  ad_id       a_t ~ r_s[e_t] 1[a_t = a_{t-1}] + (1 - r_s[e_t]) p_c(s)[cat(a_t)] q(a_t | cat(a_t))
              (retargeting repeats; no repeat term at t = 0; q is a global Zipf popularity within a category)
  device      d_t = d_{t-1} with prob. `device_stickiness`, else a fresh draw from p_d(s) (d_0 ~ p_d(s))
  time_gap    g_t ~ p_g(s, e_t)                                                (bots: near-deterministic rows)

The sequence length L ~ Uniform{min_len..max_len} is drawn INDEPENDENTLY of the segment and of the events, so
the posterior over segments given the observed events is exact and `Process.bayes` (forward filtering over
the K segments) gives the Bayes-optimal next-event losses. Labels: is_bot = (s is a bot segment);
converted ~ Bernoulli(p_conv(s)) with p_conv ~ Beta(1, 3) for humans and 0 for bots.

Segment prior: humans share 1 - bot_fraction and bots share bot_fraction; within each group the shares are a
Dirichlet(5) draw. All process parameters come from `np.random.default_rng(process_seed)`; users are drawn
from a separate seed per `sample` call. Feature value v (0-based) is written as id v + NUM_RESERVED; ad values
are relabeled by decreasing marginal frequency under the process (the Zipf weight reweighted by the segments'
category preferences), so the most frequent ad has id NUM_RESERVED, as the log_uniform sampler assumes.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from gpt_ads.features import NUM_RESERVED, PAD_ID

FEATURE_NAMES = ("event_type", "ad_id", "device", "time_gap")

_FLOOR = 1e-12  # keeps every Dirichlet draw strictly positive, so no observed event has zero likelihood


def default_config() -> ml_collections.ConfigDict:
  """All knobs of the synthetic process."""
  c = ml_collections.ConfigDict()
  c.process_seed = 0
  c.num_segments = 8
  c.num_bot_segments = 2
  c.bot_fraction = 0.1
  c.num_event_types = 6
  c.num_ads = 10_000
  c.num_ad_categories = 20
  c.num_devices = 4
  c.num_gap_buckets = 8
  c.zipf_exponent = 1.2
  c.event_concentration = 0.3          # Dirichlet of the event-type transition rows (small = peaked)
  c.category_concentration = 0.1       # Dirichlet of a human segment's category preference
  c.bot_category_concentration = 0.02  # bots: ad fraud concentrates on very few categories
  c.repeat_low = 0.2                   # retargeting repeat probability r_s[e] ~ U(repeat_low, repeat_high)
  c.repeat_high = 0.8
  c.bot_repeat_boost = 0.2             # added to the bots' r_s[e], clipped to 0.95
  c.device_concentration = 0.5
  c.device_stickiness = 0.85
  c.gap_concentration = 0.5            # Dirichlet of the humans' time-gap rows
  c.bot_gap_concentration = 0.05       # bots are regular
  c.min_len = 8
  c.max_len = 64
  return c


@dataclasses.dataclass
class Users:
  """A batch of sampled users; `features[name]` is int32 [n, max_len] with PAD_ID beyond each length."""
  features: dict[str, np.ndarray]
  lengths: np.ndarray    # int32 [n]
  segment: np.ndarray    # int32 [n]
  is_bot: np.ndarray     # bool [n]
  converted: np.ndarray  # bool [n]
  vocab_sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> vocab size incl. reserved

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def max_len(self) -> int:
    return self.features[FEATURE_NAMES[0]].shape[1]

  def vocab_size(self, name: str) -> int:
    """The feature's vocab size (from the process; else inferred from the largest id present)."""
    return self.vocab_sizes.get(name) or int(self.features[name].max()) + 1


@dataclasses.dataclass
class BayesScores:
  """Exact Bayes scores of `Users` under the true process; NLLs are 0 at t = 0 and at padding."""
  factorized_nll: dict[str, np.ndarray]  # name -> float64 [n, max_len]: -log p(F_j(t) | events < t)
  joint_nll: np.ndarray                  # float64 [n, max_len]: -log p(X_t | events < t)
  p_bot: np.ndarray                      # float64 [n]: P(bot | whole sequence)
  p_conversion: np.ndarray               # float64 [n]: E[converted | whole sequence]


class _Categorical:
  """Vectorized draws from the rows of a probability table [R, V] (one searchsorted over offset CDFs)."""

  def __init__(self, probs: np.ndarray):
    probs = np.asarray(probs, np.float64).reshape(-1, probs.shape[-1])  # [R, V]
    cdf = np.cumsum(probs, axis=-1)
    cdf /= cdf[:, -1:]
    self.num_values = probs.shape[1]
    self.flat = (cdf + np.arange(len(cdf))[:, None]).ravel()  # [R * V], monotone

  def draw(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """One value per entry of `rows` (row indices [n]) -> int64 [n] in [0, V)."""
    u = rows + rng.random(len(rows))
    idx = np.searchsorted(self.flat, u, side="right") - rows * self.num_values
    return np.clip(idx, 0, self.num_values - 1)


def _dirichlet(rng: np.random.Generator, alpha: float, dim: int, size: tuple[int, ...] = ()) -> np.ndarray:
  """Dirichlet(alpha * 1_dim) draws [*size, dim], floored at _FLOOR and renormalized."""
  p = rng.dirichlet(np.full(dim, alpha), size=size) if size else rng.dirichlet(np.full(dim, alpha))
  p = np.maximum(p, _FLOOR)
  return p / p.sum(-1, keepdims=True)


def _validate(cfg: ml_collections.ConfigDict) -> None:
  if not 0 <= cfg.num_bot_segments < cfg.num_segments:
    raise ValueError("need 0 <= num_bot_segments < num_segments (at least one human segment)")
  if cfg.num_bot_segments and not 0 < cfg.bot_fraction < 1:
    raise ValueError("bot_fraction must be in (0, 1) when there are bot segments")
  if not 1 <= cfg.num_ad_categories <= cfg.num_ads:
    raise ValueError("need 1 <= num_ad_categories <= num_ads (every category holds at least one ad)")
  if not 1 <= cfg.min_len <= cfg.max_len:
    raise ValueError("need 1 <= min_len <= max_len")
  if not 0 <= cfg.repeat_low <= cfg.repeat_high <= 1 or not 0 <= cfg.device_stickiness <= 1:
    raise ValueError("repeat_low <= repeat_high and device_stickiness must be probabilities")


class Process:
  """The latent-segment process: parameters drawn once from `cfg.process_seed`.

  Parameter attributes (0-based values; K segments, E event types, A ads, C categories, D devices, G gaps):
    prior [K], is_bot_segment bool [K], p_conv [K], p0_event [K, E], trans [K, E, E] (row = previous type),
    ad_category int [A], ad_weight [A] (global Zipf weight), ad_q [A] (= ad_weight / its category's total),
    cat_pref [K, C], ad_base [K, A] (= cat_pref[s, cat(a)] * ad_q[a]), repeat [K, E] (indexed by the CURRENT
    type), p_device [K, D], stickiness (scalar), p_gap [K, E, G] (indexed by the current type).
  """

  def __init__(self, cfg: ml_collections.ConfigDict):
    _validate(cfg)
    self.cfg = cfg
    self.max_len = int(cfg.max_len)
    sizes = (cfg.num_event_types, cfg.num_ads, cfg.num_devices, cfg.num_gap_buckets)
    self.num_values = dict(zip(FEATURE_NAMES, (int(v) for v in sizes)))
    self.vocab_sizes = {name: v + NUM_RESERVED for name, v in self.num_values.items()}
    rng = np.random.default_rng(cfg.process_seed)
    self._draw_segments(rng)
    self._draw_events(rng)
    self._draw_ads(rng)
    self._draw_devices_and_gaps(rng)
    self._build_samplers()

  # ---- parameters -------------------------------------------------------------------------------------------

  def _draw_segments(self, rng: np.random.Generator) -> None:
    k, b = self.cfg.num_segments, self.cfg.num_bot_segments
    self.is_bot_segment = np.arange(k) >= k - b  # [K]
    human = (1 - (self.cfg.bot_fraction if b else 0.0)) * rng.dirichlet(np.full(k - b, 5.0))
    bots = self.cfg.bot_fraction * rng.dirichlet(np.full(b, 5.0)) if b else np.zeros(0)
    self.prior = np.concatenate([human, bots])  # [K]
    self.p_conv = np.where(self.is_bot_segment, 0.0, rng.beta(1.0, 3.0, size=k))  # [K]

  def _draw_events(self, rng: np.random.Generator) -> None:
    k, e = self.cfg.num_segments, self.cfg.num_event_types
    self.p0_event = _dirichlet(rng, 1.0, e, (k,))                               # [K, E]
    self.trans = _dirichlet(rng, self.cfg.event_concentration, e, (k, e))       # [K, E, E]

  def _draw_ads(self, rng: np.random.Generator) -> None:
    cfg = self.cfg
    k, a, c = cfg.num_segments, cfg.num_ads, cfg.num_ad_categories
    # Every category gets at least one ad; the rest are assigned uniformly at random.
    self.ad_category = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, a - c)]))  # [A]
    weights = 1.0 / np.arange(1, a + 1) ** cfg.zipf_exponent  # [A], by Zipf rank (relabeled below)
    cat_mass = np.bincount(self.ad_category, weights=weights, minlength=c)  # [C]
    self.ad_q = weights / cat_mass[self.ad_category]  # [A]
    conc = np.where(self.is_bot_segment, cfg.bot_category_concentration, cfg.category_concentration)
    self.cat_pref = np.stack([_dirichlet(rng, conc[s], c) for s in range(k)])  # [K, C]
    ad_base = self.cat_pref[:, self.ad_category] * self.ad_q[None, :]  # [K, A]
    # Relabel the ads by decreasing marginal frequency Σ_s prior(s) ad_base[s, a] (exactly the frequency of
    # a_t: repeats keep the marginal), so the most frequent ad gets id NUM_RESERVED.
    order = np.argsort(-(self.prior @ ad_base), kind="stable")
    self.ad_weight, self.ad_category, self.ad_q = weights[order], self.ad_category[order], self.ad_q[order]
    self.ad_base = ad_base[:, order]
    repeat = rng.uniform(cfg.repeat_low, cfg.repeat_high, size=(k, cfg.num_event_types))  # [K, E]
    boost = np.where(self.is_bot_segment, cfg.bot_repeat_boost, 0.0)[:, None]
    self.repeat = np.where(boost > 0, np.minimum(repeat + boost, 0.95), repeat)

  def _draw_devices_and_gaps(self, rng: np.random.Generator) -> None:
    cfg = self.cfg
    k, e, g = cfg.num_segments, cfg.num_event_types, cfg.num_gap_buckets
    self.p_device = _dirichlet(rng, cfg.device_concentration, cfg.num_devices, (k,))  # [K, D]
    self.stickiness = float(cfg.device_stickiness)
    human = _dirichlet(rng, cfg.gap_concentration, g, (k, e))
    bots = _dirichlet(rng, cfg.bot_gap_concentration, g, (k, e))
    self.p_gap = np.where(self.is_bot_segment[:, None, None], bots, human)  # [K, E, G]

  def _build_samplers(self) -> None:
    self._seg_sampler = _Categorical(self.prior[None])
    self._first_event_sampler = _Categorical(self.p0_event)  # row s
    self._event_sampler = _Categorical(self.trans)           # row s * E + e_prev
    self._ad_sampler = _Categorical(self.ad_base)            # row s
    self._device_sampler = _Categorical(self.p_device)       # row s
    self._gap_sampler = _Categorical(self.p_gap)             # row s * E + e

  # ---- sampling ---------------------------------------------------------------------------------------------

  def sample(self, num_users: int, seed: int) -> Users:
    """Draws `num_users` users (vectorized over users, loop over time) from `np.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    n, t_max, num_e = num_users, self.max_len, self.cfg.num_event_types
    seg = self._seg_sampler.draw(rng, np.zeros(n, np.int64))  # [n]
    lengths = rng.integers(self.cfg.min_len, self.cfg.max_len + 1, size=n)  # [n]
    converted = rng.random(n) < self.p_conv[seg]
    values = {name: np.zeros((n, t_max), np.int64) for name in FEATURE_NAMES}  # 0-based, [n, t]
    e, a, d = None, None, None
    for t in range(t_max):
      if t == 0:
        e = self._first_event_sampler.draw(rng, seg)
        a = self._ad_sampler.draw(rng, seg)
        d = self._device_sampler.draw(rng, seg)
      else:
        e = self._event_sampler.draw(rng, seg * num_e + e)
        a, d = a.copy(), d.copy()
        fresh = rng.random(n) >= self.repeat[seg, e]  # no retargeting repeat: a fresh ad
        a[fresh] = self._ad_sampler.draw(rng, seg[fresh])
        fresh = rng.random(n) >= self.stickiness  # device switch: a fresh draw
        d[fresh] = self._device_sampler.draw(rng, seg[fresh])
      g = self._gap_sampler.draw(rng, seg * num_e + e)
      for name, v in zip(FEATURE_NAMES, (e, a, d, g)):
        values[name][:, t] = v
    valid = np.arange(t_max)[None, :] < lengths[:, None]  # [n, t]
    features = {name: np.where(valid, v + NUM_RESERVED, PAD_ID).astype(np.int32) for name, v in values.items()}
    return Users(features=features, lengths=lengths.astype(np.int32), segment=seg.astype(np.int32),
                 is_bot=self.is_bot_segment[seg], converted=converted, vocab_sizes=dict(self.vocab_sizes))

  # ---- exact filtering --------------------------------------------------------------------------------------

  def _first_probs(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-segment likelihood of each first-event feature: name -> [n, K]."""
    e, a, d, g = (x[name] for name in FEATURE_NAMES)
    return {"event_type": self.p0_event[:, e].T, "ad_id": self.ad_base[:, a].T,
            "device": self.p_device[:, d].T, "time_gap": self.p_gap[:, e, g].T}

  def _step_probs(self, prev: dict[str, np.ndarray], x: dict[str, np.ndarray]):
    """Per-segment predictive probabilities of X_t given X_{t-1}.

    Returns (marginal, joint): name -> [n, K]. `marginal[j]` is p(F_j(t) | s, X_{t-1}) with the current event
    type summed out; `joint[j]` is the j-th factor of p(X_t | s, X_{t-1}) (conditioned on the current type).
    """
    ep, ap, dp = prev["event_type"], prev["ad_id"], prev["device"]
    e, a, d, g = (x[name] for name in FEATURE_NAMES)
    next_type = self.trans[:, ep, :]  # [K, n, E]: p(e_t | s, e_{t-1})
    same_ad = (a == ap).astype(np.float64)  # [n]
    base = self.ad_base[:, a]  # [K, n]
    rep_mix = np.einsum("kne,ke->kn", next_type, self.repeat)  # [K, n]
    rep_cur = self.repeat[:, e]  # [K, n]
    device = self.stickiness * (d == dp) + (1 - self.stickiness) * self.p_device[:, d]  # [K, n]
    gap_mix = np.einsum("kne,ken->kn", next_type, self.p_gap[:, :, g])  # [K, n]
    marginal = {"event_type": self.trans[:, ep, e], "ad_id": rep_mix * same_ad + (1 - rep_mix) * base,
                "device": device, "time_gap": gap_mix}
    joint = {"event_type": self.trans[:, ep, e], "ad_id": rep_cur * same_ad + (1 - rep_cur) * base,
             "device": device, "time_gap": self.p_gap[:, e, g]}
    return {k: v.T for k, v in marginal.items()}, {k: v.T for k, v in joint.items()}

  def bayes(self, users: Users) -> BayesScores:
    """Exact forward filtering over the K segments (valid because lengths are independent of everything)."""
    n, t_max = users.features[FEATURE_NAMES[0]].shape
    values = {name: np.maximum(users.features[name].astype(np.int64) - NUM_RESERVED, 0) for name in FEATURE_NAMES}
    x_at = lambda t: {name: v[:, t] for name, v in values.items()}  # noqa: E731
    fact = {name: np.zeros((n, t_max)) for name in FEATURE_NAMES}
    joint_nll = np.zeros((n, t_max))
    log_post = np.log(self.prior)[None, :] + _log_product(self._first_probs(x_at(0)))  # [n, K]
    log_post -= _logsumexp(log_post)[:, None]
    for t in range(1, t_max):
      active = t < users.lengths  # [n]
      marginal, joint = self._step_probs(x_at(t - 1), x_at(t))
      post = np.exp(log_post)  # [n, K]
      for name in FEATURE_NAMES:
        fact[name][:, t] = np.where(active, -np.log(np.sum(post * marginal[name], axis=-1)), 0.0)
      log_joint = log_post + _log_product(joint)  # [n, K]
      lse = _logsumexp(log_joint)  # [n]
      joint_nll[:, t] = np.where(active, -lse, 0.0)
      log_post = np.where(active[:, None], log_joint - lse[:, None], log_post)
    post = np.exp(log_post)
    return BayesScores(factorized_nll=fact, joint_nll=joint_nll, p_bot=post[:, self.is_bot_segment].sum(-1),
                       p_conversion=post @ self.p_conv)


def _log_product(probs: dict[str, np.ndarray]) -> np.ndarray:
  """Sum of the logs of the per-feature factors: [n, K]."""
  return sum(np.log(p) for p in probs.values())


def _logsumexp(x: np.ndarray) -> np.ndarray:
  """log Σ exp over the last axis: [n, K] -> [n]."""
  m = x.max(-1)
  return m + np.log(np.exp(x - m[:, None]).sum(-1))


# ---- reference losses -----------------------------------------------------------------------------------------


def predicted_mask(users: Users) -> np.ndarray:
  """bool [n, max_len]: True at positions 1..len-1 (the first event of each user is not predicted)."""
  t = np.arange(users.max_len)[None, :]
  return (t >= 1) & (t < users.lengths[:, None])


def value_counts(users: Users) -> dict[str, np.ndarray]:
  """name -> int64 [vocab_size] counts of ids over all (non-padding) events; PAD's count is 0."""
  valid = np.arange(users.max_len)[None, :] < users.lengths[:, None]  # [n, t]: every real event
  return {name: np.bincount(users.features[name][valid], minlength=users.vocab_size(name)).astype(np.int64)
          for name in FEATURE_NAMES}


def unigram_nll(train: Users, test: Users, smoothing: float = 0.5) -> dict[str, np.ndarray]:
  """Per-feature -log p_unigram(value) at the predicted test events (0 elsewhere): float64 [n, max_len].

  p comes from the value counts of ALL train events, add-`smoothing` over the feature's real values.
  """
  mask = predicted_mask(test)
  out = {}
  for name, counts in value_counts(train).items():
    real = counts[NUM_RESERVED:] + smoothing  # [vocab_size - NUM_RESERVED]
    log_p = np.concatenate([np.zeros(NUM_RESERVED), np.log(real / real.sum())])  # [vocab_size]
    ids = np.clip(test.features[name], 0, len(log_p) - 1)
    out[name] = np.where(mask, -log_p[ids], 0.0)
  return out


def reference_losses(process: Process, train: Users, test: Users) -> dict:
  """Mean losses over the predicted events of `test`: the Bayes-optimal bounds and the unigram baseline.

  Factorized and unigram losses are sums over features of the per-feature means (what a model with one
  independent softmax head per feature is trained on); the joint loss scores whole events.
  """
  mask = predicted_mask(test)
  scores = process.bayes(test)
  mean = lambda x: float(x[mask].mean())  # noqa: E731
  bayes_per = {name: mean(scores.factorized_nll[name]) for name in FEATURE_NAMES}
  uni_per = {name: mean(v) for name, v in unigram_nll(train, test).items()}
  return {"bayes_factorized_loss": sum(bayes_per.values()), "bayes_joint_loss": mean(scores.joint_nll),
          "unigram_loss": sum(uni_per.values()), "bayes_factorized_loss_per_feature": bayes_per,
          "unigram_loss_per_feature": uni_per}
