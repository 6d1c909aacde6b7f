"""Model hyper-parameters. Every design choice DPR_SPEC.md marks as *ours* is a field here, with the
spec's reading as the default, so other readings of the paper can be tried from YAML."""

from __future__ import annotations

from dataclasses import dataclass

ROUTING_MODES = ("learned", "hard")
SASREC_LAYOUTS = ("original", "pre", "post")
ATTENTION_IMPLS = ("fused", "reference")
FUSION_GATES = ("scalar", "vector")


@dataclass
class ModelConfig:
    backbone: str = "sasrec"          # a key of dpr_dist.modules.backbones.BACKBONES
    hidden: int = 64                  # d: item embeddings, backbone states, user vector
    max_len: int = 50                 # longest history fed to the backbone (most recent items kept)
    num_blocks: int = 2               # SASRec transformer blocks
    num_heads: int = 1                # SASRec attention heads
    dropout: float = 0.2
    # SASRec layer-norm layout: "original" = Kang & McAuley's code (the query is normalised, keys
    # are not; the feed-forward sees a normalised input with its residual), "pre" = textbook pre-LN,
    # "post" = textbook post-LN.
    sasrec_layout: str = "original"
    # "fused" = F.scaled_dot_product_attention; "reference" = explicit softmax(QK^T)V, for parity tests.
    attention_impl: str = "fused"
    gru_layers: int = 1               # GRU4Rec
    prompt_dim: int = 384             # t: frozen text-encoder embedding size
    projection_hidden: int = 256      # hidden width of the 2-layer prompt projection P
    num_pos_experts: int = 2          # K+
    num_neg_experts: int = 2          # K-
    shared_expert: bool = True        # one always-on expert for both polarities
    expert_heads: int = 2             # heads of each expert's attention read over H
    expert_hidden: int = 128          # hidden width of each expert's MLP over [h; z; read]
    router_hidden: int = 64           # hidden width of the router gate over [h; t]
    routing: str = "learned"          # "learned" (soft gate) | "hard" (polarity label picks the group)
    fusion_gate: str = "scalar"       # g(h, z): one sigmoid per clause, or one per dimension
    # Ours, beyond DPR_SPEC (0 = the spec's plain sigmoid): g = floor + (1 - floor) * sigmoid(.). A
    # sigmoid that reaches ~0 passes no gradient to the experts behind it (their contribution is
    # g * expert), so a clause whose gate closed early can never learn to steer; a floor keeps a
    # share of the gradient flowing to them.
    fusion_gate_floor: float = 0.0
    # Ours, beyond DPR_SPEC (off = the spec): the last T of the item table's d columns hold each
    # item's tag indicators (x tag_feature_scale) and are never trained; the backbone works in the
    # other d - T (its states are zero on the tag columns, so without a prompt nothing changes).
    # Scores stay E u, but a steering delta can then raise every item of a tag by the same amount,
    # which learned embeddings encode only approximately: the hard filter is within the model's reach.
    tag_features: bool = False
    tag_feature_scale: float = 1.0
    # Ours, with tag_features: the experts' attention read sees the history items' tag columns
    # (the backbone states stay tag-free). The positive case names the target's tag that is rarest
    # in the recent window, so which tags the window holds tells which items of the named tag fit.
    experts_read_history_tags: bool = False

    def __post_init__(self) -> None:
        _check_choice("routing", self.routing, ROUTING_MODES)
        _check_choice("sasrec_layout", self.sasrec_layout, SASREC_LAYOUTS)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("fusion_gate", self.fusion_gate, FUSION_GATES)
        for name in ("hidden", "max_len", "num_heads", "prompt_dim", "projection_hidden",
                     "expert_heads", "expert_hidden", "router_hidden", "gru_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_blocks", "num_pos_experts", "num_neg_experts"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_pos_experts + self.num_neg_experts == 0 and not self.shared_expert:
            raise ValueError("ModelConfig: no experts at all (num_pos_experts, num_neg_experts, shared_expert)")
        for name in ("num_heads", "expert_heads"):
            if self.hidden % getattr(self, name):
                raise ValueError(
                    f"ModelConfig.hidden={self.hidden} is not divisible by {name}={getattr(self, name)}"
                )
        if not 0.0 <= self.fusion_gate_floor < 1.0:
            raise ValueError(f"ModelConfig.fusion_gate_floor must be in [0, 1), got {self.fusion_gate_floor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.experts_read_history_tags and not self.tag_features:
            raise ValueError("ModelConfig.experts_read_history_tags needs tag_features (the tag columns it reads)")


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"ModelConfig.{field}={value!r}; allowed: {', '.join(allowed)}")
