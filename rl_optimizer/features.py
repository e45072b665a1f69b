"""The contract every stage shares: gradient history → observation, action → update.

The environment, the Keras optimizer and the exported SavedModel all call these functions, so
what the agent was trained on is exactly what it runs on (no train/serve skew). Everything is
TensorFlow, elementwise, and works on tensors of any shape.

Per coordinate the optimizer keeps S = 5 float32 numbers (a fresh coordinate's are zeros):

  m        exponential average of the gradient (β1), as in Adam;
  v        exponential average of the squared gradient (β2), as in Adam;
  log_lr   the coordinate's log step size relative to `learning_rate`;
  action   the last increment of log_lr, in units of `increment` ([−1, 1]) (option: the last
           gradient instead, `gradient_memory`);
  t        how many steps the coordinate has taken (Adam's step count).

The Keras optimizer keeps m, v, log_lr and action as slots and takes t from its step counter (a
scalar broadcasts through every function here), so it needs four slots per parameter.

One step, given the gradient g of a coordinate in tensor T:

  1. t ← t + 1; m, v ← β1·m + (1−β1)·g, β2·v + (1−β2)·g²; m̂, v̂ = m/(1−β1ᵗ), v/(1−β2ᵗ)
     (option: v̂ ← (1−s)·v̂ + s·mean over T of v̂, s = p·|alignment|, `rms_sharing`; or
     s = p·w, `determinism_gate`; s falls to 0 where v̂ spreads over the tensor,
     `sharing_spread`);
  2. alignment = cosine over T of g/√v̂ and m_{t−1}/√v̂ (`Segments` say which tensor is which;
     over a strided sample of at most 4096 of T's coordinates, `STATISTICS_SAMPLE`) (option:
     blended with the cosine with g_{t−1}/√v̂ as far as the tensor is deterministic,
     `gradient_memory`; how far it is read from that cosine alone, `determinism_gate`);
  3. observation = scale-free features of the gradient history (`observation`);
  4. action a ∈ [−1, 1] = policy(observation);
  5. log_lr ← clip(log_lr + increment·(clip(nominal_gain·alignment + a, ±1) − guard) + pull,
     log_lr_min, log_lr_max), where guard = surge_gain·max(0, ln(mean over T of g²/v̂) −
     ln surge_threshold) (the blow-up guard) and pull = anchor_rate·max(0, anchor_log_lr −
     log_lr) (the anchor); below floor_log_lr, log_lr falls only where alignment <
     −floor_alignment (the noise floor) (options: a centred over the tensor, `center_action`;
     log_lr kept within `max_spread` of its tensor's mean; the increment up to (1 + b)× in
     the first steps where g has hardly changed since g_{t−1}, `startup_boost`; a fresh
     coordinate's log_lr offset by `start_log_lr` at its first step; the guard from
     `surge_warmup_threshold` in the first `surge_warmup` steps);
  6. update = −learning_rate·exp(log_lr)·clip(m̂/(√v̂ + ε), ±clip) (option: Nesterov's
     look-ahead β1·m̂ + (1−β1)·g in place of m̂, or part of the way, `nesterov`; or as far as
     the mean over T of the action says, `learned_look_ahead`).

Where the scale comes from: the step size is state. It starts at `learning_rate` (the shipped
policy's is 1e-2, ten times Adam's default) times e^`start_log_lr` (the shipped policy's −2.3:
Adam's 1e-3), and a nominal controller moves it by
log-step increments (Wichrowska et al. 2017) in the direction of the step-size hypergradient's
sign (Baydin et al. 2018): the alignment of the gradient with the momentum over the whole tensor,
positive while steps keep their direction (too small), negative after overshooting (too large);
minibatch noise, averaged over a tensor, does not hide it as it hides each coordinate's. So the
optimizer finds the scale of any problem in a few dozen steps, from where it starts or
wherever a schedule sets it, and needs no tuning. Three safeguards bound the controller where a
one-step signal misleads it: the blow-up guard cuts the step size of a tensor whose gradients
all grow past their running RMS at once, before the momentum turns; the anchor pulls step
sizes that minibatch noise has annealed below `anchor_log_lr` (the shipped policy's: 5e-3)
back towards it; the noise floor holds them at `floor_log_lr` (the shipped policy's: 1.35e-3)
unless the tensor clearly overshoots, as a deterministic problem whose steps are too large
does (the alignment of minibatch noise is −0.02…−0.2, of an overshoot near −1). Where a
tensor's gradient is deterministic (it repeats or reverses its last one), the shipped policy
steers by the cosine with the last gradient instead and steps along Nesterov's look-ahead with
v̂ half shared over the tensor (`determinism_gate`, `nesterov`, `rms_sharing`,
`sharing_spread`): heavy-ball momentum and a stale per-coordinate v̂ bound how fast it
converges near a minimum. Where v̂ spreads over a tensor (a first layer fed unstandardised
inputs), its steps are taken at a lower bound (`spread_ceiling`). The shipped policy's β2
is 0.99, not Adam's 0.999: with a 1000-step memory, v̂ stays at early training's large
gradients once a network's loss is near 0, the controller raises log_lr to make up for the
small m̂/√v̂, and the steps are huge when the gradients return. The policy's action corrects
each coordinate's increment from what its own gradient history shows: the zero action is the
nominal controller, an Adam-direction optimizer that stays stable out of distribution
(Harrison et al. 2022).

Scale-free by construction: nothing the policy sees depends on the units of the parameters or
of the loss. The observation holds normalised gradient and momentum (Andrychowicz et al. 2016),
the sign agreement of the gradient with its average, the tensor alignment, the policy's own
last action and the step count; never the absolute step size. Training rescales problems by
powers of ten and starts coordinates at step sizes drawn over orders of magnitude, so that the
policy learns to act relative to the scale, not to remember one.

`learning_rate` multiplies every step: Keras schedules and callbacks drive it as they drive
Adam's. The update is bounded: |update| ≤ learning_rate·exp(log_lr_max)·clip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # whether a graph is compiled by XLA

from rl_optimizer.bounds import bounded, check_bounds

STATE_SIZE = 5
"""S: float32 numbers of optimizer state per coordinate (m, v, log_lr, action, t)."""

OBSERVATION_SIZE = 6
"""F: features per coordinate that the policy sees."""

FEATURE_NAMES = ("normalized_gradient", "normalized_momentum", "agreement", "tensor_alignment",
                 "last_action", "log_step")
"""The observation's columns, in order."""

TENSOR_COLUMNS = tuple(FEATURE_NAMES.index(name) for name in ("tensor_alignment", "log_step"))
"""The observation's columns that hold one number per tensor."""

CONTRACT_VERSION = 2
"""Bumped whenever the state, observation or update rule changes meaning; a policy records
the version it was trained with and loads only under the same one. (Sampling the statistics of
tensors over `STATISTICS_SAMPLE` coordinates did not bump it: the largest instance of the
shipped configs has 484 coordinates, so their training is unchanged bit for bit and every
version-2 policy trained on them stays valid. Nor did the blow-up guard, the anchor and the
noise floor, nor `rms_sharing`, `sharing_spread`, `spread_ceiling`, `nesterov`,
`gradient_memory`, `learned_look_ahead`, `determinism_gate`, `startup_boost`, `start_log_lr` and
`surge_warmup`: off by default, so an older policy's `FeatureConfig` means what it meant; a
policy that sets them fails to load in an older release, whose `FeatureConfig` does not know
them.)"""

_LOG_STEP_SCALE = 7.0  # log(t) / 7 is about 1 after 1000 steps


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Constants of the feature and update rule; a policy is valid only with its own."""

    beta1: float = bounded(0.9, ge=0.0, lt=1.0)
    """Decay of the gradient average m."""
    beta2: float = bounded(0.999, ge=0.0, lt=1.0)
    """Decay of the squared-gradient average v."""
    learning_rate: float = bounded(1e-3, gt=0.0)
    """Step size of a fresh coordinate (log_lr = 0): Adam's default."""
    increment: float = bounded(0.3, gt=0.0)
    """Largest change of log_lr in one step."""
    nominal_gain: float = bounded(3.0, ge=0.0)
    """The nominal controller: log_lr's increment, in units of `increment`, per unit of tensor
    alignment, to which the policy's action adds its correction (0: the policy alone)."""
    center_action: bool = False
    """Subtract from the policy's action its mean over the coordinate's tensor: the policy then
    only redistributes step sizes within a tensor, and each tensor's scale is the nominal
    controller's alone. (A policy trained without it learned an action negative almost
    everywhere, which under minibatch noise shrank every step size to `log_lr_min`.) The
    shipped config sets it."""
    surge_gain: float = bounded(0.0, ge=0.0)
    """The blow-up guard: where the mean of g²/v̂ over a tensor (its gradients' size now
    against their running mean square, about 1 in a steady state) exceeds `surge_threshold`,
    log_lr's increment falls by surge_gain·ln(mean / surge_threshold), in units of `increment`
    and beyond the ±1 bound of the rest (gradients all 30x their RMS cut log_lr by ~5 at once).
    A tensor whose gradients grow past their history all at once is being thrown out of its
    basin (BatchNorm's scale in a CNN whose loss is near 0 did so, step sizes grown on a
    gradient direction that stayed the same); the alignment sees it only after the momentum
    turns. 0: off."""
    surge_threshold: float = bounded(2.0, gt=1.0)
    """Where the blow-up guard starts (see `surge_gain`); > 1."""
    surge_warmup: float = bounded(0.0, ge=0.0)
    """In a coordinate's first `surge_warmup` steps (t ≤ surge_warmup) the blow-up guard starts
    at `surge_warmup_threshold`, not `surge_threshold`. Until about 1/(1 − β2) steps, v̂ is
    the mean square since the start, and a gradient that grows steadily from a small start
    looks like a surge against it: g²/v̂ settles at (1 − β2/r²)/(1 − β2) for gradients
    growing r× a step, 2 already at r = 1.005 where β2 = 0.99. A strict saddle's escape from a
    start at Adam's step (`start_log_lr` −2.3) keeps it at 2.4–3.3 for 30 steps, and a guard
    from 2 holds the step size down the whole way, so the run reaches the plateau beyond too
    slowly to cross it (README, Results). Networks leaving their initialisation surge further
    and want the guard (off in the first 50 steps, an Embedding model's loss ended 1e5× higher).
    0: no warm-up. The shipped policy's: 50 (with the threshold 6)."""
    surge_warmup_threshold: float = bounded(6.0, gt=1.0)
    """The blow-up guard's threshold in the first `surge_warmup` steps; > 1."""
    anchor_rate: float = bounded(0.0, ge=0.0, le=1.0)
    """The pull of log_lr back up to `anchor_log_lr` from below: log_lr rises by anchor_rate
    times its distance under the anchor each step. Under minibatch noise the alignment is
    the greedy, one-step hypergradient, biased towards small steps (Wu et al. 2018); without
    a pull it anneals step sizes to `log_lr_min` (a Dropout MLP's biases did in ~300 steps).
    Above the anchor it does nothing. 0: off."""
    anchor_log_lr: float = bounded(0.0, le=0.0)
    """The log_lr below which `anchor_rate` pulls back (relative to `learning_rate`): within
    [log_lr_min, 0], at most where a fresh coordinate starts."""
    floor_alignment: float = bounded(0.0, ge=0.0, le=1.0)
    """The noise floor: below `floor_log_lr`, log_lr falls only while the tensor alignment is
    below −floor_alignment (a clear overshoot: a deterministic problem that oscillates has a
    cosine near −1); otherwise it stays where it is (at the floor, if it came from above).
    Under minibatch noise the alignment is the greedy one-step hypergradient, slightly negative
    at every step size (−0.02…−0.2 on Keras networks), and it anneals step sizes far below
    what a longer horizon wants (a small regression net's to 1/100 of tuned Adam's). 0: off."""
    floor_log_lr: float = bounded(0.0, le=0.0)
    """Where the noise floor (`floor_alignment`) holds log_lr, relative to `learning_rate`:
    within [log_lr_min, 0]."""
    rms_sharing: float = bounded(0.0, ge=0.0, le=1.0)
    """p: the fraction of each coordinate's v̂ taken from its tensor's mean v̂ (over the
    tensor's finite sampled coordinates, `STATISTICS_SAMPLE`), times |alignment|:
    v̂ ← (1 − s)·v̂ + s·mean v̂ with s = p·|alignment| (Adam's alignment, on the unshared v̂).
    Adam's per-coordinate v̂ is a diagonal preconditioner made of each coordinate's past
    gradient sizes, not of curvature; on a deterministic problem near its minimum it keeps
    early training's spread between coordinates and worsens the conditioning one step size
    faces (tuned Adam reaches gap 1e-6 before tuned Nesterov momentum on no instance of the
    convex families). Under minibatch noise, though, per-coordinate scaling is what keeps a
    noisy coordinate's steps small: sharing it always (s = p) lost small networks' final loss
    (training's validation, teacher MLPs and RNNs). So it is shared as far as the problem
    shows it is deterministic: a deterministic gradient keeps or reverses its direction
    (|alignment| near 1), minibatch noise does neither (|alignment| 0.02…0.2). Scale-free.
    0: Adam's v̂ (off; retrained with p = 1 it beat tuned Adam more often on the analytic
    families, but a first layer fed unstandardised inputs needs per-coordinate scales for a
    reason that is not stale history, and lost; README, Results: hence `sharing_spread`).
    The shipped policy's: 0.5, with `determinism_gate` and `sharing_spread`."""
    sharing_spread: float = bounded(0.0, ge=0.0)
    """With `rms_sharing`: the share falls to 0 where the tensor's coordinates' v̂ spread,
    ln(arithmetic mean v̂ / geometric mean v̂) over the tensor, reaches `sharing_spread`
    (linearly from half of it). Stale history spreads v̂ little (0.0–2.3 along the convex
    families' trajectories, 0.0–1.8 on most of the Keras validation set's tensors) where a
    first layer fed unstandardised inputs holds per-coordinate scales that are true: the
    gradient of its weight j is x_j times the unit's error, and the validation set's raw
    features spread it 5.2. An Embedding's untouched rows (v̂ = 0) spread it too (19.7), and
    are not shared either. Scale-free. 0: off. The shipped policy's: 4."""
    spread_ceiling: float = bounded(0.0, ge=0.0)
    """With `sharing_spread`: where the tensor's v̂ spreads, its steps are taken at a log_lr of
    at most log_lr_max − spread_ceiling·(1 − g), g the spread's gate on the sharing (1 where
    v̂ spreads little, 0 from `sharing_spread` on); the log_lr kept in the state is not bounded
    so. A first layer fed unstandardised inputs moves a unit's pre-activation by its step times
    the sum of the inputs' sizes, and a log_lr that its steady gradients (a feature in the
    thousands makes every minibatch's gradient point about the same way) raise towards
    log_lr_max kills its ReLUs: runs/ss3's first layer reached it on a validation task of
    features with means up to 1000 and ended at chance on one seed of eight (with a ceiling of
    3, on none; README, Results). The spread says so where the gradients' direction cannot:
    steady gradients are what a deterministic problem has too. Scale-free. 0: off. The
    shipped policy's: 3."""
    nesterov: float = bounded(0.0, ge=0.0, le=1.0)
    """p: step along m̂ + p·(1−β1)·(g − m̂), QHAdam with ν = 1 − p·(1−β1) (Ma & Yarats 2019);
    at p = 1 Nesterov momentum's look-ahead β1·m̂ + (1−β1)·g, the NAdam of Dozat (2016).
    Heavy-ball momentum (m̂ alone) shrinks a quadratic's error by at most √β1 per step
    whatever the step size; the look-ahead does not bound it so, and a well-conditioned
    deterministic problem converges at the rate its step size allows. Under minibatch noise,
    though, the look-ahead's share of this step's gradient is noise the momentum would have
    averaged: small teacher MLPs end at a higher loss (README, Results). 0: Adam's m̂. The
    shipped policy's: 1, with `determinism_gate` (the look-ahead p·w)."""
    learned_look_ahead: float = bounded(0.0, ge=0.0, le=1.0)
    """p: the look-ahead's weight, set by the policy. The mean over the tensor of the policy's
    action a — what `center_action` takes out of the step sizes — gives s = p·(mean a + 1)/2
    in [0, p], and the step goes along clip((m̂ + s·(1−β1)·(g − m̂))/√v̂) (as `nesterov`'s):
    at s = 1 Nesterov's look-ahead (`nesterov` = 1), at 0 heavy-ball momentum. No hand-made
    signal told a deterministic gradient (where the look-ahead pays) from minibatch noise
    (where it is noise the momentum would have averaged; README, Results); here the agent
    learns when to take it from what its observation shows. Needs `center_action`. 0: off
    (the shipped policy's setting)."""
    gradient_memory: bool = False
    """The state's fourth number keeps the last gradient, not the last action, and the
    observation's fifth column is g_{t−1}/√v̂ (clipped), not the last action. The alignment
    is then a·|c| + c·(1 − |c|), where c is the cosine of g/√v̂ with the momentum m_{t−1}/√v̂
    (the alignment without this option) and a its cosine with g_{t−1}/√v̂ (the hypergradient
    of Baydin et al. 2018 for plain steps): a deterministic problem (|c| near 1) is steered by
    the last step alone, minibatch noise (|c| 0.02…0.2) by the momentum as before. With
    `nesterov`, a well-conditioned deterministic problem converges fastest at step sizes where
    heavy-ball momentum's c is already negative and the last step's a still positive; under
    minibatch noise, though, successive gradients share the mean gradient and a stays
    positive at any step size (a Dropout MLP's step sizes grew to the bound and blew it up),
    hence the gate. False: the alignment with m_{t−1} and the last action. The shipped
    policy's: on."""
    determinism_gate: bool = False
    """With `gradient_memory`: how deterministic a tensor is, w in [0, 1], is read from the
    cosine a of g/√v̂ with g_{t−1}/√v̂ alone, not from the cosine c with the momentum. A
    deterministic gradient changes little in one step or reverses (|a| near 1, whether it
    converges monotonically or oscillates); minibatch noise draws a fresh gradient each step
    (|a| near what two random vectors give). Near a deterministic minimum c falls to what noise
    gives, |a| does not (the `determinism` benchmark, on the shipped policy's trajectories:
    at gap 1e-6…1e-3 median |a| 0.86–0.93 per analytic family, |c| 0.34–0.64; on teacher MLPs
    and RNNs below gap 0.2, 0.08–0.16 and 0.10–0.15).
    w = clip((d − determinism_low)/(determinism_high − determinism_low), 0, 1),
    where d is |a| less what random vectors of the tensor's sampled size n give
    (√(2/(π(n − ½))), so a 3-coordinate bias is not called deterministic by chance),
    rescaled to [0, 1]. w then sets the alignment's blend (w·a + (1 − w)·c), the share of
    `rms_sharing` (p·w) and the look-ahead of `nesterov` (p·w). It tells noise from a
    deterministic gradient; it cannot tell a stale per-coordinate scale from a true one: a
    first layer fed unstandardised inputs has consistent gradients early on, is shared, and
    its ReLUs die (README, Results: runs/dg0; hence `sharing_spread`). False: |c| does. The
    shipped policy's: on, from 0.3 to 0.6."""
    startup_boost: float = bounded(0.0, ge=0.0)
    """b: in the first `startup_steps` steps log_lr's increment is multiplied by 1 + b·s, where
    s = clip((c − startup_low)/(startup_high − startup_low), 0, 1) and c is the cosine over the
    tensor (signed) of g/√v̂ with g_{t−1}/√v̂ (with `gradient_memory`), else with the momentum
    m_{t−1}/√v̂ (Adam's alignment, which in the first steps is about the same). Every problem starts
    at the same log_lr, and the controller climbs at most `increment` per step: a deterministic
    problem whose scale wants a much larger step loses its first ~10 steps to the climb (on the
    convex families, most of the gap to tuned Nesterov momentum at gap 1e-6, which it reaches
    in 30–100 steps). A gradient that has hardly changed after a step (c near 1) says the step
    was too small to matter; minibatch noise keeps c well below that on networks, whose
    steps a faster climb blows up (a boost without the gate, or after the start, lost small
    Keras networks' final loss: README, Results). A tensor of one coordinate (c = ±1) is
    boosted while its gradient keeps its sign. 0: off. The shipped policy's: 4."""
    start_log_lr: float = bounded(0.0, le=0.0)
    """Added to each coordinate's log_lr at its first step (t = 0 in its state): where a fresh
    state (zeros, or the environment's random start) begins, relative to `learning_rate`, while
    the bounds, the anchor and the floor stay relative to `learning_rate`. A deep ReLU MLP fed
    min-max-scaled features loses half its units in the first two steps at the default start
    (README, Results); −2.3 starts at Adam's 1e-3, and `startup_boost` climbs back where the
    gradient holds. Within [log_lr_min, 0]. Keras: the optimizer's first step (a sparse row
    first touched later starts at 0). 0: off. The shipped policy's: −2.3."""
    startup_steps: float = bounded(10.0, gt=0.0)
    """How many steps (t ≤ startup_steps) `startup_boost` lasts."""
    startup_low: float = bounded(0.9, ge=-1.0, lt=1.0)
    """Where `startup_boost`'s s starts to rise from 0."""
    startup_high: float = bounded(0.97, gt=-1.0, le=1.0)
    """Where `startup_boost`'s s reaches 1; > `startup_low`."""
    determinism_low: float = bounded(0.1, ge=0.0, lt=1.0)
    """Where `determinism_gate`'s w starts to rise from 0 (the shipped policy's: 0.3; a
    BatchNorm MLP's minibatch gradients repeat their last one with |cosine| ~0.45)."""
    determinism_high: float = bounded(0.4, gt=0.0, le=1.0)
    """Where `determinism_gate`'s w reaches 1; > `determinism_low` (the shipped policy's:
    0.6)."""
    max_spread: float = bounded(0.0, ge=0.0)
    """If > 0, bounds each coordinate's log_lr to within ±max_spread of its tensor's mean log_lr
    (the mean before the bound): increments accumulate, so a policy that keeps raising some
    coordinates of a tensor and lowering others spreads their step sizes without bound.
    0: unbounded (the shipped policy's setting)."""
    log_lr_min: float = bounded(-9.0, lt=0.0)
    """Smallest log_lr (the step size relative to `learning_rate`)."""
    log_lr_max: float = bounded(7.0, gt=0.0)
    """Largest log_lr."""
    clip: float = bounded(5.0, gt=0.0)
    """Bound on the normalised direction m/√v and on each observation feature."""
    epsilon: float = bounded(1e-12, gt=0.0)
    """Added to √v̂ so a coordinate with zero gradients takes zero steps."""

    def __post_init__(self):
        check_bounds(self)
        if self.learned_look_ahead and not self.center_action:
            raise ValueError("FeatureConfig.learned_look_ahead: needs center_action (the "
                             "look-ahead's weight is the action's mean over the tensor, which "
                             "only a centred action leaves out of the step sizes)")
        if self.sharing_spread and not self.rms_sharing:
            raise ValueError("FeatureConfig.sharing_spread: needs rms_sharing (it gates "
                             "rms_sharing's share)")
        if self.spread_ceiling and not self.sharing_spread:
            raise ValueError("FeatureConfig.spread_ceiling: needs sharing_spread (the ceiling "
                             "follows sharing_spread's gate)")
        if self.determinism_gate and not self.gradient_memory:
            raise ValueError("FeatureConfig.determinism_gate: needs gradient_memory (the gate "
                             "is the gradient's cosine with the last gradient, which only "
                             "gradient_memory keeps)")
        if self.startup_high <= self.startup_low:
            raise ValueError("FeatureConfig.startup_high: must be above startup_low "
                             f"({self.startup_low!r}), got {self.startup_high!r}")
        if self.determinism_high <= self.determinism_low:
            raise ValueError("FeatureConfig.determinism_high: must be above determinism_low "
                             f"({self.determinism_low!r}), got {self.determinism_high!r}")
        for name in ("anchor_log_lr", "floor_log_lr", "start_log_lr"):  # each <= 0 too
            if getattr(self, name) < self.log_lr_min:
                raise ValueError(f"FeatureConfig.{name}: must be within [log_lr_min, 0] = "
                                 f"[{self.log_lr_min:g}, 0], got {getattr(self, name)!r}")

    @property
    def max_update(self) -> float:
        """The largest |update| any coordinate can take in one step at `learning_rate`."""
        return self.learning_rate * math.exp(self.log_lr_max) * self.clip


class State(NamedTuple):
    """Per-coordinate optimizer state; each field has the parameter's shape."""

    m: tf.Tensor
    v: tf.Tensor
    log_lr: tf.Tensor
    action: tf.Tensor
    t: tf.Tensor


def init_state(shape, dtype=tf.float32) -> State:
    """A fresh coordinate's state: zeros."""
    return State(*(tf.zeros(shape, dtype) for _ in range(STATE_SIZE)))


def pack(state: State) -> tf.Tensor:
    """State → tensor [..., S] (the serving layout)."""
    return tf.stack(list(state), axis=-1)


def unpack(state: tf.Tensor) -> State:
    """Tensor [..., S] → State."""
    return State(*tf.unstack(state, num=STATE_SIZE, axis=-1))


class _Statistics(NamedTuple):
    """Each coordinate's tensor statistics, from `_tensor_statistics`."""

    alignment: tf.Tensor
    surge: tf.Tensor  # ln of the tensor's mean g²/v̂
    determinism: tf.Tensor  # w in [0, 1]
    steady: tf.Tensor  # `startup_boost`'s s in [0, 1]


class _Moments(NamedTuple):
    m: tf.Tensor  # new averages, stored in the state
    v: tf.Tensor
    t: tf.Tensor
    m_hat: tf.Tensor  # bias-corrected, with `nesterov`'s look-ahead
    direction: tf.Tensor  # m̂ / (√v̂ + ε), clipped
    rms: tf.Tensor  # √v̂ + ε
    alignment: tf.Tensor  # these four: `_Statistics`
    surge: tf.Tensor
    determinism: tf.Tensor
    steady: tf.Tensor
    # `rms_sharing`'s (mean v̂, share, `sharing_spread`'s gate or 1), else None
    sharing: tuple[tf.Tensor, tf.Tensor, tf.Tensor | float] | None

    @property
    def statistics(self) -> _Statistics:
        return _Statistics(self.alignment, self.surge, self.determinism, self.steady)


def _second_moment(gradient, state: State, config: FeatureConfig):
    """(t, v, v̂) after this step: the step count, the new squared-gradient average and its
    bias-corrected value (Adam's, before any `rms_sharing`)."""
    t = state.t + 1.0
    v = config.beta2 * state.v + (1.0 - config.beta2) * tf.square(gradient)
    return t, v, _bias_corrected(v, config.beta2, t)


def _bias_corrected(average, beta, t):
    """Adam's bias correction (Kingma & Ba 2015, Algorithm 1) of an exponential average with
    decay `beta` after t steps."""
    return average / (1.0 - tf.pow(beta, t))


def preconditioned_cosine(gradient: tf.Tensor, other: tf.Tensor, state: State,
                          config: FeatureConfig, segments: Segments | None = None) -> tf.Tensor:
    """Each coordinate's cosine over its tensor (on the tensor's sample, `STATISTICS_SAMPLE`)
    of this step's g/√v̂ with other/√v̂, v̂ this step's unshared one: the alignment's cosine
    when `other` is the momentum m_{t−1}, `gradient_memory`'s when it is the last gradient.
    For analyses of trajectories (the `determinism` benchmark); a step computes its own."""
    sampler = _sampler(gradient, segments)
    _, _, v_hat = _second_moment(gradient, state, config)
    rms = tf.sqrt(_sample(v_hat, sampler)) + config.epsilon
    # The alignment alone: none of the statistics that read the last gradient or the count.
    plain = dataclasses.replace(config, surge_gain=0.0, determinism_gate=False,
                                startup_boost=0.0)
    return _tensor_statistics(gradient, other, rms, plain, sampler).alignment


def _moments(gradient, state: State, config: FeatureConfig, sampler: _Sampler,
             statistics: _Statistics | None = None, sharing=None) -> _Moments:
    """`statistics` and `sharing`: the tensor's, where the call is on its sample alone."""
    t, v, v_hat = _second_moment(gradient, state, config)
    if statistics is None or (config.rms_sharing and sharing is None):
        # The statistics' unshared v̂ from the sampled gradient and state: sliced from the
        # whole tensor's v̂, it is a pass of its own that XLA keeps in memory for the sample.
        sampled_v_hat = v_hat
        sampled_gradient = _sample(gradient, sampler)
        if sampled_gradient is not gradient:
            _, _, sampled_v_hat = _second_moment(
                sampled_gradient, State(*(_sample(x, sampler) for x in state)), config)
    if statistics is None:
        sampled_rms = tf.sqrt(sampled_v_hat) + config.epsilon
        statistics = _tensor_statistics(gradient, state.m, sampled_rms, config, sampler,
                                        state.action if config.gradient_memory else None)
    if config.rms_sharing and sharing is None:
        v_mean = _finite_tensor_mean(sampled_v_hat, sampler)
        # Shared as far as the tensor's gradient keeps or reverses its direction (see
        # `rms_sharing`): the alignment here is Adam's, on the unshared v̂.
        share = config.rms_sharing * statistics.determinism
        gate = 1.0
        if config.sharing_spread:
            gate = _spread_gate(sampled_v_hat, v_mean, sampler, config)
            share *= gate
        sharing = (v_mean, share, gate)
    m = config.beta1 * state.m + (1.0 - config.beta1) * gradient
    m_hat, rms = _preconditioned(gradient, m, v, t, statistics.determinism, sharing, config)
    return _Moments(m, v, t, m_hat, _normalized(m_hat, rms, config), rms, *statistics, sharing)


def _preconditioned(gradient, m, v, t, determinism, sharing, config: FeatureConfig):
    """(m̂, √v̂ + ε) from the new averages m and v at step t: Adam's bias-corrected values,
    v̂ shared over the tensor as `sharing` says (`rms_sharing`), m̂ with `nesterov`'s
    look-ahead (as far as `determinism`, with `determinism_gate`)."""
    v_hat = _bias_corrected(v, config.beta2, t)
    if sharing is not None:
        v_mean, share, _ = sharing
        v_hat = (1.0 - share) * v_hat + share * v_mean
    m_hat = _bias_corrected(m, config.beta1, t)
    if config.nesterov:
        look_ahead = config.nesterov * (1.0 - config.beta1)
        if config.determinism_gate:
            look_ahead *= determinism
        m_hat += look_ahead * (gradient - m_hat)
    return m_hat, tf.sqrt(v_hat) + config.epsilon


class Segments(NamedTuple):
    """Which tensor each coordinate belongs to, where one call steps several tensors at once.

    ids: int32, the gradient's shape, values in [0, count); count: the number of tensors.
    Without `Segments`, all coordinates of a call are one tensor.
    """

    ids: tf.Tensor
    count: tf.Tensor | int


STATISTICS_SAMPLE = 4096
"""Per-tensor statistics (the alignment, the centred action's mean, `max_spread`'s mean) are
taken over at most this many coordinates of a tensor: those whose offset from the tensor's
first coordinate (in row-major order) is a multiple of ⌈size / 4096⌉. Exact for tensors of up
to 4096 coordinates (every tensor the shipped configs' environments make); for a larger one a
strided sample, whose cosine is within ~1/64 of the whole tensor's. A Keras step then makes no
extra pass over a large variable per statistic (the keras_step benchmark: 1.95x → ~1.68x of
Adam's step from this alone)."""


class _Sampler(NamedTuple):
    """Which coordinates the per-tensor statistics use (see `STATISTICS_SAMPLE`).

    Without segments the statistics' inputs are sliced to the sampled coordinates, and what
    they need is computed on those alone; with segments, or under XLA for a tensor whose size
    is known only when the step runs (a sparse gradient's rows: XLA takes no stride that is
    not a constant), every coordinate is kept and `weight` (1 where sampled, else 0) selects
    them in the sums.
    """

    segments: Segments | None
    stride: int | tf.Tensor | None = None  # without segments, and without weight
    weight: tf.Tensor | None = None


def in_xla_context() -> bool:
    """Whether the graph being built is compiled by XLA (e.g. a Keras model's train step
    under `jit_compile=True`), where every shape must be known when it compiles."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _stride(size):
    return (size + STATISTICS_SAMPLE - 1) // STATISTICS_SAMPLE


def _sampler(gradient: tf.Tensor, segments: Segments | None) -> _Sampler:
    """Made once per step and passed to every statistic of it."""
    if segments is None:
        size = gradient.shape.num_elements()
        if size is not None:
            return _Sampler(None, max(_stride(size), 1))
        stride = tf.maximum(_stride(tf.size(gradient)), 1)
        if not in_xla_context():
            return _Sampler(None, stride)
        index = tf.reshape(tf.range(tf.size(gradient)), tf.shape(gradient))
        return _Sampler(None, weight=tf.cast(index % stride == 0, tf.float32))
    ids = segments.ids
    index = tf.reshape(tf.range(tf.size(ids)), tf.shape(ids))
    first = tf.gather(tf.math.unsorted_segment_min(index, ids, segments.count), ids)
    size = tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, segments.count)
    stride = tf.gather(tf.maximum(_stride(size), 1), ids)
    return _Sampler(segments, weight=tf.cast((index - first) % stride == 0, tf.float32))


def _sample(x: tf.Tensor, sampler: _Sampler) -> tf.Tensor:
    """The coordinates of `x` (the gradient's shape, or a scalar) the statistics use."""
    if sampler.weight is not None or x.shape.rank == 0:
        return x
    if isinstance(sampler.stride, int) and sampler.stride == 1:
        return x
    return tf.reshape(x, [-1])[::sampler.stride]


def _tensor_sum(x: tf.Tensor, sampler: _Sampler) -> tf.Tensor:
    """Each coordinate's sum of the sampled `x` (from `_sample`) over its tensor's sample."""
    if sampler.weight is not None:
        x = x * tf.cast(sampler.weight, x.dtype)
    if sampler.segments is None:
        return tf.reduce_sum(x)
    segments = sampler.segments
    return tf.gather(tf.math.unsorted_segment_sum(x, segments.ids, segments.count),
                     segments.ids)


def _tensor_mean(x: tf.Tensor, sampler: _Sampler) -> tf.Tensor:
    """Each coordinate's mean of the sampled `x` (from `_sample`) over its tensor's sample."""
    if sampler.weight is None:
        return tf.reduce_mean(x)
    return _tensor_sum(x, sampler) / _tensor_sum(tf.ones_like(x), sampler)


def _finite_tensor_mean(x: tf.Tensor, sampler: _Sampler) -> tf.Tensor:
    """`_tensor_mean` over the finite values of the sampled `x` (0 where there are none)."""
    finite = tf.math.is_finite(x)
    total = _tensor_sum(tf.where(finite, x, tf.zeros_like(x)), sampler)
    return total / tf.maximum(_tensor_sum(tf.cast(finite, x.dtype), sampler), 1.0)


_SPREAD_FLOOR = 1e-12
"""Where `sharing_spread` counts a coordinate's v̂ (a dead unit's 0, say): this fraction of
its tensor's mean v̂, so the spread is bounded (≤ 27.6) and stays scale-free."""


def _spread_gate(v_hat, v_mean, sampler: _Sampler, config: FeatureConfig) -> tf.Tensor:
    """`sharing_spread`'s factor in [0, 1] on `rms_sharing`'s share: 1 where the tensor's
    spread of v̂ (ln of its arithmetic over its geometric mean, on the sampled finite
    coordinates `v_hat`; a coordinate under 1e-12 of the mean counts as 1e-12 of it) is at
    most half of `sharing_spread`, falling linearly to 0 at `sharing_spread`."""
    floor = _SPREAD_FLOOR * v_mean
    log_v = tf.math.log(tf.maximum(v_hat, floor))
    spread = tf.where(v_mean > 0.0,
                      tf.math.log(tf.maximum(v_mean, 1e-37)) - _finite_tensor_mean(log_v, sampler),
                      tf.zeros_like(v_mean))
    return tf.clip_by_value(2.0 * (1.0 - spread / config.sharing_spread), 0.0, 1.0)


def _tensor_statistics(gradient, momentum, rms, config: FeatureConfig, sampler: _Sampler,
                       last_gradient=None) -> _Statistics:
    """(alignment, surge, determinism, steady) of each coordinate's tensor, on its sample
    (`STATISTICS_SAMPLE`).

    `momentum` is the previous step's m (sliced here, which XLA fuses into reading the sampled
    coordinates only), `rms` this step's unshared √v̂ + ε at the sampled coordinates;
    `last_gradient` the previous step's gradient where `gradient_memory` blends its cosine in.

    alignment: the cosine of the preconditioned gradient and momentum. Positive while steps
    keep going the same way (the step size could grow), negative after overshooting: the sign
    of the hypergradient of the step size (Baydin et al. 2018), which minibatch noise,
    averaged over a tensor, does not hide as it hides each coordinate's.
    surge: ln of the mean of g²/v̂ over the tensor's finite coordinates (for `surge_gain`;
    0 when the guard is off).
    determinism: w in [0, 1], how far the tensor's gradient is deterministic, for
    `rms_sharing` and (with `determinism_gate`) `nesterov`: |alignment| without
    `determinism_gate`, else from the cosine with the last gradient (see `determinism_gate`).
    steady: `startup_boost`'s s from the cosine with the last gradient (with
    `gradient_memory`; else with the momentum); 0 when off.
    """
    gradient, momentum = (_sample(x, sampler) for x in (gradient, momentum))
    finite = tf.math.is_finite(gradient)
    a = tf.where(finite, gradient / rms, tf.zeros_like(gradient))
    b = tf.where(finite, momentum / rms, tf.zeros_like(momentum))
    dot, aa, bb = (_tensor_sum(x, sampler) for x in (a * b, a * a, b * b))
    alignment = dot / tf.sqrt(aa * bb + 1e-30)
    count = None  # the tensor's finite sampled coordinates, where a statistic needs them
    if config.surge_gain or config.determinism_gate:
        count = _tensor_sum(tf.cast(finite, a.dtype), sampler)
    if last_gradient is not None:
        # Steered by the last step where the problem is deterministic (`gradient_memory`).
        last = _sample(last_gradient, sampler)
        b = tf.where(finite, last / rms, tf.zeros_like(last))
        dot, bb = (_tensor_sum(x, sampler) for x in (a * b, b * b))
        last_cosine = dot / tf.sqrt(aa * bb + 1e-30)
        if config.determinism_gate:
            weight = _determinism(last_cosine, count, config)
        else:
            weight = tf.abs(alignment)
        alignment = weight * last_cosine + (1.0 - weight) * alignment
    determinism = weight if config.determinism_gate else tf.abs(alignment)
    steady = tf.zeros_like(alignment)
    if config.startup_boost:
        if last_gradient is None:  # Adam's cosine with the momentum
            last_cosine = alignment
        steady = tf.clip_by_value((last_cosine - config.startup_low)
                                  / (config.startup_high - config.startup_low), 0.0, 1.0)
    surge = tf.zeros_like(alignment)
    if config.surge_gain:
        surge = tf.math.log(aa / tf.maximum(count, 1.0) + 1e-30)
    return _Statistics(alignment, surge, determinism, steady)


def _determinism(last_cosine, count, config: FeatureConfig):
    """`determinism_gate`'s w from the cosine with the last gradient over `count` coordinates."""
    # |cosine| of two independent random vectors in n dimensions: about √(2/(π(n − ½))).
    chance = tf.minimum(tf.sqrt(2.0 / (math.pi * tf.maximum(count - 0.5, 0.5))), 1.0)
    d = tf.nn.relu(tf.abs(last_cosine) - chance) / tf.maximum(1.0 - chance, 1e-6)
    return tf.clip_by_value((d - config.determinism_low)
                            / (config.determinism_high - config.determinism_low), 0.0, 1.0)


def _normalized(x, rms, config: FeatureConfig) -> tf.Tensor:
    """x/(√v̂ + ε) within ±clip: the direction's and the observation's normalisation."""
    return tf.clip_by_value(x / rms, -config.clip, config.clip)


def _features(gradient, state: State, moments: _Moments, config: FeatureConfig) -> tf.Tensor:
    ones = tf.ones_like(gradient)
    columns = [
        _normalized(gradient, moments.rms, config),
        moments.direction,
        # +1 while the gradient keeps the direction of its average, -1 when it oscillates.
        tf.sign(gradient) * tf.sign(state.m),
        ones * moments.alignment,
        _normalized(state.action, moments.rms, config) if config.gradient_memory
        else state.action,
        ones * (tf.math.log(moments.t) / _LOG_STEP_SCALE),
    ]
    # A non-finite gradient is skipped by `_apply`; its observation must still be a number.
    # Masked column by column, then stacked: under XLA the stack then folds into the actor.
    return tf.stack([tf.where(tf.math.is_finite(x), x, tf.zeros_like(x)) for x in columns],
                    axis=-1)


def observation(gradient: tf.Tensor, state: State, config: FeatureConfig,
                segments: Segments | None = None) -> tf.Tensor:
    """Features [..., F] of the gradient history, for each coordinate of `gradient`."""
    return _features(gradient, state,
                     _moments(gradient, state, config, _sampler(gradient, segments)), config)


def _increment(action, alignment, surge, t, action_mean, config: FeatureConfig):
    """log_lr's increment: the nominal controller's, corrected by the policy's action (`t`:
    the coordinate's step count, for `surge_warmup`)."""
    action = tf.clip_by_value(action, -1.0, 1.0)
    if action_mean is not None:
        action = action - action_mean
    increment = tf.clip_by_value(config.nominal_gain * alignment + action, -1.0, 1.0)
    if config.surge_gain:
        if config.surge_warmup:  # the warm-up's threshold, surge_warmup_threshold
            surge = tf.where(t > config.surge_warmup, surge, surge - math.log(
                config.surge_warmup_threshold / config.surge_threshold))
        # Outside the ±1 bound: a surge of the whole tensor cuts its steps at once.
        increment -= config.surge_gain * tf.nn.relu(surge - math.log(config.surge_threshold))
    return increment


def _apply(action, gradient, state: State, moments: _Moments, config: FeatureConfig,
           learning_rate, sampler: _Sampler, sampled_action=None, keep=None):
    """`sampled_action`: the clipped action on the tensor's sample (`_sample`), given where
    `center_action` or `max_spread` needs it; `keep`: `step`'s."""
    action_mean = _tensor_mean(sampled_action, sampler) if config.center_action else None
    action = _increment(action, moments.alignment, moments.surge, moments.t, action_mean,
                        config)
    previous = state.log_lr
    if config.start_log_lr:  # a fresh coordinate's start (`start_log_lr`)
        previous = previous + tf.where(state.t == 0.0, config.start_log_lr, 0.0)
    log_lr = _stepped_log_lr(previous, action, config, _boost(moments, config))
    if config.max_spread:
        sampled_log_lr = _stepped_log_lr(_sample(previous, sampler), _increment(
            sampled_action, *(_sample(x, sampler) for x in (moments.alignment, moments.surge,
                                                            moments.t)),
            action_mean, config), config, _boost(moments, config, sampler))
        mean = _tensor_mean(sampled_log_lr, sampler)
        log_lr = mean + tf.clip_by_value(log_lr - mean, -config.max_spread, config.max_spread)
    if config.floor_alignment:
        # Unless it overshoots, log_lr stops at the floor coming from above, and where it was
        # coming from below (above the floor, the max leaves it as it is).
        log_lr = tf.where(moments.alignment > -config.floor_alignment,
                          tf.maximum(log_lr, tf.minimum(previous, config.floor_log_lr)),
                          log_lr)
    log_lr = tf.clip_by_value(log_lr, config.log_lr_min, config.log_lr_max)
    memory = gradient if config.gradient_memory else action
    new_state = State(moments.m, moments.v, log_lr, memory, moments.t)
    # A non-finite gradient leaves its coordinate where it was, state included; so does a
    # step that `keep` refuses.
    kept = tf.math.is_finite(gradient)
    if keep is not None:
        kept = tf.logical_and(kept, keep)
    new_state = State(*(tf.where(kept, new, old) for new, old in zip(new_state, state)))
    m_hat, rms, direction = moments.m_hat, moments.rms, moments.direction
    if in_xla_context():
        # The step from the kept m and v, the same numbers where it is taken: the update then
        # reads the new log_lr, m and v that XLA writes to memory anyway, and √v̂, the direction
        # and the actor's output are each computed in one loop, not kept in memory for two
        # (6 loops over a large variable, not 11; the keras_step benchmark: 1.70x → 1.53x).
        m_hat, rms = _preconditioned(gradient, new_state.m, new_state.v, moments.t,
                                     moments.determinism, moments.sharing, config)
        direction = _normalized(m_hat, rms, config)
    # The step from the kept log_lr (the same number where the step is taken, `spread_ceiling`
    # aside): a Keras step under XLA then computes the new log_lr once, not once for the slot
    # and once for the step.
    lr = config.learning_rate if learning_rate is None else learning_rate
    if config.learned_look_ahead:
        # The policy's part of the look-ahead (`learned_look_ahead`): its action's tensor mean.
        # Mixed before the normalisation, as `nesterov`'s: no second pass for g/(√v̂ + ε).
        weight = config.learned_look_ahead * 0.5 * (action_mean + 1.0) * (1.0 - config.beta1)
        direction = _normalized(m_hat + weight * (gradient - m_hat), rms, config)
    step_log_lr = new_state.log_lr
    if config.spread_ceiling:  # where v̂ spreads, the step's bound (`spread_ceiling`)
        step_log_lr = tf.minimum(step_log_lr, config.log_lr_max
                                 - config.spread_ceiling * (1.0 - moments.sharing[2]))
    update = -lr * tf.exp(step_log_lr) * direction
    update = tf.where(kept, update, tf.zeros_like(update))
    return update, new_state


def _boost(moments: _Moments, config: FeatureConfig, sampler: _Sampler | None = None):
    """`startup_boost`'s factor on the increment (on the tensor's sample, given `sampler`)."""
    if not config.startup_boost:
        return 1.0
    steady, t = moments.steady, moments.t
    if sampler is not None:
        steady, t = _sample(steady, sampler), _sample(t, sampler)
    starting = tf.cast(t <= config.startup_steps, steady.dtype)
    return 1.0 + config.startup_boost * starting * steady


def _stepped_log_lr(log_lr, increment, config: FeatureConfig, boost=1.0):
    """log_lr moved by `increment` (from `_increment`, times `boost`) and the anchor's pull,
    before bounds."""
    return log_lr + boost * config.increment * increment + _anchor_pull(log_lr, config)


def _anchor_pull(log_lr, config: FeatureConfig):
    """`anchor_rate`'s pull of log_lr from below `anchor_log_lr` (0 when off)."""
    if not config.anchor_rate:
        return 0.0
    return config.anchor_rate * tf.nn.relu(config.anchor_log_lr - log_lr)


def _needs_sampled_action(config: FeatureConfig) -> bool:
    return config.center_action or bool(config.max_spread)


def apply_action(action: tf.Tensor, gradient: tf.Tensor, state: State, config: FeatureConfig,
                 learning_rate=None, segments: Segments | None = None, keep=None
                 ) -> tuple[tf.Tensor, State]:
    """(update, new_state) for a given action ∈ [−1, 1] of each coordinate.

    `learning_rate` (a scalar, e.g. a Keras schedule's value) replaces
    `config.learning_rate` as the multiplier of the step. `keep`: a boolean scalar (or one per
    coordinate); where False, the step is not taken: no update, the state as it was (as where
    the gradient is not finite).
    """
    sampler = _sampler(gradient, segments)
    sampled = None
    if _needs_sampled_action(config):
        sampled = _sample(tf.clip_by_value(action, -1.0, 1.0), sampler)
    return _apply(action, gradient, state, _moments(gradient, state, config, sampler), config,
                  learning_rate, sampler, sampled, keep)


def step(actor: Callable[[tf.Tensor], tf.Tensor], gradient: tf.Tensor, state: State,
         config: FeatureConfig, learning_rate=None, segments: Segments | None = None,
         keep=None) -> tuple[tf.Tensor, State]:
    """One optimizer step: observe, ask the actor (features [..., F] → action [...]), update.

    `learning_rate` and `keep` as `apply_action`'s.
    """
    sampler = _sampler(gradient, segments)
    moments = _moments(gradient, state, config, sampler)
    action = actor(_features(gradient, state, moments, config))
    sampled = None
    if _needs_sampled_action(config):
        if sampler.weight is None:
            # The actor again, on the sample alone: the statistic then needs no pass over the
            # whole action (the same numbers as sampling it).
            sample_state = State(*(_sample(x, sampler) for x in state))
            sample_gradient = _sample(gradient, sampler)
            sample_moments = _moments(sample_gradient, sample_state, config, sampler,
                                      moments.statistics, moments.sharing)
            sampled = actor(_features(sample_gradient, sample_state, sample_moments, config))
        else:
            sampled = action
        sampled = tf.clip_by_value(sampled, -1.0, 1.0)
    return _apply(action, gradient, state, moments, config, learning_rate, sampler, sampled,
                  keep)
