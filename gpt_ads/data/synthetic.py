"""Synthetic user ad-activity sequences from a discrete latent-segment process, with exact Bayes scores.

Every user has a static latent segment s in {0..K-1} (the last `num_bot_segments` segments are bots). Given s,
the events X_t = (event_type, ad_id, device, time_gap) follow a first-order process:

  event_type  e_0 ~ p0_e(s);  e_t ~ T_s[e_{t-1}]                              (peaked, segment-specific rows)
  ad_id       a_t ~ r_s[e_t] 1[a_t = a_{t-1}] + (1 - r_s[e_t]) b_s(a_t)
              (retargeting repeats; no repeat term at t = 0; b_s(a) = p_c(s)[cat(a)] q(a | cat(a)) with q a
              global Zipf popularity within a category, except for `indiscriminate` bots, below)
  device      d_t = d_{t-1} with prob. `device_stickiness`, else a fresh draw from p_d(s) (d_0 ~ p_d(s))
  time_gap    g_t ~ p_g(s, e_t)

and the sequence length is L ~ Uniform{lo_s..hi_s}, independent of the events given s: humans (and `legacy`
bots) use min_len..max_len, a bot kind may have its own range (`bot_length_ranges`). Labels: is_bot = (s is a
bot segment); converted ~ Bernoulli(p_conv(s)) with p_conv ~ Beta(1, 3) for humans and 0 for bots.

Bot kinds (`bot_kinds`: one comma-separated entry per bot segment, in segment order): legacy, regular,
indiscriminate, clicker and mimic; what each one redraws is described in gpt_ads.data.bot_kinds.

Random streams: the segment prior (humans share 1 - bot_fraction and bots share bot_fraction; within each
group the shares are a Dirichlet(5) draw), p_conv and the parameters of every segment as a `legacy` process
draws them come from `np.random.default_rng(process_seed)` in the original order, so the human segments (and
`legacy` bots) are exactly the original process's for the same num_segments / num_bot_segments; a non-legacy
bot segment s then redraws its parameters from its own stream `np.random.default_rng([process_seed, 1, s])`.
Users are drawn from a separate seed per `sample` call. Feature value v (0-based) is written as id
v + NUM_RESERVED; ad values are relabeled by decreasing marginal frequency under the process (Σ_s prior(s)
b_s(a)), so the most frequent ad has id NUM_RESERVED, as the log_uniform sampler assumes.

`Process.bayes` (forward filtering over the K segments) gives the exact scores: per-event predictive losses
-log p(X_t | X_<t, L > t) (see its docstring) and the posterior P(s | X_0..X_{L-1}, L) behind p_bot / p_kind /
p_conversion. Configs stored before `bot_kinds` existed (no such key) rebuild the original process.
"""

from __future__ import annotations

import dataclasses
import difflib

import ml_collections
import numpy as np

from gpt_ads.data import bot_kinds
from gpt_ads.data.bot_kinds import BOT_KINDS, CLICK_TYPE, bot_kind_list
from gpt_ads.data.draws import Categorical, dirichlet
from gpt_ads.features import NUM_RESERVED, PAD_ID

__all__ = ["BOT_KINDS", "CLICK_TYPE", "FEATURE_NAMES", "BayesScores", "Process", "Users", "bot_kind_list",
           "default_config", "predicted_mask", "reference_losses", "unigram_nll", "value_counts"]

FEATURE_NAMES = ("event_type", "ad_id", "device", "time_gap")


def default_config() -> ml_collections.ConfigDict:
  """All knobs of the synthetic process."""
  c = ml_collections.ConfigDict()
  c.process_seed = 0
  c.num_segments = 10                  # 6 human segments + the 4 bot kinds below
  c.num_bot_segments = 4
  c.bot_fraction = 0.1
  c.bot_kinds = "regular,indiscriminate,clicker,mimic"  # one kind per bot segment; "" = all `legacy`
  # "kind:lo-hi" entries: that kind's L ~ Uniform{lo..hi}, clipped into [min_len, max_len]; other kinds and
  # humans: min_len..max_len. The default mixes short bursts (regular), long (indiscriminate) and human lengths.
  c.bot_length_ranges = "regular:8-16,indiscriminate:24-64,clicker:8-32"
  c.mimic_strength = 0.15              # mimic bots: weight of the fresh draw mixed into the copied human rows
  c.mimic_concentration = 5.0          # mimic bots: the fresh row is Dirichlet(mimic_concentration * human row)
  c.click_mass = 0.8                   # clicker bots: mass of CLICK_TYPE in every event-type row
  c.indiscriminate_uniform = 0.9       # indiscriminate bots: weight of the uniform distribution over all ads
  c.num_event_types = 6
  c.num_ads = 10_000
  c.num_ad_categories = 20
  c.num_devices = 4
  c.num_gap_buckets = 8
  c.zipf_exponent = 1.2
  c.event_concentration = 0.3          # Dirichlet of the event-type transition rows (small = peaked)
  c.category_concentration = 0.1       # Dirichlet of a human segment's category preference
  c.bot_category_concentration = 0.02  # legacy bots: ad fraud concentrates on very few categories
  c.repeat_low = 0.2                   # retargeting repeat probability r_s[e] ~ U(repeat_low, repeat_high)
  c.repeat_high = 0.8
  c.bot_repeat_boost = 0.2             # added to the legacy bots' r_s[e], clipped to 0.95
  c.device_concentration = 0.5
  c.device_stickiness = 0.85
  c.gap_concentration = 0.5            # Dirichlet of the humans' time-gap rows
  c.bot_gap_concentration = 0.05       # legacy and regular bots are regular
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
  bot_kind: np.ndarray | None = None  # int32 [n]: index into Process.bot_kind_names, -1 = human (None: unknown)

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
  """Exact Bayes scores of `Users` under the true process; NLLs are 0 at t = 0 and at padding.

  NLLs at 1 <= t < L: -log p(· | events < t, L > t) (the history and the existence of event t, not the length);
  p_bot / p_kind / p_conversion: the posterior given the whole sequence AND its length L.
  """
  factorized_nll: dict[str, np.ndarray]  # name -> float64 [n, max_len]: -log p(F_j(t) | events < t, L > t)
  joint_nll: np.ndarray                  # float64 [n, max_len]: -log p(X_t | events < t, L > t)
  p_bot: np.ndarray                      # float64 [n]: P(bot | whole sequence, L)
  p_conversion: np.ndarray               # float64 [n]: E[converted | whole sequence, L]
  p_kind: np.ndarray                     # float64 [n, num_kinds]: P(bot of kind j | whole sequence, L)


def _validate(cfg: ml_collections.ConfigDict) -> None:
  known = default_config().keys()
  unknown = [k for k in cfg.keys() if k not in known]
  if unknown:  # the generator owns its keys: gpt_ads.config_lib checks every other section
    close = difflib.get_close_matches(unknown[0], known, n=1)
    raise ValueError(f"unknown config key(s) {', '.join('config.data.synthetic.' + k for k in unknown)}"
                     + (f" (did you mean config.data.synthetic.{close[0]}?)" if close else "")
                     + "; remove them (a new key must also be added to gpt_ads.data.synthetic.default_config)")
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
  bot_kinds.validate(cfg)


class Process:
  """The latent-segment process: parameters drawn once from `cfg.process_seed`.

  Parameter attributes (0-based values; K segments, E event types, A ads, C categories, D devices, G gaps):
    prior [K], is_bot_segment bool [K], p_conv [K], p0_event [K, E], trans [K, E, E] (row = previous type),
    ad_category int [A], ad_weight [A] (global Zipf weight), ad_q [A] (= ad_weight / its category's total),
    ad_base [K, A] (b_s: the fresh-ad distribution; = cat_pref[s, cat(a)] * ad_q[a] except for indiscriminate
    bots), cat_pref [K, C] (b_s's category marginal), repeat [K, E] (indexed by the CURRENT type),
    p_device [K, D], stickiness (scalar), p_gap [K, E, G] (indexed by the current type),
    length_low / length_high int [K] (L ~ Uniform{length_low[s]..length_high[s]}).
  Bot kinds: bot_kind_names (tuple, the distinct kinds in order of first appearance), segment_kind int [K]
  (index into bot_kind_names, -1 for humans), mimic_of int [K] (the human a mimic copies, else -1).
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
    self._draw_bot_kinds()
    self._relabel_ads()
    self._build_samplers()

  # ---- parameters -------------------------------------------------------------------------------------------

  def _draw_segments(self, rng: np.random.Generator) -> None:
    k, b = self.cfg.num_segments, self.cfg.num_bot_segments
    self.is_bot_segment = np.arange(k) >= k - b  # [K]
    human = (1 - (self.cfg.bot_fraction if b else 0.0)) * rng.dirichlet(np.full(k - b, 5.0))
    bots = self.cfg.bot_fraction * rng.dirichlet(np.full(b, 5.0)) if b else np.zeros(0)
    self.prior = np.concatenate([human, bots])  # [K]
    self.p_conv = np.where(self.is_bot_segment, 0.0, rng.beta(1.0, 3.0, size=k))  # [K]
    kinds = bot_kind_list(self.cfg)
    self.bot_kind_names = tuple(dict.fromkeys(kinds))
    self.segment_kind = np.concatenate([np.full(k - b, -1), [self.bot_kind_names.index(x) for x in kinds]])
    self.segment_kind = self.segment_kind.astype(np.int64)  # [K]
    ranges = bot_kinds.length_ranges(self.cfg)
    lo, hi = np.full(k, self.cfg.min_len), np.full(k, self.cfg.max_len)
    for s in range(k - b, k):
      lo[s], hi[s] = np.clip(ranges.get(kinds[s - (k - b)], (lo[s], hi[s])), self.cfg.min_len, self.cfg.max_len)
    self.length_low, self.length_high = lo.astype(np.int64), hi.astype(np.int64)  # [K]

  def _draw_events(self, rng: np.random.Generator) -> None:
    k, e = self.cfg.num_segments, self.cfg.num_event_types
    self.p0_event = dirichlet(rng, 1.0, e, (k,))                               # [K, E]
    self.trans = dirichlet(rng, self.cfg.event_concentration, e, (k, e))       # [K, E, E]

  def _draw_ads(self, rng: np.random.Generator) -> None:
    cfg = self.cfg
    k, a, c = cfg.num_segments, cfg.num_ads, cfg.num_ad_categories
    # Every category gets at least one ad; the rest are assigned uniformly at random.
    self.ad_category = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, a - c)]))  # [A]
    self.ad_weight = 1.0 / np.arange(1, a + 1) ** cfg.zipf_exponent  # [A], by Zipf rank (relabeled later)
    cat_mass = np.bincount(self.ad_category, weights=self.ad_weight, minlength=c)  # [C]
    self.ad_q = self.ad_weight / cat_mass[self.ad_category]  # [A]
    conc = np.where(self.is_bot_segment, cfg.bot_category_concentration, cfg.category_concentration)
    self.cat_pref = np.stack([dirichlet(rng, conc[s], c) for s in range(k)])  # [K, C]
    self.ad_base = self.cat_pref[:, self.ad_category] * self.ad_q[None, :]  # [K, A]
    repeat = rng.uniform(cfg.repeat_low, cfg.repeat_high, size=(k, cfg.num_event_types))  # [K, E]
    boost = np.where(self.is_bot_segment, cfg.bot_repeat_boost, 0.0)[:, None]
    self.repeat = np.where(boost > 0, np.minimum(repeat + boost, 0.95), repeat)

  def _draw_devices_and_gaps(self, rng: np.random.Generator) -> None:
    cfg = self.cfg
    k, e, g = cfg.num_segments, cfg.num_event_types, cfg.num_gap_buckets
    self.p_device = dirichlet(rng, cfg.device_concentration, cfg.num_devices, (k,))  # [K, D]
    self.stickiness = float(cfg.device_stickiness)
    human = dirichlet(rng, cfg.gap_concentration, g, (k, e))
    bots = dirichlet(rng, cfg.bot_gap_concentration, g, (k, e))
    self.p_gap = np.where(self.is_bot_segment[:, None, None], bots, human)  # [K, E, G]

  def _draw_bot_kinds(self) -> None:
    """Redraws every non-legacy bot segment's parameters as its kind says (gpt_ads.data.bot_kinds), in place."""
    k = self.cfg.num_segments
    humans = np.flatnonzero(~self.is_bot_segment)
    by_size = humans[np.argsort(-self.prior[humans], kind="stable")]  # the i-th mimic copies by_size[i]
    self.mimic_of = np.full(k, -1, np.int64)  # [K]
    for s in np.flatnonzero(self.is_bot_segment):
      kind = self.bot_kind_names[self.segment_kind[s]]
      if kind == "legacy":
        continue
      rng = np.random.default_rng([int(self.cfg.process_seed), 1, int(s)])
      if kind == "mimic":
        self.mimic_of[s] = by_size[np.sum(self.mimic_of >= 0) % len(by_size)]
        human = {name: getattr(self, name)[self.mimic_of[s]] for name in (*bot_kinds.MIMIC_ROWS, "repeat")}
        params = bot_kinds.mimic_params(rng, self.cfg, human, self.ad_category, self.ad_q)
      else:
        params = bot_kinds.kind_params(rng, self.cfg, kind, self.ad_category, self.ad_q)
      for name, value in params.items():
        getattr(self, name)[s] = value

  def _relabel_ads(self) -> None:
    # Relabel the ads by decreasing marginal frequency Σ_s prior(s) ad_base[s, a] (exactly the frequency of
    # a_t: repeats keep the marginal), so the most frequent ad gets id NUM_RESERVED.
    order = np.argsort(-(self.prior @ self.ad_base), kind="stable")
    self.ad_weight, self.ad_category, self.ad_q = self.ad_weight[order], self.ad_category[order], self.ad_q[order]
    self.ad_base = self.ad_base[:, order]

  def _build_samplers(self) -> None:
    self._seg_sampler = Categorical(self.prior[None])
    self._first_event_sampler = Categorical(self.p0_event)  # row s
    self._event_sampler = Categorical(self.trans)           # row s * E + e_prev
    self._ad_sampler = Categorical(self.ad_base)            # row s
    self._device_sampler = Categorical(self.p_device)       # row s
    self._gap_sampler = Categorical(self.p_gap)             # row s * E + e

  # ---- sampling ---------------------------------------------------------------------------------------------

  def sample(self, num_users: int, seed: int) -> Users:
    """Draws `num_users` users (vectorized over users, loop over time) from `np.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    n, t_max, num_e = num_users, self.max_len, self.cfg.num_event_types
    seg = self._seg_sampler.draw(rng, np.zeros(n, np.int64))  # [n]
    lengths = rng.integers(self.length_low[seg], self.length_high[seg] + 1)  # [n]
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
                 is_bot=self.is_bot_segment[seg], converted=converted, vocab_sizes=dict(self.vocab_sizes),
                 bot_kind=self.segment_kind[seg].astype(np.int32))

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

  def length_log_probs(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log P(L = l | s) [n, K], log P(L > t | s) [t_max, K] for t < t_max = max(lengths)); -inf = impossible."""
    lo, hi = self.length_low[None, :], self.length_high[None, :]  # [1, K]
    size = (hi - lo + 1).astype(np.float64)
    l = np.asarray(lengths, np.int64)[:, None]  # [n, 1]
    t = np.arange(max(int(l.max(initial=0)), 1))[:, None]  # [t_max, 1]
    with np.errstate(divide="ignore"):
      log_len = np.where((l >= lo) & (l <= hi), -np.log(size), -np.inf)
      log_survive = np.log(np.clip(hi - np.maximum(t, lo - 1), 0, None) / size)  # #{l in [lo, hi] : l > t} / size
    return log_len, log_survive

  def bayes(self, users: Users) -> BayesScores:
    """Exact forward filtering over the K segments.

    With alpha_t(s) = prior(s) Π_{u<t} p(X_u | s, X_{u-1}) (events are independent of L given s):
      joint_nll[:, t]      = -log p(X_t | X_<t, L > t),  p(·) = Σ_s w_t(s) p(· | s, X_{t-1}),
      factorized_nll[j][t] = -log p(F_j(t) | X_<t, L > t) (the other features summed out),
    with w_t(s) ∝ alpha_t(s) P(L > t | s): each position is scored given the history and the fact that it holds
    an event (which a causal model scoring position t knows), never given the length L itself. The final posterior
    P(s | X_0..X_{L-1}, L) ∝ alpha_L(s) P(L | s) gives p_bot, p_kind and p_conversion. A user whose length no
    segment can produce (not from this process) is scored without the length terms.
    """
    n, t_max = users.features[FEATURE_NAMES[0]].shape
    values = {name: np.maximum(users.features[name].astype(np.int64) - NUM_RESERVED, 0) for name in FEATURE_NAMES}
    x_at = lambda t: {name: v[:, t] for name, v in values.items()}  # noqa: E731
    lengths = users.lengths.astype(np.int64)
    log_len, log_survive = self.length_log_probs(lengths)  # [n, K], [max(lengths), K]
    known = np.isfinite(log_len).any(-1)  # [n]
    fact = {name: np.zeros((n, t_max)) for name in FEATURE_NAMES}
    joint_nll = np.zeros((n, t_max))
    log_alpha = np.log(self.prior)[None, :] + _log_product(self._first_probs(x_at(0)))  # [n, K]
    log_alpha -= _logsumexp(log_alpha)[:, None]
    for t in range(1, t_max):
      active = t < lengths  # [n]
      log_w = log_alpha + np.where((active & known)[:, None], log_survive[min(t, len(log_survive) - 1)], 0.0)
      log_w -= _logsumexp(log_w)[:, None]
      marginal, joint = self._step_probs(x_at(t - 1), x_at(t))
      w = np.exp(log_w)  # [n, K]
      for name in FEATURE_NAMES:
        fact[name][:, t] = np.where(active, -np.log(np.sum(w * marginal[name], axis=-1)), 0.0)
      log_step = _log_product(joint)  # [n, K]
      joint_nll[:, t] = np.where(active, -_logsumexp(log_w + log_step), 0.0)
      log_next = log_alpha + log_step
      log_alpha = np.where(active[:, None], log_next - _logsumexp(log_next)[:, None], log_alpha)
    log_post = log_alpha + np.where(known[:, None], log_len, 0.0)
    post = np.exp(log_post - _logsumexp(log_post)[:, None])  # [n, K]
    kind_of = self.segment_kind[:, None] == np.arange(len(self.bot_kind_names))[None, :]  # [K, num_kinds]
    return BayesScores(factorized_nll=fact, joint_nll=joint_nll, p_bot=post[:, self.is_bot_segment].sum(-1),
                       p_conversion=post @ self.p_conv, p_kind=post @ kind_of)


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
