"""The optimizer: AdamW with linear warmup and cosine (or linear / constant) decay, global-norm clipping and a
weight-decay mask (only matrices decay: no biases, norm scales, embedding tables or position tables)."""

import flax
import optax


def schedule(train_cfg) -> optax.Schedule:
  lr, warmup, total = train_cfg.learning_rate, train_cfg.warmup_steps, max(train_cfg.num_steps, 1)
  warmup = min(warmup, total)
  end = lr * train_cfg.final_lr_fraction
  decay = {
      "cosine": lambda n: optax.cosine_decay_schedule(lr, n, alpha=train_cfg.final_lr_fraction),
      "linear": lambda n: optax.linear_schedule(lr, end, n),
      "constant": lambda n: optax.constant_schedule(lr),
  }
  if train_cfg.lr_schedule not in decay:
    raise ValueError(f"config.train.lr_schedule={train_cfg.lr_schedule!r} must be one of {sorted(decay)}")
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup, 1)), decay[train_cfg.lr_schedule](max(total - warmup, 1))],
      [warmup])


def decay_mask(params):
  """True for kernels (weight matrices); False for biases, norm scales, embedding and position tables."""
  flat = flax.traverse_util.flatten_dict(params)
  mask = {k: (k[-1] == "kernel") for k in flat}
  return flax.traverse_util.unflatten_dict(mask)


def make(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(train_cfg)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(lr, b1=train_cfg.b1, b2=train_cfg.b2, eps=1e-8, weight_decay=train_cfg.weight_decay,
                  mask=decay_mask),
  )
  return tx, lr
