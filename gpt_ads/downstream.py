"""`gpt-ads-downstream --workdir=DIR [--data_dir=DATA] --label=COLUMN --task=probe|finetune|anomaly`.

Uses a pre-trained run (gpt_ads.api) for a per-user binary label of a prepared data set (its schema.json
`labels`; generated data carries `is_bot` and `converted`) and writes `DIR/downstream/<label>_<task>.json`:

  probe     logistic regression (L2 chosen on the validation users) on frozen user vectors of the training
            users, evaluated on the test users;
  finetune  a logistic head on the user vector, trained together with the encoder (AdamW, cross-entropy);
  anomaly   no label is used for fitting: per-user scores from the pre-trained model alone — how far a user's
            mean exact NLL per predicted event is from the typical user's, in either direction (`nll`: |z| on
            validation users; bots are often far more predictable than people), the same per feature
            (`surprise/<feature>`), the user vector's negative log density under a Gaussian fitted to training
            users (`density`), and `combined`, the mean of the standardized nll and density scores. The
            headline metrics are `combined`'s.

Every task writes `auc` and `recall_at_fpr` ({"0.01": ..., "0.05": ...}: the share of positives scored above the
threshold that flags that fraction of negatives — the study's invalid-traffic recall at a fixed FPR). On
generated data the file also holds `bayes`: the same metrics of the Bayes-optimal score (posterior P(bot |
sequence) for `is_bot`, E[conversion | sequence] for `converted`), the best any method can do, and
`bayes_fraction` = (auc − 0.5) / (bayes auc − 0.5).
"""

import functools
import os
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
TASKS = ("probe", "finetune", "anomaly")
FPRS = (0.01, 0.05)


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A gpt-ads-train run directory (its latest checkpoint is used).")
  flags.DEFINE_string("data_dir", None, "Prepared data set with the label (default: the one the run trained on).")
  flags.DEFINE_string("label", None, "Binary label column of the data set (e.g. is_bot, converted).")
  flags.DEFINE_enum("task", None, list(TASKS), "probe | finetune | anomaly.")
  flags.DEFINE_enum("pooling", "last", ["last", "mean"], "User vector: hidden state after the last event, or mean.")
  flags.DEFINE_integer("max_users", 20_000, "At most this many users per split (the first ones).")
  flags.DEFINE_integer("finetune_steps", 300, "finetune: optimizer steps.")
  flags.DEFINE_float("finetune_lr", 3e-4, "finetune: AdamW learning rate (encoder and head).")
  flags.DEFINE_integer("batch_size", 256, "Users per forward pass (finetune: per step, capped at 64).")
  flags.mark_flags_as_required(["workdir", "label", "task"])


# ---- metrics ---------------------------------------------------------------------------------------------------
def auc(scores, labels) -> float:
  """Area under the ROC curve (Mann-Whitney, ties averaged); positives = labels > 0.5."""
  from scipy.stats import rankdata
  scores, pos = np.asarray(scores, float), np.asarray(labels) > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if not n_pos or not n_neg:
    return float("nan")
  ranks = rankdata(scores)
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_fpr(scores, labels, fpr: float) -> float:
  """True-positive rate at false-positive rate `fpr`: the ROC curve read at `fpr`. Users tied at the threshold
  are flagged with the probability that makes the FPR exactly `fpr` (a randomized threshold), so scores with
  many ties (e.g. a posterior that settles on one segment) are not penalized for them."""
  scores, pos = np.asarray(scores, float), np.asarray(labels) > 0.5
  if not pos.any() or pos.all():
    return float("nan")
  neg = np.sort(scores[~pos])[::-1]
  allowed = fpr * len(neg)  # false positives the threshold may let through
  thr = neg[min(int(np.floor(allowed)), len(neg) - 1)]
  above, tied = np.sum(neg > thr), np.sum(neg == thr)
  q = float(np.clip((allowed - above) / tied, 0.0, 1.0))
  return float(np.mean(scores[pos] > thr) + q * np.mean(scores[pos] == thr))


def metrics(scores, labels) -> dict:
  return {"auc": auc(scores, labels),
          "recall_at_fpr": {str(f): recall_at_fpr(scores, labels, f) for f in FPRS}}


# ---- data ------------------------------------------------------------------------------------------------------
def read_split(prepared, split: str, label: str, *, names, max_len: int, limit: int):
  """-> (rows {feature / segment_ids / positions: int32 [n, max_len]}, labels float [n], records) of the first
  `limit` users of `split` (each user's last max_len events, one user per row)."""
  from gpt_ads.data import pipeline
  source = prepared.source(split)
  n = min(len(source), limit)
  records = []
  for start in range(0, n, pipeline.READ_BLOCK):
    records += pipeline.read(source, range(start, min(n, start + pipeline.READ_BLOCK)))
  window = pipeline.Window(names, max_len)
  rows = [pipeline.padded_row(window(r), names, max_len) for r in records]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  labels = np.array([r["labels"][label] for r in records], float)
  return batch, labels, records


def _check_label(prepared, label: str, labels: np.ndarray) -> None:
  values = set(np.unique(labels[np.isfinite(labels)]).tolist())
  if not values <= {0.0, 1.0}:
    raise ValueError(f"--label={label!r} is not binary (values {sorted(values)[:5]}...); downstream tasks need 0/1")


def _batches(batch: dict, size: int):
  """Fixed-size slices (the last one padded with empty rows) and how many rows of each are real."""
  n = len(next(iter(batch.values())))
  for start in range(0, n, size):
    part = {k: v[start:start + size] for k, v in batch.items()}
    real = len(part["segment_ids"])
    if real < size:
      part = {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)]) for k, v in part.items()}
    yield part, real


def embeddings(params, schema, config, batch: dict, *, pooling: str, size: int) -> np.ndarray:
  import jax
  from gpt_ads import api
  fn = jax.jit(functools.partial(api.embed, schema=schema, config=config, pooling=pooling))
  return np.concatenate([np.asarray(fn(params, part))[:real] for part, real in _batches(batch, size)])


def per_user_nll(params, schema, config, batch: dict, *, size: int) -> dict[str, np.ndarray]:
  """{feature: mean exact NLL per predicted event of each user [n]} (NaN for users with one event)."""
  import jax
  import jax.numpy as jnp
  from gpt_ads import objective
  from gpt_ads.model import Model, ModelConfig
  model = Model(schema, ModelConfig.from_config(config.model))

  @jax.jit
  def fn(p, b):
    outputs, _ = model.apply({"params": p}, b)
    nll, mask = objective.exact_nll(p, outputs, b, schema=schema, chunk=config.eval.vocab_chunk)
    return {k: (jnp.sum(jnp.where(mask[k], v, 0.0), 1), jnp.sum(mask[k], 1)) for k, v in nll.items()}

  parts = [(jax.device_get(fn(params, part)), real) for part, real in _batches(batch, size)]
  out = {}
  for f in schema:
    s = np.concatenate([p[f.name][0][:real] for p, real in parts])
    c = np.concatenate([p[f.name][1][:real] for p, real in parts])
    out[f.name] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
  return out


# ---- the three tasks --------------------------------------------------------------------------------------------
def _standardize(train, *others):
  mu, sd = train.mean(0), train.std(0) + 1e-6
  return [(x - mu) / sd for x in (train, *others)]


def logistic_fit(x, y, l2: float) -> np.ndarray:
  """L2-regularized logistic regression (L-BFGS); returns weights [d + 1] (last = bias)."""
  from scipy import optimize
  xb = np.hstack([x, np.ones((len(x), 1))])

  def loss(w):
    z = xb @ w
    p = 1.0 / (1.0 + np.exp(-z))
    ll = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum(w[:-1] ** 2)
    grad = xb.T @ (p - y) / len(y)
    grad[:-1] += l2 * w[:-1]
    return ll, grad

  return optimize.minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B",
                           options={"maxiter": 500}).x


def probe(ctx) -> dict:
  e_tr, e_va, e_te = _standardize(ctx.embed("train"), ctx.embed("validation"), ctx.embed("test"))
  y_tr, y_va = ctx.labels["train"], ctx.labels["validation"]
  best = None
  for l2 in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
    w = logistic_fit(e_tr, y_tr, l2)
    a = auc(e_va @ w[:-1] + w[-1], y_va)
    if best is None or a > best[0]:
      best = (a, l2, w)
  _, l2, w = best
  return {"scores": e_te @ w[:-1] + w[-1], "l2": l2, "validation_auc": best[0]}


def finetune(ctx) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from gpt_ads import api
  schema, config, opts = ctx.schema, ctx.config, ctx.opts
  batch, y = ctx.batches["train"], ctx.labels["train"]
  d = config.model.d_model
  params = {"encoder": ctx.params, "head": {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}}
  prior = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
  params["head"]["b"] = jnp.float32(np.log(prior / (1 - prior)))  # start at the base rate

  def logits(p, b):
    return api.embed(p["encoder"], b, schema=schema, config=config, pooling=opts["pooling"]) @ p["head"]["w"] + \
        p["head"]["b"]

  tx = optax.adamw(opts["finetune_lr"], weight_decay=0.01)
  state = tx.init(params)

  @jax.jit
  def step(p, s, b, labels):
    def loss(p):
      z = logits(p, b)
      return jnp.mean(jnp.logaddexp(0.0, z) - labels * z)
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  rng = np.random.default_rng(0)
  size = min(opts["batch_size"], 64)
  for _ in range(opts["finetune_steps"]):
    idx = rng.integers(0, len(y), size)
    params, state, _ = step(params, state, {k: v[idx] for k, v in batch.items()}, jnp.asarray(y[idx], jnp.float32))
  score = jax.jit(logits)
  test = ctx.batches["test"]
  scores = np.concatenate([np.asarray(score(params, part))[:real] for part, real in _batches(test, opts["batch_size"])])
  return {"scores": scores, "steps": opts["finetune_steps"]}


def anomaly(ctx) -> dict:
  nll_te = ctx.nll("test")
  nll_ref = ctx.nll("validation")  # standardizes the nll score (exact NLL is the costly part: not on train)
  total_te = np.nansum(np.stack(list(nll_te.values())), 0)
  total_tr = np.nansum(np.stack(list(nll_ref.values())), 0)
  e_tr, e_te = ctx.embed("train"), ctx.embed("test")
  e_ref = ctx.embed("validation")
  mu = e_tr.mean(0)
  cov = np.cov(e_tr - mu, rowvar=False) + 1e-3 * np.eye(e_tr.shape[1])  # shrunk: stays invertible
  prec = np.linalg.inv(cov)
  density_te = np.einsum("nd,de,ne->n", e_te - mu, prec, e_te - mu)  # -2 log density + const
  density_tr = np.einsum("nd,de,ne->n", e_ref - mu, prec, e_ref - mu)
  z = lambda x, ref: (x - np.nanmean(ref)) / (np.nanstd(ref) + 1e-9)  # noqa: E731
  # Two-sided for likelihoods: bots can be far MORE predictable than people (regular gaps, one campaign, the
  # same ad again), not only less, so an NLL far from the typical user's in either direction is the signal.
  nll_score = np.abs(z(total_te, total_tr))
  combined = 0.5 * (nll_score + z(density_te, density_tr))
  y = ctx.labels["test"]
  scores = {"nll": nll_score, "density": density_te, "combined": combined}
  scores.update({f"surprise/{k}": np.nan_to_num(np.abs(z(v, nll_ref[k])), nan=0.0) for k, v in nll_te.items()})
  return {"scores": combined, "per_score": {k: metrics(v, y) for k, v in scores.items()}}


# ---- Bayes-optimal reference (generated data) ------------------------------------------------------------------
def bayes_scores(prepared, records: list[dict], label: str) -> np.ndarray | None:
  """P(bot | events) or E[conversion | events] of each record under the generator, or None."""
  source = prepared.meta.get("source", {})
  if source.get("generator") != "gpt_ads.data.synthetic" or label not in ("is_bot", "converted"):
    return None
  import ml_collections
  from gpt_ads.data import synthetic
  process = synthetic.Process(ml_collections.ConfigDict(source["synthetic"]))
  lengths = np.array([len(r[synthetic.FEATURE_NAMES[0]]) for r in records], np.int32)
  t = max(int(lengths.max()), 1)
  feats = {}
  for name in synthetic.FEATURE_NAMES:
    arr = np.zeros((len(records), t), np.int32)
    for i, r in enumerate(records):
      arr[i, :lengths[i]] = r[name]
    feats[name] = arr
  zeros = np.zeros(len(records), bool)
  users = synthetic.Users(features=feats, lengths=lengths, segment=np.zeros(len(records), np.int32), is_bot=zeros,
                          converted=zeros)
  scores = process.bayes(users)
  return scores.p_bot if label == "is_bot" else scores.p_conversion


# ---- driver ------------------------------------------------------------------------------------------------------
class _Context:
  """Lazily computed inputs shared by the tasks (each split read and embedded at most once)."""

  def __init__(self, workdir, data_dir, label, opts):
    from gpt_ads import api
    from gpt_ads.data import store
    self.params, self.schema, self.config = api.load(workdir)
    self.prepared = store.open_dir(data_dir)
    missing = sorted(set(self.schema.names) - set(self.prepared.feature_names))
    if missing:
      raise ValueError(f"--data_dir={data_dir} lacks the run's features {missing}; use the data the run was "
                       "trained on")
    if label not in self.prepared.label_names:
      raise ValueError(f"--label={label!r}: the data set {data_dir} has labels {list(self.prepared.label_names)}")
    self.label, self.opts = label, opts
    self.batches, self.labels, self.records = {}, {}, {}
    for split in ("train", "validation", "test"):
      b, y, r = read_split(self.prepared, split, label, names=self.schema.names,
                           max_len=self.config.model.max_len, limit=opts["max_users"])
      _check_label(self.prepared, label, y)
      keep = np.isfinite(y)
      self.batches[split] = {k: v[keep] for k, v in b.items()}
      self.labels[split] = y[keep]
      self.records[split] = [x for x, k in zip(r, keep) if k]
    self._embed, self._nll = {}, {}

  def embed(self, split):
    if split not in self._embed:
      self._embed[split] = embeddings(self.params, self.schema, self.config, self.batches[split],
                                      pooling=self.opts["pooling"], size=self.opts["batch_size"])
    return self._embed[split]

  def nll(self, split):
    if split not in self._nll:
      self._nll[split] = per_user_nll(self.params, self.schema, self.config, self.batches[split],
                                      size=self.opts["batch_size"])
    return self._nll[split]


def run_task(workdir: str, data_dir: str | None, label: str, task: str, **opts) -> dict:
  """Runs one task and writes `workdir/downstream/<label>_<task>.json`; returns its content. `data_dir` None:
  the data set the run trained on."""
  from gpt_ads import api
  data_dir = data_dir or api.run_data_dir(workdir)
  if not data_dir:
    raise ValueError(f"{workdir}: the run does not record its data set; pass --data_dir")
  if task not in TASKS:
    raise ValueError(f"--task={task!r} must be one of {TASKS}")
  opts = {"pooling": "last", "max_users": 20_000, "finetune_steps": 300, "finetune_lr": 3e-4, "batch_size": 256,
          **opts}
  t0 = time.time()
  ctx = _Context(workdir, data_dir, label, opts)
  out = {"probe": probe, "finetune": finetune, "anomaly": anomaly}[task](ctx)
  y = ctx.labels["test"]
  result = {"task": task, "label": label, **metrics(out.pop("scores"), y), **out,
            "num_train": len(ctx.labels["train"]), "num_test": len(y), "positives_test": int((y > 0.5).sum()),
            "pooling": opts["pooling"], "data_dir": os.path.abspath(data_dir), "seconds": time.time() - t0}
  bayes = bayes_scores(ctx.prepared, ctx.records["test"], label)
  if bayes is not None:
    result["bayes"] = metrics(bayes, y)
    result["bayes_fraction"] = (result["auc"] - 0.5) / (result["bayes"]["auc"] - 0.5)
  from gpt_ads import logbook
  path = os.path.join(workdir, "downstream", f"{label}_{task}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  logbook.write_json(path, result)
  result["path"] = path
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    r = run_task(FLAGS.workdir, FLAGS.data_dir, FLAGS.label, FLAGS.task, pooling=FLAGS.pooling,
                 max_users=FLAGS.max_users, finetune_steps=FLAGS.finetune_steps, finetune_lr=FLAGS.finetune_lr,
                 batch_size=FLAGS.batch_size)
  except ValueError as e:
    print(f"gpt-ads-downstream: error: {e}", file=sys.stderr)
    sys.exit(2)
  bayes = f"  (Bayes-optimal auc {r['bayes']['auc']:.4f}, recall@1% {r['bayes']['recall_at_fpr']['0.01']:.4f})" \
      if "bayes" in r else ""
  print(f"{r['label']} {r['task']}: auc {r['auc']:.4f}, recall@1%FPR {r['recall_at_fpr']['0.01']:.4f}, "
        f"recall@5%FPR {r['recall_at_fpr']['0.05']:.4f}{bayes} -> {r['path']}")


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
