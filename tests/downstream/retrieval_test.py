"""Next-item ranking metrics against a brute-force ranking from the model's full log-probabilities."""

import numpy as np
import pytest

from gpt_ads import api
from gpt_ads.downstream import retrieval


def test_metrics_formula():
  out = retrieval.metrics(np.array([0, 1, 9, 10, 300]), ks=(10, 200))
  assert out["users"] == 5
  assert out["hr@10"] == pytest.approx(3 / 5) and out["hr@200"] == pytest.approx(4 / 5)
  assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)


@pytest.mark.parametrize("feature", ["ad_id", "event_type"])  # a sampled and an exact-softmax feature
def test_evaluate_matches_brute_force(trained_run, feature):
  params, schema, config = api.load(trained_run)
  rng = np.random.default_rng(1)
  records = []
  for n in (3, 7, 12, 5, 9):  # a 5-user "split": inputs are each record without its last event
    rec = {f.name: rng.integers(2, f.vocab_size, n).astype(np.int32) for f in schema}
    rec[feature][-1] = rec[feature][0] if n == 7 else rec[feature][-1]  # one target repeats a history value
    records.append(rec)

  want_ranks = []
  for i, rec in enumerate(records):
    batch = api.make_batch(schema, {f.name: [rec[f.name][:-1]] for f in schema}, length=config.model.max_len)
    logp, _ = api.apply(params, batch, schema=schema, config=config)
    scores = np.asarray(logp[feature][0, len(rec[feature]) - 2], np.float64)  # after the last input event
    seen = set(rec[feature][:-1].tolist())
    if i == 0:  # the model's own favourite unseen value: rank 0, so the top-k checks are not vacuous
      rec[feature][-1] = max((v for v in range(2, schema[feature].vocab_size) if v not in seen), key=scores.__getitem__)
    target = rec[feature][-1]
    cands = [v for v in range(2, schema[feature].vocab_size) if v not in seen - {target}]
    want_ranks.append(sum(scores[v] >= scores[target] for v in cands) - 1)
  got = retrieval.evaluate(params, records, feature=feature, schema=schema, config=config, ks=(1, 5, 20),
                           batch_size=2)
  want = retrieval.metrics(np.array(want_ranks), ks=(1, 5, 20))
  assert got == pytest.approx(want, abs=1e-6)
  assert want_ranks[0] == 0 and len(set(want_ranks)) >= 2
