"""Bot / invalid-traffic detectors on per-user evidence (gpt_ads.objective.evidence): numpy in, scores out,
scikit-learn.

Inputs are dicts of per-user arrays as `evidence.user_evidence` returns them: scalar evidence ("<feature>/<stat>"),
"num_predicted" and user vectors ("vector/<pooling>"). `reference` is a population of UNLABELED users (the
training split) that fits every unsupervised step; `target` the users to score.

Unsupervised (`Unsupervised(reference).scores(target)`; no label is used for fitting or for choosing among
scores):
  1. Length calibration (`LengthCalibrator`). A user's mean NLL, entropy or gain over n events spreads like
     1/sqrt(n) and shifts with n (early events are harder to predict), so each evidence column is turned into
     a robust z-score within its bucket of predicted-event count: (x - median) / (1.4826 MAD), buckets being
     quantiles of the reference users' counts.
  2. `evidence`: the squared robust Mahalanobis distance of the calibrated evidence vector from the reference
     population, with location and covariance from the Minimum Covariance Determinant (scikit-learn MinCovDet),
     which fits the majority and ignores up to half of the users as outliers. Invalid traffic is a minority that
     behaves unlike the majority in some direction that is not known in advance (regular automation is far
     MORE predictable than people in its time gaps, indiscriminate clicking far LESS predictable in its ads),
     so the score is a distance (two-sided): a direction is imposed nowhere, because none is principled for
     every kind of bot.
  3. `vector`: the same robust distance for the mean-pooled user vectors, reduced by PCA (fitted on the
     reference users) to at most `VECTOR_COMPONENTS` whitened components.
  4. `isolation`: an isolation forest on both together (calibrated evidence and reduced vectors): a
     density-free outlier score that does not assume one ellipsoid.
  5. `neighbors` (the headline, by rule): the distance from a user to its k-th nearest reference user, as a
     mean of log distances over a ladder of k from 1% to 20% of the reference users (`NEIGHBOR_SHARES`), in
     the joint space [calibrated evidence, reduced vectors] whitened by its Minimum Covariance Determinant
     (the majority sets the metric; bots do not inflate it). Why this and not a distance from one centre:
     people are several populations, not one ellipsoid, and a bot kind is a behaviour shared by FEW users:
     blatant kinds lie far from every person, subtle ones form a small tight group beside a human population.
     A distance from the centre of everyone misses the second kind (a small cluster inside the spread of the
     human clusters), a density at one k misses groups larger than k. The radius that holds a given SHARE of
     the population is large for a user whose behaviour fewer than that share of users show, and averaging
     log radii over shares from 1% to 20% covers bot groups of unknown size up to a fifth of the traffic.
     A random `NEIGHBOR_REFERENCE` subset is the reference (the score is a function of shares, which a subset
     estimates; the cost is linear in the subset). Limits: a bot population larger than ~20% of the users,
     or bots that copy a large human population closely, look typical to every unsupervised score here
     (measured: the generator's `mimic` kind, BUILD_NOTES).

Labelled (`fit_labeled(unsup, y, positive_unlabeled=...)`, fitted on the reference users): a logistic
regression (L2 by cross-validation) on `unsup.design` = [calibrated evidence, reduced vectors, log tails of the
unsupervised scores] and, with every label known, the whole mean-pooled vector and the users' value histograms
(evidence "counts/*", "transitions/*": a likelihood ratio between populations is linear in them): the supervised
reference. With a few known positives (positive-unlabeled learning: confirmed bots from honeypots, rules or
manual review; everyone else unlabeled) the same model separates the labeled positives from the unlabeled users
(class-balanced; under the "selected completely at random" assumption its score is monotone in P(bot | x)), and
its tail among the training users is pooled with the unsupervised headline's tail by Fisher's combination, -log t_pu - log t_nb:
a few labels describe the kinds they come from, the unsupervised score finds kinds no label came from.
"""

import numpy as np
from sklearn import covariance, decomposition, ensemble, linear_model, metrics, neighbors, preprocessing

VECTOR_COMPONENTS = 16
LENGTH_BUCKETS = 6        # at most; fewer when the reference users are few (each bucket keeps >= MIN_PER_BUCKET)
MIN_PER_BUCKET = 200
NEIGHBOR_SHARES = (0.01, 0.2)  # the k of the neighbour score: 1% .. 20% of its reference users
NEIGHBOR_STEPS = 30           # values of k, evenly spaced in log k
NEIGHBOR_REFERENCE = 5000     # reference users the neighbour score keeps (a random subset)
SEED = 0


def evidence_columns(ev: dict) -> list[str]:
  """The scalar evidence keys ("<feature>/<stat>"), sorted: every [n] entry but "num_predicted" (not the
  vectors, not the value histograms)."""
  return sorted(k for k in ev if np.ndim(ev[k]) == 1 and k != "num_predicted")


def histogram_columns(ev: dict) -> list[str]:
  """The value-histogram keys ("counts/<feature>", "transitions/<feature>": [n, m] each), sorted."""
  return sorted(k for k in ev if k.startswith(("counts/", "transitions/")))


def _matrix(ev: dict, columns: list[str]) -> np.ndarray:
  return np.stack([np.asarray(ev[c], np.float64) for c in columns], axis=1)  # [n, D]


class LengthCalibrator:
  """Robust z-scores of evidence columns within buckets of predicted-event count (see the module docstring)."""

  def __init__(self, counts: np.ndarray, x: np.ndarray):
    counts = np.asarray(counts, np.float64)
    num = int(np.clip(len(counts) // MIN_PER_BUCKET, 1, LENGTH_BUCKETS))
    self.edges = np.unique(np.quantile(counts, np.linspace(0, 1, num + 1)[1:-1]))  # inner edges
    bucket = self.bucket(counts)
    self.loc = np.stack([np.median(x[bucket == b], axis=0) for b in range(len(self.edges) + 1)])
    mad = np.stack([np.median(np.abs(x[bucket == b] - self.loc[b]), axis=0) for b in range(len(self.edges) + 1)])
    spread = 1.4826 * mad
    floor = 1e-3 * np.maximum(np.std(x, axis=0), 1e-12)  # a constant column in a bucket: no division by 0
    self.scale = np.maximum(spread, floor)

  def bucket(self, counts: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.edges, np.asarray(counts, np.float64), side="right")

  def __call__(self, counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    b = self.bucket(counts)
    return (x - self.loc[b]) / self.scale[b]


def tail_share(reference_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """1 - F_ref(score): the share of the (sorted) reference scores at least as high, +1 so that it is never 0."""
  ref = reference_sorted
  return (len(ref) - np.searchsorted(ref, scores, side="left") + 1.0) / (len(ref) + 1.0)


class Unsupervised:
  """Every unsupervised step of the module docstring, fitted once on the reference (unlabeled) users."""

  SCORES = ("evidence", "vector", "isolation", "neighbors")
  HEADLINE = "neighbors"

  def __init__(self, reference: dict):
    self.columns = evidence_columns(reference)
    self.calibrate = LengthCalibrator(reference["num_predicted"], _matrix(reference, self.columns))
    v = np.asarray(reference["vector/mean"], np.float64)
    self.pca = decomposition.PCA(n_components=min(VECTOR_COMPONENTS, v.shape[1], len(v) - 1), whiten=True,
                                 random_state=SEED).fit(v)
    z, v = self.features(reference)
    dims = z.shape[1] + v.shape[1]
    if len(z) < dims + 2:  # the joint Minimum Covariance Determinant needs more users than features
      raise ValueError(f"the unsupervised detectors need at least {dims + 2} unlabeled reference (training) "
                       f"users for their {dims} features; got {len(z)}: use a larger training split")
    self.mcd_evidence = covariance.MinCovDet(random_state=SEED).fit(z)
    self.mcd_vector = covariance.MinCovDet(random_state=SEED).fit(v)
    self.forest = ensemble.IsolationForest(n_estimators=200, random_state=SEED).fit(np.hstack([z, v]))
    # The neighbour score's reference: a random subset, whitened by the MCD of the joint features.
    x = np.hstack([z, v])
    keep = np.random.default_rng(SEED).permutation(len(x))[:NEIGHBOR_REFERENCE]
    mcd = covariance.MinCovDet(random_state=SEED).fit(x[keep])
    self.whiten_loc, self.whiten = mcd.location_, np.linalg.cholesky(np.linalg.pinv(mcd.covariance_))
    ks = np.geomspace(NEIGHBOR_SHARES[0] * len(keep), NEIGHBOR_SHARES[1] * len(keep), NEIGHBOR_STEPS)
    self.ks = np.unique(ks.astype(int).clip(1, len(keep) - 1))  # [steps] ascending
    self.knn = neighbors.NearestNeighbors(n_neighbors=int(self.ks[-1]) + 1).fit(self._whitened(z, v)[keep])
    raw = self._raw(z, v)
    self.reference_scores = {k: np.sort(s) for k, s in raw.items()}
    self.histograms = histogram_columns(reference)
    self._reference = (z, v, raw, self._high_dim(reference))  # for design(None)

  def features(self, ev: dict) -> tuple[np.ndarray, np.ndarray]:
    """-> (calibrated evidence [n, D], reduced mean vectors [n, <= VECTOR_COMPONENTS])."""
    z = self.calibrate(ev["num_predicted"], _matrix(ev, self.columns))
    return np.clip(z, -50, 50), self.pca.transform(np.asarray(ev["vector/mean"], np.float64))

  def _whitened(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.hstack([z, v]) - self.whiten_loc) @ self.whiten  # [n, D + components]

  def _neighbors(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mean log distance to the k-th nearest reference user over the ladder of k (module docstring). A
    reference user finds itself at distance 0, so a first neighbour at distance 0 is dropped (else the last)."""
    d, _ = self.knn.kneighbors(self._whitened(z, v))  # [n, k_max + 1], ascending
    d = np.where(d[:, :1] == 0.0, d[:, 1:], d[:, :-1])
    return np.log(np.maximum(d[:, self.ks - 1], 1e-12)).mean(axis=1)

  def _raw(self, z: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    return {"evidence": self.mcd_evidence.mahalanobis(z), "vector": self.mcd_vector.mahalanobis(v),
            "isolation": -self.forest.score_samples(np.hstack([z, v])), "neighbors": self._neighbors(z, v)}

  def tail(self, name: str, scores: np.ndarray) -> np.ndarray:
    """1 - F_ref(score) of score `name` among the reference users."""
    return tail_share(self.reference_scores[name], scores)

  def scores(self, ev: dict) -> dict[str, np.ndarray]:
    """{score name: [n] higher = more anomalous}; the headline is `HEADLINE` (module docstring), and every
    calibrated evidence column alone, two-sided, is reported as "evidence/<column>"."""
    z, v = self.features(ev)
    out = self._raw(z, v)
    for i, c in enumerate(self.columns):
      out[f"evidence/{c}"] = np.abs(z[:, i])
    return out

  def design(self, ev: dict | None, *, high_dim: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """-> (x, raw scores): x = [calibrated evidence, reduced vectors, log tails of the unsupervised scores] and,
    with `high_dim`, the whole mean-pooled vector and the value histograms: the labelled detectors' input. `ev`
    None: the reference users, from what the fit computed (not scored again)."""
    if ev is None:
      z, v, raw, whole = self._reference
    else:
      z, v = self.features(ev)
      raw, whole = self._raw(z, v), self._high_dim(ev)
    tails = np.stack([np.log(self.tail(k, raw[k])) for k in self.SCORES], axis=1)
    return np.hstack([z, v, tails] + ([whole] if high_dim else [])), raw

  def _high_dim(self, ev: dict) -> np.ndarray:
    """[n, d + Σ m]: the mean-pooled vector and the histograms named at fit time."""
    return np.hstack([np.asarray(ev["vector/mean"], np.float64)] +
                     [np.asarray(ev[k], np.float64).reshape(len(ev[k]), -1) for k in self.histograms])


def fit_scorer(x: np.ndarray, y: np.ndarray, *, balanced: bool):
  """Logistic regression of y (0 / 1) on standardized x, its L2 chosen by stratified cross-validation on ROC
  AUC (fewer folds when there are few positives) -> a score function of x."""
  folds = int(np.clip(min(y.sum(), len(y) - y.sum()), 2, 5))
  scaler = preprocessing.StandardScaler().fit(x)
  model = linear_model.LogisticRegressionCV(Cs=np.logspace(-4, 2, 13).tolist(), l1_ratios=(0.0,), cv=folds,
                                            scoring="roc_auc", class_weight="balanced" if balanced else None,
                                            max_iter=2000, random_state=SEED, use_legacy_attributes=False)
  model.fit(scaler.transform(x), y)
  return lambda x_new: model.decision_function(scaler.transform(x_new))


def fit_labeled(unsup: Unsupervised, y: np.ndarray, *, positive_unlabeled: bool):
  """The labelled detector fitted on `unsup`'s reference users with labels y (module docstring) -> a score
  function of evidence dicts. Every label known: the logistic regression on `unsup.design` with the whole mean
  vector and the histograms. Positive-unlabeled: the same without them (a few positives cannot fit hundreds more
  coefficients), pooled by Fisher's combination of its tail among the training users with the unsupervised
  headline's tail."""
  x, _ = unsup.design(None, high_dim=not positive_unlabeled)
  score = fit_scorer(x, y, balanced=positive_unlabeled)
  if not positive_unlabeled:
    return lambda ev: score(unsup.design(ev, high_dim=True)[0])
  reference = np.sort(score(x))

  def combined(ev: dict) -> np.ndarray:
    x_new, raw = unsup.design(ev, high_dim=False)
    return -np.log(tail_share(reference, score(x_new))) - np.log(unsup.tail(unsup.HEADLINE, raw[unsup.HEADLINE]))
  return combined


# ---- metrics ----------------------------------------------------------------------------------------------------
def auc(scores, labels) -> float:
  """Area under the ROC curve (ties count half); positives = labels > 0.5; NaN with one class."""
  pos = np.asarray(labels) > 0.5
  if pos.all() or not pos.any():
    return float("nan")
  return float(metrics.roc_auc_score(pos, np.asarray(scores, np.float64)))


def recall_at_fpr(scores, labels, fpr: float) -> float:
  """True-positive rate at false-positive rate `fpr`: the ROC curve read at `fpr`, linear between its vertices —
  users tied at the threshold are flagged with the probability that makes the FPR exactly `fpr` (a randomized
  threshold), so scores with many ties are not penalized for them."""
  pos = np.asarray(labels) > 0.5
  if pos.all() or not pos.any():
    return float("nan")
  f, t, _ = metrics.roc_curve(pos, np.asarray(scores, np.float64), drop_intermediate=False)
  i = int(np.searchsorted(f, fpr, side="right")) - 1  # the last vertex at or below fpr: the highest tpr there
  if i + 1 >= len(f) or f[i] == fpr:
    return float(t[i])
  return float(t[i] + (t[i + 1] - t[i]) * (fpr - f[i]) / (f[i + 1] - f[i]))

