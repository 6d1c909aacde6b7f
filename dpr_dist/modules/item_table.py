"""The item embedding table E, shared by history lookup (input) and catalogue scoring (output).

The model only talks to the table through this interface, so a sharded TorchRec table can replace
:class:`PlainItemTable` without touching the model or the losses.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

PAD_ID = 0  # row 0 is padding: always zero, never trained (matches dpr_dist.common.schema.PAD_ID)


class ItemTable(nn.Module, abc.ABC):
    """Rows are item ids; row 0 is the padding row."""

    # When True, lookups and scores are computed from a detached weight, so a stage that freezes
    # the table leaves it bit-identical even if its optimizer still steps (fused tables update
    # inside backward and ignore requires_grad; see DPR_SPEC.md "Training stages").
    frozen: bool = False

    @property
    @abc.abstractmethod
    def num_rows(self) -> int:
        """num_items + 1 (the padding row)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Embedding size d."""

    @abc.abstractmethod
    def lookup(self, ids: Tensor) -> Tensor:
        """ids LongTensor[...] -> Tensor[..., d]; id 0 gives the zero padding row."""

    @abc.abstractmethod
    def score_all(self, u: Tensor) -> Tensor:
        """u [B, d] -> logits [B, num_rows]; column = item id (column 0 is padding).

        Implementations may accept extra leading dims ([B, L, d] for per-position training);
        callers that need portability across tables flatten to [B * L, d] first."""


class PlainItemTable(ItemTable):
    """Single-process table backed by ``nn.Embedding(padding_idx=0)``.

    ``sparse=True`` makes lookups produce sparse gradients (RowWiseAdagrad accepts both); scoring
    always produces a dense gradient since it touches every row.
    """

    def __init__(self, num_items: int, dim: int, sparse: bool = False) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"PlainItemTable needs num_items >= 1 and dim >= 1, got {num_items}, {dim}")
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=PAD_ID, sparse=sparse)
        # Xavier-normal, as the PyTorch SASRec port our calibration run used (ENV_NOTES.md); the
        # default N(0, 1) makes dot-product logits far too large at the start.
        nn.init.xavier_normal_(self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        # padding_idx only stops the lookup gradient; scoring also reaches row 0 (column 0 of the
        # logits), so its gradient is cut here to keep the padding row zero under any optimizer.
        self.embedding.weight.register_hook(_zero_padding_row_grad)

    @property
    def num_rows(self) -> int:
        return self.embedding.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight.detach() if self.frozen else self.embedding.weight

    def lookup(self, ids: Tensor) -> Tensor:
        if self.frozen:
            return self.weight[ids]
        return self.embedding(ids)

    def score_all(self, u: Tensor) -> Tensor:
        return u @ self.weight.T


def _zero_padding_row_grad(grad: Tensor) -> Tensor | None:
    if grad.is_sparse:  # only lookups give sparse gradients, and padding_idx already drops row 0
        return None
    return grad.index_fill(0, torch.tensor([PAD_ID], device=grad.device), 0.0)
