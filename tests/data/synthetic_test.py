"""Tests of the synthetic latent-segment process and its exact Bayes scores (numpy only, no JAX)."""

import itertools
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from gpt_ads.data import synthetic
from gpt_ads.features import NUM_RESERVED, PAD_ID

NAMES = synthetic.FEATURE_NAMES


def tiny_config():
  """3 segments (one legacy bot), 2 event types, 3 ads in 2 categories, 2 devices, 2 gaps, lengths fixed at 3."""
  cfg = synthetic.default_config()
  cfg.process_seed = 3
  cfg.num_segments, cfg.num_bot_segments, cfg.bot_fraction, cfg.bot_kinds = 3, 1, 0.3, ""
  cfg.num_event_types, cfg.num_ads, cfg.num_ad_categories = 2, 3, 2
  cfg.num_devices, cfg.num_gap_buckets = 2, 2
  cfg.event_concentration, cfg.category_concentration, cfg.bot_category_concentration = 1.0, 1.0, 0.5
  cfg.gap_concentration, cfg.bot_gap_concentration = 1.0, 0.5
  cfg.min_len = cfg.max_len = 3
  return cfg


def tiny_kinds_config():
  """The tiny process with 2 humans and one bot of each kind but legacy; lengths 1..3, ranges by kind."""
  cfg = tiny_config()
  cfg.num_segments, cfg.num_bot_segments, cfg.bot_fraction = 6, 4, 0.6
  cfg.bot_kinds = "regular,indiscriminate,clicker,mimic"
  cfg.bot_length_ranges = "regular:1-2,indiscriminate:2-3,clicker:3-3"  # mimic: the humans' 1..3
  cfg.min_len, cfg.max_len = 1, 3
  cfg.mimic_strength = 0.3
  return cfg


@pytest.fixture(scope="module")
def tiny():
  return synthetic.Process(tiny_config())


@pytest.fixture(scope="module")
def tiny_kinds():
  return synthetic.Process(tiny_kinds_config())


@pytest.fixture(scope="module")
def default():
  return synthetic.Process(synthetic.default_config())


@pytest.fixture(scope="module")
def default_users(default):
  return default.sample(20_000, seed=6)


# ---- brute force over every sequence of the tiny processes ---------------------------------------------------


def _all_events(p):
  """Every event (e, a, d, g) of the tiny process, in np.ravel_multi_index order."""
  return list(itertools.product(*(range(p.num_values[name]) for name in NAMES)))


def _first_prob(p, s, x):
  """The generative probability of a first event, straight from the process definition."""
  e, a, d, g = x
  return p.p0_event[s, e] * p.ad_base[s, a] * p.p_device[s, d] * p.p_gap[s, e, g]


def _next_prob(p, s, prev, x):
  """The generative probability p(X_t = x | s, X_{t-1} = prev), straight from the process definition."""
  (ep, ap, dp, _), (e, a, d, g) = prev, x
  r = p.repeat[s, e]
  ad = r * (a == ap) + (1 - r) * p.ad_base[s, a]
  device = p.stickiness * (d == dp) + (1 - p.stickiness) * p.p_device[s, d]
  return p.trans[s, ep, e] * ad * device * p.p_gap[s, e, g]


def _sequence_probs(p):
  """Per-segment probabilities of the first 3 events: [K, V, V, V] with V the number of events."""
  events = _all_events(p)
  out = []
  for s in range(p.cfg.num_segments):
    first = np.array([_first_prob(p, s, x) for x in events])  # [V]
    step = np.array([[_next_prob(p, s, x, y) for y in events] for x in events])  # [V, V]
    out.append(first[:, None, None] * step[:, :, None] * step[None, :, :])
  return np.stack(out)


def _length_probs(p):
  """P(L = l | s): [K, max_len + 1], straight from L ~ Uniform{length_low[s]..length_high[s]}."""
  l = np.arange(p.max_len + 1)[None, :]
  inside = (l >= p.length_low[:, None]) & (l <= p.length_high[:, None])
  return inside / inside.sum(1, keepdims=True)


def _users_of(p, idx):
  """Users holding the sequences whose event indices are idx [N, L] (L <= 3), padded to 3 events."""
  shape = tuple(p.num_values[name] for name in NAMES)
  n, length = idx.shape
  parts = np.unravel_index(idx, shape)  # one [N, L] per feature
  features = {name: np.pad(v + NUM_RESERVED, ((0, 0), (0, 3 - length)), constant_values=PAD_ID).astype(np.int32)
              for name, v in zip(NAMES, parts)}
  return synthetic.Users(features=features, lengths=np.full(n, length, np.int32), segment=np.zeros(n, np.int32),
                         is_bot=np.zeros(n, bool), converted=np.zeros(n, bool), vocab_sizes=p.vocab_sizes)


@pytest.mark.parametrize("name", ["tiny", "tiny_kinds"])
def test_tiny_process_sequence_probabilities_sum_to_one(name, request):
  p = request.getfixturevalue(name)
  per_seg = _sequence_probs(p)
  # float64 sums of O(10,000) probabilities to 1: atol 1e-12 is ~5,000 ulps of 1.
  np.testing.assert_allclose(per_seg.sum(axis=(1, 2, 3)), 1.0, atol=1e-12)
  np.testing.assert_allclose(p.prior.sum(), 1.0, atol=1e-12)
  np.testing.assert_allclose(_length_probs(p).sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny", "tiny_kinds"])
def test_bayes_matches_brute_force(name, request):
  """Every sequence of every length: NLLs, p_bot, p_kind and p_conversion against sums over the joint."""
  p = request.getfixturevalue(name)
  per_seg = _sequence_probs(p)  # [K, V, V, V]: P(X_0, X_1, X_2 | s); events are drawn independently of L
  prefix = [per_seg.sum((2, 3)), per_seg.sum(3), per_seg]  # [K, V^(t+1)]: P(X_0..X_t | s)
  p_len = _length_probs(p)  # [K, 4]
  v = per_seg.shape[1]
  shape = tuple(p.num_values[name] for name in NAMES)
  kind_of = p.segment_kind[:, None] == np.arange(len(p.bot_kind_names))[None, :]  # [K, kinds]
  for length in range(1, 4):
    if not p_len[:, length].any():
      continue
    idx = np.array(list(itertools.product(range(v), repeat=length)))  # [N, L]: every sequence of this length
    cols = tuple(idx.T)
    scores = p.bayes(_users_of(p, idx))
    for t in range(3):
      if t == 0 or t >= length:  # nothing predicted at t = 0 and at padding
        np.testing.assert_array_equal(scores.joint_nll[:, t], 0.0)
        for f in NAMES:
          np.testing.assert_array_equal(scores.factorized_nll[f][:, t], 0.0)
        continue
      # p(X_t | X_<t, L > t): the joint of the first t + 1 events over the sequences holding an event at t.
      held = p.prior * p_len[:, t + 1:].sum(1)  # [K]: P(s, L > t)
      q = np.einsum("k,k...->...", held, prefix[t])  # [V^(t+1)]
      pred = q / q.sum(-1, keepdims=True)
      # float64 on both sides, values O(1..20): atol 1e-9 is ~1e6 ulps, far above any host's rounding.
      np.testing.assert_allclose(scores.joint_nll[:, t], -np.log(pred[cols[:t + 1]]), rtol=0, atol=1e-9)
      full = pred.reshape((v,) * t + shape)  # [V^t, E, A, D, G]
      x_t = np.unravel_index(idx[:, t], shape)
      for f, feature in enumerate(NAMES):
        marginal = full.sum(axis=tuple(t + a for a in range(len(NAMES)) if a != f))  # [V^t, size_f]
        np.testing.assert_allclose(scores.factorized_nll[feature][:, t], -np.log(marginal[cols[:t] + (x_t[f],)]),
                                   rtol=0, atol=1e-9)
    # The posterior given the whole sequence and its length.
    joint = (p.prior * p_len[:, length])[:, None] * prefix[length - 1][(slice(None),) + cols]  # [K, N]
    post = joint / joint.sum(0)
    np.testing.assert_allclose(scores.p_bot, post[p.is_bot_segment].sum(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores.p_kind, post.T @ kind_of, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores.p_conversion, p.p_conv @ post, rtol=0, atol=1e-9)


def test_tiny_kinds_lengths_are_informative(tiny_kinds):
  """The brute force above is not vacuous: lengths move the posterior and the predictive losses, while the loss
  at a position never depends on the events or length after it."""
  p = tiny_kinds
  np.testing.assert_array_equal(p.length_low, [1, 1, 1, 2, 3, 1])
  np.testing.assert_array_equal(p.length_high, [3, 3, 2, 3, 3, 3])
  v = len(_all_events(p))
  idx = np.array(list(itertools.product(range(v), repeat=3)))  # [N, 3]
  short, long = p.bayes(_users_of(p, idx[:, :2])), p.bayes(_users_of(p, idx))
  clicker = p.bot_kind_names.index("clicker")
  assert np.all(short.p_kind[:, clicker] == 0) and np.all(long.p_kind[:, clicker] > 0)  # clickers have 3 events
  np.testing.assert_array_equal(short.joint_nll[:, 1], long.joint_nll[:, 1])  # both: given X_0 and L > 1
  # Position 2 is scored knowing L > 2 (no regular bot): not the history-only predictive p(X_2 | X_0, X_1).
  per_seg = _sequence_probs(p)
  q = np.einsum("k,kijl->ijl", p.prior, per_seg)
  history_only = -np.log(q[tuple(idx.T)] / q.sum(-1)[tuple(idx[:, :2].T)])
  assert np.abs(long.joint_nll[:, 2] - history_only).max() > 1e-2


def _chi_square_pvalue(observed, expected):
  """Chi-square goodness of fit, pooling the cells expected below 5 into one."""
  small = expected < 5
  obs, exp = observed[~small], expected[~small]
  if small.any():
    obs, exp = np.append(obs, observed[small].sum()), np.append(exp, expected[small].sum())
  return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def test_sampler_matches_process_distribution(tiny):
  p = tiny
  p3 = np.einsum("k,kijl->ijl", p.prior, _sequence_probs(p))  # [V, V, V]
  v = p3.shape[0]
  users = p.sample(200_000, seed=11)
  shape = tuple(p.num_values[name] for name in NAMES)
  idx = np.ravel_multi_index(tuple(users.features[name] - NUM_RESERVED for name in NAMES), shape)  # [n, 3]
  n = len(users)
  first_two = np.bincount(idx[:, 0] * v + idx[:, 1], minlength=v * v)
  last_two = np.bincount(idx[:, 1] * v + idx[:, 2], minlength=v * v)
  assert _chi_square_pvalue(first_two, n * p3.sum(-1).ravel()) > 1e-3
  assert _chi_square_pvalue(last_two, n * p3.sum(0).ravel()) > 1e-3
  seg_counts = np.bincount(users.segment, minlength=p.cfg.num_segments)
  assert _chi_square_pvalue(seg_counts, n * p.prior) > 1e-3
  for s in range(p.cfg.num_segments):
    rate = users.converted[users.segment == s].mean()
    assert abs(rate - p.p_conv[s]) < 5 * np.sqrt(p.p_conv[s] * (1 - p.p_conv[s]) / seg_counts[s]) + 1e-9


def test_sampler_matches_kinds_process(tiny_kinds):
  """Segments, bot kinds, (segment, length) pairs and the first two events of the tiny process with bot kinds."""
  p = tiny_kinds
  users = p.sample(200_000, seed=12)
  n, k = len(users), p.cfg.num_segments
  np.testing.assert_array_equal(users.bot_kind, p.segment_kind[users.segment])
  np.testing.assert_array_equal(users.is_bot, users.bot_kind >= 0)
  assert users.bot_kind.dtype == np.int32
  for j in range(len(p.bot_kind_names)):  # each kind's frequency within 4 standard errors of its prior share
    share = p.prior[p.segment_kind == j].sum()
    assert abs((users.bot_kind == j).mean() - share) < 4 * np.sqrt(share * (1 - share) / n)
  p_len = _length_probs(p)  # [K, 4]
  pairs = np.bincount(users.segment * 4 + users.lengths, minlength=k * 4)
  expected = n * (p.prior[:, None] * p_len).ravel()
  assert np.all(pairs[expected == 0] == 0)  # no length outside its segment's range
  assert _chi_square_pvalue(pairs[expected > 0], expected[expected > 0]) > 1e-3
  # The first two events of the users with at least two: Σ_s P(s, L >= 2) P(X_0, X_1 | s).
  shape = tuple(p.num_values[name] for name in NAMES)
  two = users.lengths >= 2
  idx = np.ravel_multi_index(tuple(users.features[name][two, :2] - NUM_RESERVED for name in NAMES), shape)
  v = int(np.prod(shape))
  q = np.einsum("k,kij->ij", p.prior * p_len[:, 2:].sum(1), _sequence_probs(p).sum(-1))  # [V, V]
  assert _chi_square_pvalue(np.bincount(idx[:, 0] * v + idx[:, 1], minlength=v * v), q.ravel() * two.sum()) > 1e-3


def test_ad_popularity_and_categories(default):
  p = default
  assert np.all(np.bincount(p.ad_category, minlength=p.cfg.num_ad_categories) > 0)
  q_sum = np.bincount(p.ad_category, weights=p.ad_q)
  np.testing.assert_allclose(q_sum, 1.0, atol=1e-12)
  np.testing.assert_allclose(p.ad_base.sum(-1), 1.0, atol=1e-12)
  # Within a category, q is proportional to the Zipf weight 1 / rank^s (a permutation of the ranks).
  np.testing.assert_allclose(np.sort((1 / p.ad_weight) ** (1 / p.cfg.zipf_exponent)), np.arange(1, p.cfg.num_ads + 1),
                             rtol=1e-9)
  c = p.ad_category[0]
  members = p.ad_category == c
  np.testing.assert_allclose(p.ad_q[members] / p.ad_weight[members], p.ad_q[0] / p.ad_weight[0])
  # Ids are sorted by decreasing marginal frequency under the process.
  assert np.all(np.diff(p.prior @ p.ad_base) <= 0)
  # b_s is the cat_pref x Zipf product except for indiscriminate bots; cat_pref is always b_s's category marginal.
  np.testing.assert_allclose(np.stack([np.bincount(p.ad_category, weights=b) for b in p.ad_base]), p.cat_pref,
                             atol=1e-12)
  product = p.segment_kind != p.bot_kind_names.index("indiscriminate")
  np.testing.assert_allclose(p.ad_base[product], (p.cat_pref[:, p.ad_category] * p.ad_q)[product], rtol=1e-12)


# ---- sampled data ----------------------------------------------------------------------------------------------


def test_sampled_users_are_well_formed(default):
  p, cfg = default, synthetic.default_config()
  users = p.sample(20_000, seed=5)
  assert len(users) == 20_000
  assert np.all((users.lengths >= cfg.min_len) & (users.lengths <= cfg.max_len))
  valid = np.arange(cfg.max_len)[None, :] < users.lengths[:, None]
  for name in NAMES:
    ids = users.features[name]
    assert ids.shape == (20_000, cfg.max_len) and ids.dtype == np.int32
    assert np.all(ids[~valid] == PAD_ID)
    assert np.all((ids[valid] >= NUM_RESERVED) & (ids[valid] < p.vocab_sizes[name]))
  assert p.vocab_sizes == {"event_type": 8, "ad_id": 10_002, "device": 6, "time_gap": 10}
  first_bot = cfg.num_segments - cfg.num_bot_segments
  np.testing.assert_array_equal(users.is_bot, users.segment >= first_bot)
  np.testing.assert_array_equal(users.bot_kind, np.maximum(users.segment - first_bot, -1))
  assert abs(users.is_bot.mean() - cfg.bot_fraction) < 0.01
  assert not users.converted[users.is_bot].any()
  # The most popular ad has the smallest id.
  counts = synthetic.value_counts(users)["ad_id"]
  assert counts.shape == (10_002,) and counts[:NUM_RESERVED].sum() == 0
  assert np.argmax(counts) == NUM_RESERVED


def test_sampling_is_deterministic_per_seed(default):
  a, b, c = default.sample(500, seed=1), default.sample(500, seed=1), default.sample(500, seed=2)
  for name in NAMES:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  np.testing.assert_array_equal(a.lengths, b.lengths)
  assert not np.array_equal(a.features["ad_id"], c.features["ad_id"])
  again = synthetic.Process(synthetic.default_config())
  np.testing.assert_array_equal(again.sample(500, seed=1).features["ad_id"], a.features["ad_id"])


def test_value_counts_and_unigram(tiny):
  train, test = tiny.sample(1000, seed=1), tiny.sample(50, seed=2)
  counts = synthetic.value_counts(train)
  nll = synthetic.unigram_nll(train, test, smoothing=0.5)
  mask = synthetic.predicted_mask(test)
  assert mask[:, 0].sum() == 0 and mask.sum() == 50 * 2
  for name in NAMES:
    c = counts[name]
    assert c.shape == (tiny.vocab_sizes[name],) and c.sum() == train.lengths.sum() and c[0] == 0
    p = (c[NUM_RESERVED:] + 0.5) / (c.sum() + 0.5 * (len(c) - NUM_RESERVED))
    expected = -np.log(p[test.features[name] - NUM_RESERVED])
    np.testing.assert_allclose(nll[name], np.where(mask, expected, 0.0))


# ---- bot kinds at the default config ---------------------------------------------------------------------------


def _segment_of(p, kind):
  return int(np.flatnonzero(p.segment_kind == p.bot_kind_names.index(kind))[0])


def test_default_bot_kinds(default):
  p = default
  assert p.bot_kind_names == ("regular", "indiscriminate", "clicker", "mimic")
  np.testing.assert_array_equal(p.segment_kind, [-1] * 6 + [0, 1, 2, 3])
  np.testing.assert_array_equal(p.is_bot_segment, p.segment_kind >= 0)
  np.testing.assert_allclose(p.prior[p.is_bot_segment].sum(), 0.1, atol=1e-12)
  assert np.all(p.p_conv[p.is_bot_segment] == 0)
  # Short bursts (regular), long sequences (indiscriminate), in between (clicker), the humans' range (mimic).
  np.testing.assert_array_equal(p.length_low, [8] * 6 + [8, 24, 8, 8])
  np.testing.assert_array_equal(p.length_high, [64] * 6 + [16, 64, 32, 64])


def _per_segment(p, users, stat):
  """stat(values {name: [m, t] 0-based}, valid [m, t]) of each segment's users: [K]."""
  valid = np.arange(users.max_len)[None, :] < users.lengths[:, None]
  values = {name: users.features[name].astype(np.int64) - NUM_RESERVED for name in NAMES}
  return np.array([stat({k: v[users.segment == s] for k, v in values.items()}, valid[users.segment == s])
                   for s in range(p.cfg.num_segments)])


def _gap_entropy(values, valid):
  """H(time_gap | event_type) of the pooled events (plug-in; thousands of events per segment)."""
  e, g = values["event_type"][valid], values["time_gap"][valid]
  counts = np.bincount(e * 100 + g, minlength=100 * 100).reshape(100, 100).astype(np.float64)
  p_e = counts.sum(1) / counts.sum()
  p_g = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  return -(p_e[:, None] * p_g * np.log(np.where(p_g > 0, p_g, 1.0))).sum()


def _distinct_ads_per_event(values, valid):
  """Mean over users of (distinct ads) / (events)."""
  a = np.sort(np.where(valid, values["ad_id"], -1), axis=1)
  new = np.concatenate([np.ones((len(a), 1), bool), a[:, 1:] != a[:, :-1]], axis=1) & (a >= 0)
  return (new.sum(1) / valid.sum(1)).mean()


def test_bot_kinds_behave_as_named(default, default_users):
  """On sampled users, each kind differs from EVERY human segment the way its name says."""
  p, humans = default, np.flatnonzero(~default.is_bot_segment)
  gap = _per_segment(p, default_users, _gap_entropy)
  distinct = _per_segment(p, default_users, _distinct_ads_per_event)
  clicks = _per_segment(p, default_users, lambda x, valid: (x["event_type"][valid] == synthetic.CLICK_TYPE).mean())
  print(f"\nH(gap | type) {gap.round(3)}\ndistinct ads / event {distinct.round(3)}\nclick share {clicks.round(3)}")
  assert gap[_segment_of(p, "regular")] < 0.5 * gap[humans].min()
  assert gap[_segment_of(p, "clicker")] < gap[humans].min()  # moderately regular
  assert distinct[_segment_of(p, "indiscriminate")] > 0.9 > distinct[humans].max()
  assert clicks[_segment_of(p, "clicker")] > 0.75 > clicks[humans].max()
  # The same on the parameters: near-deterministic gaps, mass on all ads, click-heavy rows.
  row_entropy = -(p.p_gap * np.log(p.p_gap)).sum(-1).mean(-1)  # [K]
  assert row_entropy[_segment_of(p, "regular")] < 0.5 * row_entropy[humans].min()
  ind = _segment_of(p, "indiscriminate")
  assert p.ad_base[ind].min() >= p.cfg.indiscriminate_uniform / p.cfg.num_ads
  assert p.repeat[ind].max() <= p.cfg.repeat_low / 2
  assert p.trans[_segment_of(p, "clicker"), :, synthetic.CLICK_TYPE].min() >= p.cfg.click_mass


def test_mimic_is_close_to_its_human(default):
  p = default
  s, w = _segment_of(p, "mimic"), p.cfg.mimic_strength
  humans = np.flatnonzero(~p.is_bot_segment)
  h = p.mimic_of[s]
  assert h == humans[np.argmax(p.prior[humans])]  # the first mimic copies the most populous human
  np.testing.assert_array_equal(np.flatnonzero(p.mimic_of >= 0), [s])
  for name in ("p0_event", "trans", "cat_pref", "ad_base", "repeat", "p_device", "p_gap"):
    diff = np.abs(getattr(p, name)[s] - getattr(p, name)[h])
    assert 0 < diff.max() <= w + 1e-12, name
    if name != "repeat":  # a distribution per row: total variation within w
      assert 0.5 * diff.sum(-1).max() <= w + 1e-12, name
  # The perturbation stays where the human's mass is: categories the human (almost) never visits stay so.
  rare = p.cat_pref[h] < 1e-6
  assert np.all(p.cat_pref[s][rare] < 1e-3)


def test_bot_kinds_range_from_blatant_to_subtle(default):
  """Exact posteriors on fresh users: p_kind adds up to p_bot and finds the blatant kinds; mimics are hard."""
  users = default.sample(5000, seed=7)
  scores = default.bayes(users)
  np.testing.assert_allclose(scores.p_kind.sum(-1), scores.p_bot, atol=1e-12)
  assert scores.p_kind.shape == (5000, 4)
  mean_p_kind = np.stack([scores.p_kind[users.bot_kind == j].mean(0) for j in range(4)])  # [true kind, kind]
  print(f"\nmean p_kind by true kind:\n{mean_p_kind.round(3)}")
  for name in ("regular", "indiscriminate", "clicker"):
    j = default.bot_kind_names.index(name)
    assert mean_p_kind[j, j] > 0.97
  mimic = default.bot_kind_names.index("mimic")
  assert 0.1 < mean_p_kind[mimic, mimic] < 0.9  # detectable, but far from certain
  assert scores.p_bot[~users.is_bot].mean() < 0.05  # mostly the mimicked segment's users


@pytest.mark.parametrize("overrides, match", [
    ({"num_bot_segments": 3}, "one kind per bot segment"),
    ({"bot_kinds": "regular,indiscriminate,clicker,robot"}, "unknown kinds"),
    ({"bot_length_ranges": "regular:16-8"}, "bot_length_ranges"),
    ({"bot_length_ranges": "regular=8-16"}, "bot_length_ranges"),
    ({"bot_length_ranges": "robot:8-16"}, "bot_length_ranges"),
    ({"num_event_types": 1}, "clicker"),
    ({"mimic_strength": 1.5}, "mimic_strength"),
    ({"mimic_concentration": 0.0}, "mimic_concentration"),
])
def test_bad_bot_kind_configs_are_rejected(overrides, match):
  cfg = synthetic.default_config()
  cfg.update(overrides)
  with pytest.raises(ValueError, match=match):
    synthetic.Process(cfg)


def test_bot_lengths_are_clipped_into_the_human_range():
  cfg = synthetic.default_config()
  cfg.min_len, cfg.max_len = 4, 16  # tests/conftest.py's TINY
  p = synthetic.Process(cfg)
  np.testing.assert_array_equal(p.length_low, [4] * 6 + [8, 16, 8, 4])
  np.testing.assert_array_equal(p.length_high, [16] * 6 + [16, 16, 16, 16])
  users = p.sample(2000, seed=1)
  assert np.all((users.lengths >= p.length_low[users.segment]) & (users.lengths <= p.length_high[users.segment]))


# The original process (before bot kinds), pinned: its default config drawn by the code of that time.
LEGACY_PRIOR = [0.1504284264547416, 0.18839708270917824, 0.10962069162818326, 0.24612390160548736,
                0.1005841764237746, 0.10484572117863505, 0.03334653540587436, 0.06665346459412566]
LEGACY_LENGTHS = [22, 25, 57, 32]
LEGACY_ADS = [[11, 86, 487, 2, 2, 2], [83, 83, 24, 265, 265, 265], [16, 1408, 15, 1433, 15, 15],
              [66, 7, 7, 1070, 1070, 1070]]
LEGACY_JOINT_NLL = [[8.009764991748755, 11.098282666250563, 4.814609643943855],
                    [1.071936832607577, 9.570432325097212, 9.639369222115581],
                    [11.301569713561282, 5.104255198713862, 12.117470618167953],
                    [3.0830110676644487, 2.8186669328415763, 8.129988964059873]]
ADDED_KEYS = ("bot_kinds", "bot_length_ranges", "mimic_strength", "mimic_concentration", "click_mass",
              "indiscriminate_uniform")


def test_legacy_bots_reproduce_the_original_process():
  """bot_kinds="" with the old 8 / 2 segments, or a config stored before the bot-kind keys existed (what
  gpt_ads.downstream.tasks rebuilds from a data set), gives the original process and samples."""
  cfg = synthetic.default_config()
  cfg.num_segments, cfg.num_bot_segments, cfg.bot_kinds = 8, 2, ""
  stored = ml_collections.ConfigDict({k: v for k, v in cfg.to_dict().items() if k not in ADDED_KEYS})
  for c in (cfg, stored):
    p = synthetic.Process(c)
    assert p.bot_kind_names == ("legacy",)
    np.testing.assert_array_equal(p.segment_kind, [-1] * 6 + [0, 0])
    np.testing.assert_allclose(p.prior, LEGACY_PRIOR, rtol=1e-12)
    users = p.sample(4, seed=1)
    np.testing.assert_array_equal(users.lengths, LEGACY_LENGTHS)
    np.testing.assert_array_equal(users.features["ad_id"][:, :6], LEGACY_ADS)
    np.testing.assert_allclose(p.bayes(users).joint_nll[:, 1:4], LEGACY_JOINT_NLL, rtol=0, atol=1e-9)


# ---- Bayes bounds at the default config ------------------------------------------------------------------------


def test_default_reference_losses(default):
  train, test = default.sample(4000, seed=1), default.sample(1000, seed=2)
  ref = synthetic.reference_losses(default, train, test)
  uni, fact, joint = ref["unigram_loss"], ref["bayes_factorized_loss"], ref["bayes_joint_loss"]
  ratio = (uni - fact) / uni
  print(f"\nunigram={uni:.4f} bayes_factorized={fact:.4f} bayes_joint={joint:.4f} "
        f"(unigram - factorized) / unigram={ratio:.4f}")
  for name in NAMES:
    print(f"  {name:>10}: unigram={ref['unigram_loss_per_feature'][name]:.4f} "
          f"bayes_factorized={ref['bayes_factorized_loss_per_feature'][name]:.4f}")
  assert joint <= fact < uni
  assert ratio >= 0.25
  for name in NAMES:
    assert ref["bayes_factorized_loss_per_feature"][name] < ref["unigram_loss_per_feature"][name]


def test_true_process_beats_a_wrong_one(default):
  users = default.sample(2000, seed=3)
  mask = synthetic.predicted_mask(users)
  wrong = synthetic.default_config()
  wrong.process_seed = 1
  true_scores, wrong_scores = default.bayes(users), synthetic.Process(wrong).bayes(users)
  for name in NAMES:
    assert true_scores.factorized_nll[name][mask].mean() < wrong_scores.factorized_nll[name][mask].mean()
  assert true_scores.joint_nll[mask].mean() < wrong_scores.joint_nll[mask].mean()
  # The blatant bot kinds are identifiable from their behaviour (mimics are not, by design: see
  # test_bot_kinds_range_from_blatant_to_subtle); the posterior is calibrated-ish.
  blatant = users.is_bot & (users.bot_kind != default.bot_kind_names.index("mimic"))
  assert true_scores.p_bot[blatant].mean() > 0.9 and true_scores.p_bot[~users.is_bot].mean() < 0.1
  assert abs(true_scores.p_bot.mean() - users.is_bot.mean()) < 0.03
  assert abs(true_scores.p_conversion.mean() - users.converted.mean()) < 0.05


def test_timing(default):
  start = time.perf_counter()
  default.sample(20_000, seed=4)
  sample_s = time.perf_counter() - start
  users = default.sample(5000, seed=5)
  start = time.perf_counter()
  default.bayes(users)
  bayes_s = time.perf_counter() - start
  print(f"\nsample(20_000)={sample_s:.2f}s bayes(5_000)={bayes_s:.2f}s")
  assert sample_s < 10 and bayes_s < 10
