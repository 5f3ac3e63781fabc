"""`gpt-ads-downstream --workdir=DIR [--data_dir=DATA] --label=COLUMN --task=probe|finetune|anomaly
[--labeled_positives=N]`.

Uses a pre-trained run (gpt_ads.api) for a per-user binary label of a prepared data set (its schema.json
`labels`; generated data carries `is_bot` and `converted`) and writes `DIR/downstream/<label>_<task>.json`
(`<label>_probe_pu<N>.json` with `--labeled_positives=N`). Every task reads the users' evidence from one forward
pass (`api.user_evidence`: per-feature NLL, entropy, gain over the training unigram, repeat probability, user
vectors) and scores with gpt_ads.downstream.detectors:

  probe     a logistic regression (L2 by cross-validation) on [length-calibrated evidence, user vectors, the
            unsupervised scores] of the training users, evaluated on the test users. With
            `--labeled_positives=N` only N training positives are known and every other training user is
            unlabeled (positive-unlabeled learning: the few confirmed bots of honeypots, rules or review), and
            the classifier's score is pooled with the unsupervised headline (Fisher's combination);
  finetune  a logistic head on the user vector, trained together with the encoder (AdamW, cross-entropy);
  anomaly   no label is used for fitting or for choosing among scores: robust distances of the calibrated
            evidence and of the user vectors from the (unlabeled) training users, an isolation forest, and the
            headline by rule, `neighbors`: how far a user's nearest 1% .. 20% of the training users lie
            (a behaviour shared by few users; gpt_ads.downstream.detectors says why).

Every task writes `auc` and `recall_at_fpr` ({"0.01": ..., "0.05": ...}: the share of positives scored above the
threshold that flags that fraction of negatives — the study's invalid-traffic recall at a fixed FPR), and
`excluded_no_prediction` (users with a single event have no predicted event, hence no evidence: they are left
out and counted, never scored). On generated data the file also holds `bayes`: the same metrics of the
Bayes-optimal score (posterior P(bot | sequence) for `is_bot`, E[conversion | sequence] for `converted`), the
best any method can do, `bayes_fraction` = (auc − 0.5) / (bayes auc − 0.5) and `recall_fraction_of_bayes`.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_ads import api, features
from gpt_ads.data import pipeline, store, synthetic
from gpt_ads.downstream import detectors
from gpt_ads.objective import evidence
from gpt_ads.training import workdir as workdir_lib

TASKS = ("probe", "finetune", "anomaly")
FPRS = (0.01, 0.05)


def metrics(scores, labels) -> dict:
  return {"auc": detectors.auc(scores, labels),
          "recall_at_fpr": {str(f): detectors.recall_at_fpr(scores, labels, f) for f in FPRS}}


# ---- data ------------------------------------------------------------------------------------------------------
def read_split(prepared, split: str, label: str, *, names, max_len: int, limit: int):
  """-> (rows {feature / segment_ids / positions: int32 [n, max_len]}, labels float [n], records) of the first
  `limit` users of `split` (each user's last max_len events, one user per row)."""
  source = prepared.source(split)
  n = min(len(source), limit)
  records = []
  for start in range(0, n, pipeline.READ_BLOCK):
    records += pipeline.read(source, range(start, min(n, start + pipeline.READ_BLOCK)))
  window = pipeline.Window(names, max_len)
  rows = [pipeline.padded_row(window(r), names, max_len) for r in records]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
  labels = np.array([r["labels"][label] for r in records], float)
  return batch, labels, records


def check_labels(label: str, labels: dict[str, np.ndarray], labeled_positives: int) -> None:
  """One-line errors for labels the tasks cannot use (exit 2 in the CLI)."""
  values = set(np.unique(np.concatenate(list(labels.values()))).tolist())
  if not values <= {0.0, 1.0}:
    raise ValueError(f"--label={label!r} is not binary (values {sorted(values)[:5]}...); downstream tasks need 0/1")
  for split in ("train", "test"):
    y = labels[split]
    if not len(y):
      raise ValueError(f"--label={label!r}: no {split} user of the data set has the label (or a predicted event)")
    if y.min() == y.max():
      raise ValueError(f"--label={label!r} has one class only among the {len(y)} {split} users ({y[0]:g}); "
                       "the tasks need positives and negatives")
  if labeled_positives > labels["train"].sum():
    raise ValueError(f"--labeled_positives={labeled_positives} but the training split has only "
                     f"{int(labels['train'].sum())} positives of --label={label!r}")


def _batches(batch: dict, size: int):
  """Fixed-size slices (the last one padded with empty rows) and how many rows of each are real."""
  n = len(next(iter(batch.values())))
  for start in range(0, n, size):
    part = {k: v[start:start + size] for k, v in batch.items()}
    real = len(part[features.SEGMENT_IDS])
    if real < size:
      part = {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)]) for k, v in part.items()}
    yield part, real


def user_evidence(params, schema, config, batch: dict, *, background, size: int) -> dict[str, np.ndarray]:
  """`api.user_evidence` of every row of `batch`, jitted once, in slices of `size` rows -> {key: np array}."""
  fn = jax.jit(functools.partial(api.user_evidence, schema=schema, config=config, background=background,
                                 vocab_chunk=config.eval.vocab_chunk))
  parts = [(jax.device_get(fn(params, part)), real) for part, real in _batches(batch, size)]
  return {k: np.concatenate([np.asarray(p[k])[:real] for p, real in parts]) for k in parts[0][0]}


# ---- the three tasks --------------------------------------------------------------------------------------------
def probe(ctx) -> dict:
  """The labelled detector of gpt_ads.downstream.detectors fitted on the training users; with
  `labeled_positives` = N > 0, only N random training positives are labeled (positive-unlabeled)."""
  train = ctx.evidence("train")
  unsup = detectors.Unsupervised(train)
  y = ctx.labels["train"].astype(int)
  n = ctx.opts["labeled_positives"]
  if n:
    known = np.random.default_rng(0).choice(np.flatnonzero(y), n, replace=False)
    y = np.zeros_like(y)
    y[known] = 1
  score = detectors.fit_labeled(unsup, y, positive_unlabeled=bool(n))
  return {"scores": score(ctx.evidence("test")), "labeled_positives": int(y.sum()),
          "unlabeled": int(n and len(y) - n)}


def finetune(ctx) -> dict:
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
  """No label: the unsupervised scores of gpt_ads.downstream.detectors, fitted on the (unlabeled) training users."""
  unsup = detectors.Unsupervised(ctx.evidence("train"))
  scores = unsup.scores(ctx.evidence("test"))
  y = ctx.labels["test"]
  return {"scores": scores[unsup.HEADLINE], "headline": unsup.HEADLINE,
          "per_score": {k: metrics(v, y) for k, v in scores.items()}}


# ---- Bayes-optimal reference and breakdowns (generated data) --------------------------------------------------
def bayes_reference(prepared, records: list[dict], label: str):
  """-> (P(bot | events) or E[conversion | events] of each record under the generator, and each record's bot kind
  name ("" for humans)), or (None, None) when the data set was not generated or the label has no posterior."""
  source = prepared.meta.get("source", {})
  if source.get("generator") != "gpt_ads.data.synthetic" or label not in ("is_bot", "converted"):
    return None, None
  import ml_collections
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
  kind_of_segment = [process.bot_kind_names[k] if k >= 0 else "" for k in process.segment_kind]
  kinds = [kind_of_segment[int(r["labels"]["segment"])] if "segment" in r["labels"] else "" for r in records]
  return (scores.p_bot if label == "is_bot" else scores.p_conversion), kinds


def _bootstrap_recall(scores, y, fpr: float, rounds: int = 200) -> list[float]:
  """95% bootstrap interval (users resampled) of recall at `fpr`."""
  rng = np.random.default_rng(0)
  n, out = len(y), []
  for _ in range(rounds):
    i = rng.integers(0, n, n)
    if 0 < y[i].sum() < n:
      out.append(detectors.recall_at_fpr(scores[i], y[i], fpr))
  return [float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))] if out else [float("nan")] * 2


def breakdown(scores, y, bayes, groups: dict[str, np.ndarray]) -> dict:
  """{group: {users, positives, model metrics, bayes metrics (when known), bootstrap 95% intervals of recall}} for
  each boolean mask in `groups` (the negatives of a group are its own negatives)."""
  out = {}
  for name, m in groups.items():
    ys = y[m]
    entry = {"users": int(m.sum()), "positives": int((ys > 0.5).sum())}
    if 0 < entry["positives"] < entry["users"]:
      entry["model"] = metrics(scores[m], ys)
      entry["model_recall_ci95"] = {str(f): _bootstrap_recall(scores[m], ys, f) for f in FPRS}
      if bayes is not None:
        entry["bayes"] = metrics(bayes[m], ys)
    out[name] = entry
  return out


def length_groups(num_predicted: np.ndarray) -> dict[str, np.ndarray]:
  """short / medium / long: terciles of the test users' predicted-event counts (the study's length finding)."""
  lo, hi = np.quantile(num_predicted, [1 / 3, 2 / 3])
  return {f"short (<= {lo:g})": num_predicted <= lo, f"medium ({lo:g}-{hi:g}]": (num_predicted > lo) &
          (num_predicted <= hi), f"long (> {hi:g})": num_predicted > hi}


class _Context:
  """Lazily computed inputs shared by the tasks (each split read once, its evidence computed at most once)."""

  def __init__(self, workdir, data_dir, label, opts):
    self.params, self.schema, self.config = api.load(workdir)
    self.prepared = store.open_dir(data_dir)
    missing = sorted(set(self.schema.names) - set(self.prepared.feature_names))
    if missing:
      raise ValueError(f"--data_dir={data_dir} lacks the run's features {missing}; use the data the run was "
                       "trained on")
    if label in self.schema.names:
      raise ValueError(f"--label={label!r} is also an input feature of the run (the model reads it: leakage); "
                       "choose a label the run was not trained on")
    if label not in self.prepared.label_names:
      raise ValueError(f"--label={label!r}: the data set {data_dir} has labels {list(self.prepared.label_names)}")
    self.label, self.opts = label, opts
    self.batches, self.labels, self.records, self.excluded = {}, {}, {}, {}
    for split in ("train", "validation", "test"):
      b, y, r = read_split(self.prepared, split, label, names=self.schema.names,
                           max_len=self.config.model.max_len, limit=opts["max_users"])
      events = (b[features.SEGMENT_IDS] > 0).sum(1) if b else np.zeros(0, int)
      keep = np.isfinite(y) & (events >= 2)  # one event: nothing is predicted, so there is no evidence
      self.excluded[split] = int((np.isfinite(y) & (events < 2)).sum())
      self.batches[split] = {k: v[keep] for k, v in b.items()}
      self.labels[split] = y[keep]
      self.records[split] = [x for x, k in zip(r, keep) if k]
    check_labels(label, self.labels, opts["labeled_positives"])
    counts = self.prepared.counts()
    self.background = {f.name: evidence.background_log_probs(counts[f.name], f.vocab_size) for f in self.schema}
    self._evidence = {}

  def evidence(self, split) -> dict[str, np.ndarray]:
    if split not in self._evidence:
      self._evidence[split] = user_evidence(self.params, self.schema, self.config, self.batches[split],
                                            background=self.background, size=self.opts["batch_size"])
    return self._evidence[split]


def output_path(workdir: str, label: str, task: str, labeled_positives: int = 0) -> str:
  """DIR/downstream/<label>_<task>.json, or <label>_probe_pu<N>.json with N labeled positives."""
  suffix = f"_pu{labeled_positives}" if task == "probe" and labeled_positives else ""
  return os.path.join(workdir, "downstream", f"{label}_{task}{suffix}.json")


def run_task(workdir: str, data_dir: str | None, label: str, task: str, **opts) -> dict:
  """Runs one task and writes `output_path(...)`; returns its content. `data_dir` None: the data set the run
  trained on."""
  data_dir = data_dir or api.run_data_dir(workdir)
  if not data_dir:
    raise ValueError(f"{workdir}: the run does not record its data set; pass --data_dir")
  if task not in TASKS:
    raise ValueError(f"--task={task!r} must be one of {TASKS}")
  opts = {"pooling": "last", "max_users": 20_000, "finetune_steps": 300, "finetune_lr": 3e-4, "batch_size": 256,
          "labeled_positives": 0, **opts}
  if opts["labeled_positives"] < 0 or (opts["labeled_positives"] and task != "probe"):
    raise ValueError(f"--labeled_positives={opts['labeled_positives']} needs --task=probe and N >= 0")
  t0 = time.time()
  ctx = _Context(workdir, data_dir, label, opts)
  out = {"probe": probe, "finetune": finetune, "anomaly": anomaly}[task](ctx)
  y = ctx.labels["test"]
  result_scores = out.pop("scores")
  result = {"task": task, "label": label, **metrics(result_scores, y), **out,
            "num_train": len(ctx.labels["train"]), "num_test": len(y), "positives_test": int((y > 0.5).sum()),
            "excluded_no_prediction": ctx.excluded, "pooling": opts["pooling"],
            "data_dir": os.path.abspath(data_dir), "seconds": time.time() - t0}
  scores = np.asarray(result_scores)
  bayes, kinds = bayes_reference(ctx.prepared, ctx.records["test"], label)
  predicted = (ctx.batches["test"][features.SEGMENT_IDS] > 0).sum(1) - 1
  result["by_length"] = breakdown(scores, y, bayes, length_groups(predicted))
  if bayes is not None and label == "is_bot":  # positives of one kind against every negative
    kinds = np.array(kinds)
    groups = {k: (kinds == k) | (y < 0.5) for k in sorted(set(kinds) - {""})}
    result["bayes_by_kind"] = breakdown(scores, y, bayes, groups)
  if bayes is not None:
    result["bayes"] = metrics(bayes, y)
    result["bayes_fraction"] = (result["auc"] - 0.5) / (result["bayes"]["auc"] - 0.5)
    result["recall_fraction_of_bayes"] = {f: result["recall_at_fpr"][f] / max(result["bayes"]["recall_at_fpr"][f],
                                                                              1e-12) for f in result["recall_at_fpr"]}
  path = output_path(workdir, label, task, opts["labeled_positives"])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  workdir_lib.write_json(path, result)
  result["path"] = path
  return result
