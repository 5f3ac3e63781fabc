"""Tests of the synthetic latent-segment process and its exact Bayes scores (numpy only, no JAX)."""

import itertools
import time

import numpy as np
import pytest
from scipy import stats

from gpt_ads.data import synthetic
from gpt_ads.features import NUM_RESERVED, PAD_ID

NAMES = synthetic.FEATURE_NAMES


def tiny_config():
  """3 segments (one bot), 2 event types, 3 ads in 2 categories, 2 devices, 2 gaps, lengths fixed at 3."""
  cfg = synthetic.default_config()
  cfg.process_seed = 3
  cfg.num_segments, cfg.num_bot_segments, cfg.bot_fraction = 3, 1, 0.3
  cfg.num_event_types, cfg.num_ads, cfg.num_ad_categories = 2, 3, 2
  cfg.num_devices, cfg.num_gap_buckets = 2, 2
  cfg.event_concentration, cfg.category_concentration, cfg.bot_category_concentration = 1.0, 1.0, 0.5
  cfg.gap_concentration, cfg.bot_gap_concentration = 1.0, 0.5
  cfg.min_len = cfg.max_len = 3
  return cfg


@pytest.fixture(scope="module")
def tiny():
  return synthetic.Process(tiny_config())


@pytest.fixture(scope="module")
def default():
  return synthetic.Process(synthetic.default_config())


# ---- brute force over every sequence of the tiny process -----------------------------------------------------


def _all_events(p):
  """Every event (e, a, d, g) of the tiny process, in np.ravel_multi_index order."""
  return list(itertools.product(*(range(p.num_values[name]) for name in NAMES)))


def _ad_prob(p, s, a):
  return p.cat_pref[s, p.ad_category[a]] * p.ad_q[a]


def _first_prob(p, s, x):
  """The generative probability of a first event, straight from the process definition."""
  e, a, d, g = x
  return p.p0_event[s, e] * _ad_prob(p, s, a) * p.p_device[s, d] * p.p_gap[s, e, g]


def _next_prob(p, s, prev, x):
  """The generative probability p(X_t = x | s, X_{t-1} = prev), straight from the process definition."""
  (ep, ap, dp, _), (e, a, d, g) = prev, x
  r = p.repeat[s, e]
  ad = r * (a == ap) + (1 - r) * _ad_prob(p, s, a)
  device = p.stickiness * (d == dp) + (1 - p.stickiness) * p.p_device[s, d]
  return p.trans[s, ep, e] * ad * device * p.p_gap[s, e, g]


def _sequence_probs(p):
  """Per-segment probabilities of every length-3 sequence: [K, V, V, V] with V the number of events."""
  events = _all_events(p)
  out = []
  for s in range(p.cfg.num_segments):
    first = np.array([_first_prob(p, s, x) for x in events])  # [V]
    step = np.array([[_next_prob(p, s, x, y) for y in events] for x in events])  # [V, V]
    out.append(first[:, None, None] * step[:, :, None] * step[None, :, :])
  return np.stack(out)


def _users_of(p, idx):
  """Users holding the sequences whose event indices are idx [N, 3]."""
  shape = tuple(p.num_values[name] for name in NAMES)
  parts = np.unravel_index(idx, shape)  # one [N, 3] per feature
  features = {name: (v + NUM_RESERVED).astype(np.int32) for name, v in zip(NAMES, parts)}
  n = len(idx)
  return synthetic.Users(features=features, lengths=np.full(n, 3, np.int32), segment=np.zeros(n, np.int32),
                         is_bot=np.zeros(n, bool), converted=np.zeros(n, bool), vocab_sizes=p.vocab_sizes)


def test_tiny_process_sequence_probabilities_sum_to_one(tiny):
  per_seg = _sequence_probs(tiny)
  # float64 sums of O(100) probabilities to 1: atol 1e-12 is ~5,000 ulps of 1.
  np.testing.assert_allclose(per_seg.sum(axis=(1, 2, 3)), 1.0, atol=1e-12)
  np.testing.assert_allclose(tiny.prior.sum(), 1.0, atol=1e-12)


def test_bayes_matches_brute_force(tiny):
  p = tiny
  per_seg = _sequence_probs(p)  # [K, V, V, V]
  p3 = np.einsum("k,kijl->ijl", p.prior, per_seg)  # [V, V, V]
  p2, p1 = p3.sum(-1), p3.sum((-1, -2))
  v = p1.shape[0]
  shape = tuple(p.num_values[name] for name in NAMES)
  idx = np.array(list(itertools.product(range(v), repeat=3)))  # [N, 3]: every sequence
  i, j, l = idx.T
  scores = p.bayes(_users_of(p, idx))

  np.testing.assert_array_equal(scores.joint_nll[:, 0], 0.0)
  # float64 on both sides, values O(1..20): atol 1e-9 is ~1e6 ulps, far above any host's rounding.
  np.testing.assert_allclose(scores.joint_nll[:, 1], -np.log(p2[i, j] / p1[i]), rtol=0, atol=1e-9)
  np.testing.assert_allclose(scores.joint_nll[:, 2], -np.log(p3[i, j, l] / p2[i, j]), rtol=0, atol=1e-9)

  # Per-feature predictive marginals: sum the next-event distribution over the other features.
  next1 = (p2 / p1[:, None]).reshape((v,) + shape)          # [V, E, A, D, G]
  next2 = (p3 / p2[:, :, None]).reshape((v, v) + shape)     # [V, V, E, A, D, G]
  x1 = np.unravel_index(j, shape)
  x2 = np.unravel_index(l, shape)
  for f, name in enumerate(NAMES):
    others = tuple(a for a in range(len(NAMES)) if a != f)
    m1 = next1.sum(axis=tuple(1 + a for a in others))       # [V, size_f]
    m2 = next2.sum(axis=tuple(2 + a for a in others))       # [V, V, size_f]
    np.testing.assert_array_equal(scores.factorized_nll[name][:, 0], 0.0)
    np.testing.assert_allclose(scores.factorized_nll[name][:, 1], -np.log(m1[i, x1[f]]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores.factorized_nll[name][:, 2], -np.log(m2[i, j, x2[f]]), rtol=0, atol=1e-9)

  post = p.prior[:, None] * per_seg[:, i, j, l] / p3[i, j, l]  # [K, N]
  np.testing.assert_allclose(scores.p_bot, post[p.is_bot_segment].sum(0), rtol=0, atol=1e-9)
  np.testing.assert_allclose(scores.p_conversion, p.p_conv @ post, rtol=0, atol=1e-9)


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
  np.testing.assert_array_equal(users.is_bot, users.segment >= cfg.num_segments - cfg.num_bot_segments)
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
  # Bots are identifiable from their behaviour; the posterior is calibrated-ish.
  assert true_scores.p_bot[users.is_bot].mean() > 0.9 and true_scores.p_bot[~users.is_bot].mean() < 0.1
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
