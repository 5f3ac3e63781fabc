"""The bot kinds of the synthetic process (gpt_ads.data.synthetic): their config keys, checks and parameters.

Bot kinds (`bot_kinds`: one comma-separated entry per bot segment, in segment order; a name may repeat). Every
kind except `legacy` starts from a fresh human-like draw of all the segment's parameters (the humans'
Dirichlet / uniform distributions) and then replaces what its name says:
  legacy          the original bots (what "" gives): gap rows Dirichlet(bot_gap_concentration), categories
                  Dirichlet(bot_category_concentration), repeats + bot_repeat_boost (clipped to 0.95)
  regular         automation regular in time: gap rows Dirichlet(bot_gap_concentration) (near-deterministic)
  indiscriminate  ads close to uniform over ALL ads: b_s(a) = u / A + (1 - u) p_c(s)[cat(a)] q(a | cat(a)) with
                  u = indiscriminate_uniform (p_c(s) then holds b_s's category marginal); few repeats:
                  r_s ~ U(0, repeat_low / 2)
  clicker         click-heavy: p0_e(s) and every row of T_s are click_mass * onehot(CLICK_TYPE) + (1 - click_mass)
                  * (the human-like row); moderately regular gaps: Dirichlet(sqrt(gap_conc * bot_gap_conc))
  mimic           the subtle kind: copies a human segment h (the i-th mimic copies the i-th most populous human)
                  and mixes each parameter row with a fresh row drawn around it, at weight w = mimic_strength:
                  row = (1 - w) row_h + w Dirichlet(mimic_concentration * row_h) (p0_e, T, p_c, p_d, p_g; and
                  r = (1 - w) r_h + w U(repeat_low, repeat_high)), so every probability is within w of the
                  human's (total variation <= w per row) and the fresh mass stays where the human's is (a fresh
                  Dirichlet(1) row would put mass on ads the human never sees: an easy tell)

A bot kind may have its own length range (`bot_length_ranges`: "kind:lo-hi" entries). Configs stored before
`bot_kinds` existed (no such key) read the values of ADDED_KEYS, which rebuild the original process.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from gpt_ads.data.draws import FLOOR, dirichlet

BOT_KINDS = ("legacy", "regular", "indiscriminate", "clicker", "mimic")
CLICK_TYPE = 1  # the event type (0-based) that `clicker` bots favour
MIMIC_ROWS = ("p0_event", "trans", "cat_pref", "p_device", "p_gap")  # the rows a mimic mixes (and `repeat`)

# Keys added with the bot kinds, and the values that rebuild the original process from a config without them.
ADDED_KEYS = {"bot_kinds": "", "bot_length_ranges": "", "mimic_strength": 0.15, "click_mass": 0.8,
              "indiscriminate_uniform": 0.9, "mimic_concentration": 5.0}


def _get(cfg: ml_collections.ConfigDict, key: str):
  return cfg.get(key, ADDED_KEYS[key])


def bot_kind_list(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The kind of each bot segment, in segment order (`bot_kinds` split at commas; "" = every one `legacy`)."""
  kinds = tuple(k.strip() for k in str(_get(cfg, "bot_kinds")).split(",") if k.strip())
  return kinds or ("legacy",) * int(cfg.num_bot_segments)


def length_ranges(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  """`bot_length_ranges` parsed: kind -> (lo, hi) before clipping into [min_len, max_len]."""
  out = {}
  for entry in filter(None, (x.strip() for x in str(_get(cfg, "bot_length_ranges")).split(","))):
    kind, _, span = entry.partition(":")
    lo, _, hi = span.partition("-")
    if kind.strip() not in BOT_KINDS or not lo.strip().isdigit() or not hi.strip().isdigit() or int(lo) > int(hi):
      raise ValueError(f"bot_length_ranges entry {entry!r}: want 'kind:lo-hi' with lo <= hi and kind in {BOT_KINDS}")
    out[kind.strip()] = (int(lo), int(hi))
  return out


def validate(cfg: ml_collections.ConfigDict) -> None:
  """The checks of the bot-kind keys (after the process's own checks)."""
  kinds = bot_kind_list(cfg)
  if len(kinds) != cfg.num_bot_segments:
    raise ValueError(f"bot_kinds={_get(cfg, 'bot_kinds')!r} names {len(kinds)} bot segments but num_bot_segments="
                     f"{cfg.num_bot_segments}: give one kind per bot segment (or bot_kinds='' for all legacy)")
  if set(kinds) - set(BOT_KINDS):
    raise ValueError(f"bot_kinds: unknown kinds {sorted(set(kinds) - set(BOT_KINDS))}; known: {BOT_KINDS}")
  if "clicker" in kinds and cfg.num_event_types <= CLICK_TYPE:
    raise ValueError(f"clicker bots need num_event_types > {CLICK_TYPE} (event type {CLICK_TYPE} is the click)")
  for key in ("mimic_strength", "click_mass", "indiscriminate_uniform"):
    if not 0 <= _get(cfg, key) <= 1:
      raise ValueError(f"{key} must be in [0, 1]")
  if not _get(cfg, "mimic_concentration") > 0:
    raise ValueError("mimic_concentration must be > 0")
  length_ranges(cfg)


def _humanlike(rng: np.random.Generator, cfg: ml_collections.ConfigDict, ad_category: np.ndarray,
               ad_q: np.ndarray) -> dict[str, np.ndarray]:
  """One segment's parameters drawn as a human segment's (fresh-ad distribution in the original ad order)."""
  e, g = cfg.num_event_types, cfg.num_gap_buckets
  out = {"p0_event": dirichlet(rng, 1.0, e), "trans": dirichlet(rng, cfg.event_concentration, e, (e,)),
         "cat_pref": dirichlet(rng, cfg.category_concentration, cfg.num_ad_categories),
         "repeat": rng.uniform(cfg.repeat_low, cfg.repeat_high, size=e),
         "p_device": dirichlet(rng, cfg.device_concentration, cfg.num_devices),
         "p_gap": dirichlet(rng, cfg.gap_concentration, g, (e,))}
  out["ad_base"] = out["cat_pref"][ad_category] * ad_q
  return out


def kind_params(rng: np.random.Generator, cfg: ml_collections.ConfigDict, kind: str, ad_category: np.ndarray,
                ad_q: np.ndarray) -> dict[str, np.ndarray]:
  """A regular / indiscriminate / clicker segment: a human-like draw with its kind's replacements.

  `ad_category` int [A] and `ad_q` [A] are the process's ads (in the original ad order); -> {parameter: row}.
  """
  x = _humanlike(rng, cfg, ad_category, ad_q)
  e, g = cfg.num_event_types, cfg.num_gap_buckets
  if kind == "regular":
    x["p_gap"] = dirichlet(rng, cfg.bot_gap_concentration, g, (e,))
  elif kind == "indiscriminate":
    u = float(_get(cfg, "indiscriminate_uniform"))
    x["ad_base"] = u / cfg.num_ads + (1 - u) * x["ad_base"]
    x["cat_pref"] = np.bincount(ad_category, weights=x["ad_base"], minlength=cfg.num_ad_categories)
    x["repeat"] = rng.uniform(0.0, 0.5 * cfg.repeat_low, size=e)
  elif kind == "clicker":
    m, click = float(_get(cfg, "click_mass")), np.eye(e)[CLICK_TYPE]
    x["p0_event"] = m * click + (1 - m) * x["p0_event"]
    x["trans"] = m * click[None, :] + (1 - m) * x["trans"]
    x["p_gap"] = dirichlet(rng, np.sqrt(cfg.gap_concentration * cfg.bot_gap_concentration), g, (e,))
  else:
    raise ValueError(f"no parameters for bot kind {kind!r}")
  return x


def mimic_params(rng: np.random.Generator, cfg: ml_collections.ConfigDict, human: dict[str, np.ndarray],
                 ad_category: np.ndarray, ad_q: np.ndarray) -> dict[str, np.ndarray]:
  """A human segment's parameters (`human`: its MIMIC_ROWS and `repeat`), each row mixed with a perturbed copy
  at weight mimic_strength."""
  w = float(_get(cfg, "mimic_strength"))
  kappa = float(_get(cfg, "mimic_concentration"))
  def mix(row):  # (1 - w) row + w Dirichlet(kappa * row), row by row
    fresh = np.maximum(rng.standard_gamma(kappa * row), FLOOR)
    return (1 - w) * row + w * fresh / fresh.sum(-1, keepdims=True)
  x = {name: mix(human[name]) for name in MIMIC_ROWS}
  x["repeat"] = (1 - w) * human["repeat"] + w * rng.uniform(cfg.repeat_low, cfg.repeat_high, cfg.num_event_types)
  x["ad_base"] = x["cat_pref"][ad_category] * ad_q
  return x
