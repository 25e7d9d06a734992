"""The LSTM embedding of architectures (docs/ALGORITHM.md).

Two implementations of the same function:

* `ArchitectureEncoder` -- one bidirectional `nn.LSTM` (4 layers, hidden 64 by default) over the
  per-layer rows of `CompressionSpace.encode`, outputs averaged over the valid positions and
  L2-normalised. The reference implementation: any device, variable lengths (packing), and the
  exchange format of learned weights (`nn.LSTM` state-dict names).
* `EncoderStack` -- `k` independent encoders with stacked weights, evaluated together. This is
  what the searcher uses: the paper fits 8 kernels per step, each with its own LSTM, and scores
  1000 candidates per kernel. On a CPU, `nn.LSTM` is slow here for two reasons: the first layer
  multiplies every row (16 + 2*max_layers = 272 wide) by its input weights although the
  connection part of a row is a handful of ones, and many small LSTMs (80 observations each)
  are dominated by per-step overhead. The stack computes the first layer's input projection
  sparsely (`embedding_bag` over the non-zero connection entries; exact), runs the recurrence of
  all kernels and both directions in one batched matmul per time step, and back-propagates
  through a hand-written BPTT that saves the gate activations instead of letting autograd record
  ~15 small ops per step.

Inputs may be transformed before the LSTM: the paper feeds raw numbers (channel counts up to 512
and more), which saturate the gates; `input_transform="log1p"` applies log(1 + x) to the six
numeric columns (kernel, stride, padding, groups, in- and out-channels). See `DEFAULT_TRANSFORM`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from embedding.graph import DENSE_COLUMNS, KINDS

__all__ = [
    "DEFAULT_TRANSFORM",
    "adapt_encoder_state",
    "INPUT_TRANSFORMS",
    "ArchitectureEncoder",
    "EncoderError",
    "EncoderStack",
]

#: Column range of the six numeric features in a row of `CompressionSpace.encode`.
NUMERIC_COLUMNS = slice(len(KINDS), len(KINDS) + 6)
INPUT_TRANSFORMS = ("raw", "log1p")
#: log1p measured better than raw on the synthetic objective of tests/embedding/test_model.py
#: (Spearman of held-out ranking; see benchmarks/results/proposal.json "transform" entry).
DEFAULT_TRANSFORM = "log1p"


class EncoderError(ValueError):
    """Bad encoder configuration, weights of the wrong shape, or inputs of the wrong width."""


def transform_inputs(x: torch.Tensor, transform: str) -> torch.Tensor:
    """Apply the fixed input transform to encoded rows.

    Args:
        x: `... x D` rows of `CompressionSpace.encode`.
        transform: "raw" (the paper) or "log1p" (log(1 + x) on the six numeric columns).

    Returns:
        Tensor of the same shape (a new tensor for "log1p", `x` itself for "raw").
    """
    if transform == "raw":
        return x
    if transform == "log1p":
        out = x.clone()
        out[..., NUMERIC_COLUMNS] = torch.log1p(out[..., NUMERIC_COLUMNS])
        return out
    raise EncoderError(f"unknown input transform {transform!r}; use one of {INPUT_TRANSFORMS}")


def _check_transform(transform: str) -> str:
    if transform not in INPUT_TRANSFORMS:
        raise EncoderError(f"unknown input transform {transform!r}; use one of {INPUT_TRANSFORMS}")
    return transform


class ArchitectureEncoder(nn.Module):
    """Bidirectional LSTM embedding of one architecture per sequence.

    Args:
        input_size: row width, `16 + 2 * max_layers` of the space.
        hidden_size: LSTM hidden size per direction (the embedding has `2 * hidden_size` dims).
        num_layers: stacked LSTM layers.
        input_transform: "raw" (paper) or "log1p" (see module docstring).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        num_layers: int = 4,
        input_transform: str = DEFAULT_TRANSFORM,
    ) -> None:
        super().__init__()
        if input_size <= DENSE_COLUMNS or hidden_size < 1 or num_layers < 1:
            raise EncoderError(
                f"bad encoder shape: input_size={input_size} (must exceed {DENSE_COLUMNS}), "
                f"hidden_size={hidden_size}, num_layers={num_layers}"
            )
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.input_transform = _check_transform(input_transform)
        self.lstm = nn.LSTM(
            input_size, hidden_size, num_layers, batch_first=True, bidirectional=True
        )

    @property
    def embedding_size(self) -> int:
        return 2 * self.hidden_size

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "input_transform": self.input_transform,
        }

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a batch of architectures.

        Args:
            x: `batch x T x input_size` rows (padded after `lengths[b]` if lengths are given).
            lengths: `batch` valid lengths, or None when all sequences have length T.

        Returns:
            `batch x 2*hidden_size` unit vectors: LSTM outputs averaged over valid positions.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise EncoderError(
                f"expected batch x T x {self.input_size} rows, got shape {tuple(x.shape)}; "
                "encode actions with the space this encoder was built for"
            )
        x = transform_inputs(x, self.input_transform)
        if lengths is None:
            out, _ = self.lstm(x)
            mean = out.mean(dim=1)
        else:
            lengths = lengths.to("cpu", torch.int64)
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out_p, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=x.shape[1])
            mean = out.sum(dim=1) / lengths.to(out.device, out.dtype).unsqueeze(1)
        return nn.functional.normalize(mean, dim=-1)


# ---------------------------------------------------------------------------- stacked encoders
_GATES = 4


def adapt_encoder_state(
    state: dict[str, torch.Tensor], input_size: int
) -> dict[str, torch.Tensor]:
    """An encoder's weights for rows of another width: reuse across teachers of other depth.

    A row is `DENSE_COLUMNS` layer features, then in- and out-connection vectors of `L` columns
    each (`L` = the space's `max_layers`: 128 for every teacher of up to 128 layers, the
    teacher's depth beyond). Only the first LSTM layer's input weights depend on `L`. Column `d`
    of a connection vector means "a connection `d` layers away" for every `L`, so the weights of
    offsets both widths have are copied; a narrower target drops offsets it cannot have (exact:
    its rows hold nothing there), a wider one gives the new offsets zero weight (connections
    farther than the source encoder ever saw are ignored).

    Raises:
        EncoderError: not an encoder's weights, or a width that is not `DENSE_COLUMNS + 2 L`.
    """
    key = "lstm.weight_ih_l0"
    if key not in state or (input_size - DENSE_COLUMNS) % 2 or input_size <= DENSE_COLUMNS:
        raise EncoderError(
            f"cannot map encoder weights to rows of width {input_size}: expected the weights "
            f"of an ArchitectureEncoder and a width of {DENSE_COLUMNS} + 2 x max_layers"
        )
    src = int(state[key].shape[-1])
    if src == input_size:
        return dict(state)
    if src <= DENSE_COLUMNS or (src - DENSE_COLUMNS) % 2:
        raise EncoderError(f"encoder input width {src} is not {DENSE_COLUMNS} + 2 x max_layers")
    l_src, l_dst = (src - DENSE_COLUMNS) // 2, (input_size - DENSE_COLUMNS) // 2
    k = min(l_src, l_dst)
    out = dict(state)
    for name in (key, key + "_reverse"):
        w = state[name]
        new = w.new_zeros(*w.shape[:-1], input_size)
        d = DENSE_COLUMNS
        new[..., :d] = w[..., :d]
        new[..., d : d + k] = w[..., d : d + k]  # in-connections
        new[..., d + l_dst : d + l_dst + k] = w[..., d + l_src : d + l_src + k]  # out-connections
        out[name] = new
    return out


class _Recurrence(torch.autograd.Function):
    """Bidirectional LSTM recurrence of `m` independent copies, with hand-written BPTT.

    Layout (chosen so that no large tensor is permuted or flipped): `gx` `m x T x B x 2 x 4H`,
    the input projection of both directions at natural time order (gate order i, f, g, o as in
    `nn.LSTM`); `bias` `m x 2 x 4H` (b_ih + b_hh); `w_hh_t` `m x 2 x H x 4H` (transposed
    recurrent weights). Output `m x T x B x 2 x H`: forward-direction states at [..., 0, :],
    reverse-direction states at [..., 1, :], both at natural time order -- i.e. already the next
    layer's input `m x T x B x 2H`. Step `s` advances the forward direction at time `s` and the
    reverse direction at time `T-1-s` in one batched matmul.
    """

    @staticmethod
    def forward(
        ctx: Any, gx: torch.Tensor, bias: torch.Tensor, w_hh_t: torch.Tensor
    ) -> torch.Tensor:
        m, T, B, _, G = gx.shape
        H = G // _GATES
        S = 2 * m
        need = any(ctx.needs_input_grad)
        w = w_hh_t.reshape(S, H, G)
        b = bias.reshape(S, 1, G)
        y = gx.new_empty(m, T, B, 2, H)
        h = gx.new_zeros(m, 2, B, H)
        c = gx.new_zeros(m, 2, B, H)
        z = gx.new_empty(m, 2, B, G)
        # per step s (not per time): activations, cell states, tanh(c), h
        acts = gx.new_empty(T, m, 2, B, G) if need else None
        cs = gx.new_empty(T, m, 2, B, H) if need else None
        tcs = gx.new_empty(T, m, 2, B, H) if need else None
        a_buf = gx.new_empty(m, 2, B, G)
        for s in range(T):
            r = T - 1 - s
            torch.baddbmm(b, h.view(S, B, H), w, out=z.view(S, B, G))
            z[:, 0] += gx[:, s, :, 0]
            z[:, 1] += gx[:, r, :, 1]
            a = acts[s] if acts is not None else a_buf
            # tanh(x) = 2 sigmoid(2x) - 1: one sigmoid over all four gates (CPU tanh is slow)
            z[..., 2 * H : 3 * H] *= 2
            torch.sigmoid(z, out=a)
            a[..., 2 * H : 3 * H].mul_(2).sub_(1)
            i, f, g, o = a[..., :H], a[..., H : 2 * H], a[..., 2 * H : 3 * H], a[..., 3 * H :]
            c = torch.addcmul(f * c, i, g)
            tc = torch.sigmoid(c * 2).mul_(2).sub_(1)
            if cs is not None and tcs is not None:
                cs[s] = c
                tcs[s] = tc
            h = o * tc
            y[:, s, :, 0] = h[:, 0]
            y[:, r, :, 1] = h[:, 1]
        if need:
            ctx.save_for_backward(w_hh_t, y, acts, cs, tcs)
        return y

    @staticmethod
    def backward(ctx: Any, d_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w_hh_t, y, acts, cs, tcs = ctx.saved_tensors
        m, T, B, _, H = y.shape
        G = _GATES * H
        S = 2 * m
        # contiguous: bmm against a transposed view runs ~6x slower on CPU (MKL's batched path)
        w = w_hh_t.reshape(S, H, G).transpose(1, 2).contiguous()
        d_gx = y.new_empty(m, T, B, 2, G)
        d_w = y.new_zeros(S, H, G)
        d_b = y.new_zeros(m, 2, G)
        dh = y.new_zeros(m, 2, B, H)
        dc = y.new_zeros(m, 2, B, H)
        dz = y.new_empty(m, 2, B, G)
        h_prev = y.new_empty(m, 2, B, H)
        for s in range(T - 1, -1, -1):
            r = T - 1 - s
            a = acts[s]
            i, f, g, o = a[..., :H], a[..., H : 2 * H], a[..., 2 * H : 3 * H], a[..., 3 * H :]
            dh[:, 0] += d_y[:, s, :, 0]
            dh[:, 1] += d_y[:, r, :, 1]
            tc = tcs[s]
            torch.mul(dh * tc, o * (1 - o), out=dz[..., 3 * H :])
            dc = dc + dh * o * (1 - tc * tc)
            if s > 0:
                torch.mul(dc * cs[s - 1], f * (1 - f), out=dz[..., H : 2 * H])
            else:
                dz[..., H : 2 * H].zero_()
            torch.mul(dc * g, i * (1 - i), out=dz[..., :H])
            torch.mul(dc * i, 1 - g * g, out=dz[..., 2 * H : 3 * H])
            dc = dc * f
            d_gx[:, s, :, 0] = dz[:, 0]
            d_gx[:, r, :, 1] = dz[:, 1]
            d_b += dz.sum(dim=2)
            if s > 0:
                # h at the previous step: forward at time s-1, reverse at time r+1
                h_prev[:, 0] = y[:, s - 1, :, 0]
                h_prev[:, 1] = y[:, r + 1, :, 1]
                d_w.baddbmm_(h_prev.view(S, B, H).transpose(1, 2), dz.view(S, B, G))
            dh = torch.bmm(dz.view(S, B, G), w).view(m, 2, B, H)
        return d_gx, d_b, d_w.view(m, 2, H, G)


def _lstm_init(k: int, shape: tuple[int, ...], hidden: int, gen: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(hidden)
    return (torch.rand((k, *shape), generator=gen) * 2 - 1) * bound


class EncoderStack(nn.Module):
    """`k` independent `ArchitectureEncoder`s with stacked weights, evaluated together.

    Parameters are named like `nn.LSTM`'s with two leading dimensions `k x 2` (copy, direction):
    `weight_ih_l{l}` `k x 2 x 4H x in_l`, `weight_hh_l{l}` `k x 2 x 4H x H`, `bias_ih_l{l}`,
    `bias_hh_l{l}` `k x 2 x 4H`. Copy `j` computes exactly what `self.encoder(j)` computes.

    Args:
        k: number of encoders.
        input_size, hidden_size, num_layers, input_transform: as for `ArchitectureEncoder`.
        generator: random source of the initial weights (uniform(-1/sqrt(H), 1/sqrt(H)) like
            `nn.LSTM`); a fresh default generator if None.
    """

    def __init__(
        self,
        k: int,
        input_size: int,
        hidden_size: int = 64,
        num_layers: int = 4,
        input_transform: str = DEFAULT_TRANSFORM,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if k < 1 or input_size <= DENSE_COLUMNS or hidden_size < 1 or num_layers < 1:
            raise EncoderError(
                f"bad encoder stack shape: k={k}, input_size={input_size} (must exceed "
                f"{DENSE_COLUMNS}), hidden_size={hidden_size}, num_layers={num_layers}"
            )
        self.k = int(k)
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.input_transform = _check_transform(input_transform)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        H, G = hidden_size, _GATES * hidden_size
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else 2 * H
            for name, shape in (
                (f"weight_ih_l{layer}", (2, G, n_in)),
                (f"weight_hh_l{layer}", (2, G, H)),
                (f"bias_ih_l{layer}", (2, G)),
                (f"bias_hh_l{layer}", (2, G)),
            ):
                self.register_parameter(name, nn.Parameter(_lstm_init(k, shape, H, gen)))

    # ------------------------------------------------------------------ conversion
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments of one encoder (without `k`)."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "input_transform": self.input_transform,
        }

    def encoder_state(self, j: int) -> dict[str, torch.Tensor]:
        """Weights of copy `j` in `ArchitectureEncoder.state_dict()` format (detached clones)."""
        if not 0 <= j < self.k:
            raise EncoderError(f"encoder index {j} out of range for a stack of {self.k}")
        out: dict[str, torch.Tensor] = {}
        for layer in range(self.num_layers):
            for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(self, f"{base}_l{layer}")[j].detach()
                out[f"lstm.{base}_l{layer}"] = p[0].clone()
                out[f"lstm.{base}_l{layer}_reverse"] = p[1].clone()
        return out

    def encoder(self, j: int) -> ArchitectureEncoder:
        """Copy `j` as a standalone `ArchitectureEncoder` (CPU, same weights)."""
        enc = ArchitectureEncoder(**self.config())
        enc.load_state_dict(self.encoder_state(j))
        return enc

    def load_encoder_state(self, state: dict[str, torch.Tensor], j: int | None = None) -> None:
        """Set copy `j` (all copies if None) to the weights of one `ArchitectureEncoder`.

        Raises:
            EncoderError: missing keys or shapes that do not match this stack.
        """
        targets = range(self.k) if j is None else [j]
        with torch.no_grad():
            for layer in range(self.num_layers):
                for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    p = getattr(self, f"{base}_l{layer}")
                    keys = (f"lstm.{base}_l{layer}", f"lstm.{base}_l{layer}_reverse")
                    for d, key in enumerate(keys):
                        if key not in state:
                            raise EncoderError(
                                f"encoder weights lack {key!r}; pass the dict returned by "
                                "encoder_state() / ArchitectureEncoder.state_dict()"
                            )
                        w = state[key]
                        if tuple(w.shape) != tuple(p.shape[2:]):
                            raise EncoderError(
                                f"encoder weight {key!r} has shape {tuple(w.shape)}, expected "
                                f"{tuple(p.shape[2:])}: the weights come from an encoder with "
                                "another input size (max_layers) or hidden size"
                            )
                        for jj in targets:
                            p[jj, d].copy_(w)

    # ------------------------------------------------------------------ evaluation
    def forward(
        self, x: torch.Tensor, copies: Sequence[int] | None = None, chunk: int = 0
    ) -> torch.Tensor:
        """Embed architectures, each copy its own batch.

        Args:
            x: `m x B x T x input_size` rows (all sequences of one space have the same length T),
                `m = len(copies)`; copy `copies[j]` embeds `x[j]`.
            copies: which encoders to run (default: all `k`, in order).
            chunk: evaluate at most this many sequences per copy at once (0: all); bounds the
                memory of gradient-free evaluation of large candidate pools.

        Returns:
            `m x B x 2*hidden_size` unit vectors.
        """
        idx = list(range(self.k)) if copies is None else [int(c) for c in copies]
        if x.dim() != 4 or x.shape[0] != len(idx) or x.shape[-1] != self.input_size:
            raise EncoderError(
                f"expected {len(idx)} x B x T x {self.input_size} rows, got {tuple(x.shape)}"
            )
        if chunk and x.shape[1] > chunk:
            return torch.cat(
                [self._embed(x[:, s : s + chunk], idx) for s in range(0, x.shape[1], chunk)],
                dim=1,
            )
        return self._embed(x, idx)

    def _weights(self, name: str, idx: list[int]) -> torch.Tensor:
        p = getattr(self, name)
        if idx == list(range(self.k)):
            return p
        return p[torch.as_tensor(idx, device=p.device)]

    def _embed(self, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
        m, B, T, _ = x.shape
        H, G = self.hidden_size, _GATES * self.hidden_size
        gx = self._first_projection(x, idx)  # m x T x B x 2 x G
        y = x  # replaced by each layer's output, m x T x B x 2 x H
        for layer in range(self.num_layers):
            if layer > 0:
                w = self._weights(f"weight_ih_l{layer}", idx)  # m x 2 x G x 2H
                w_cat = w.permute(0, 3, 1, 2).reshape(m, 2 * H, 2 * G)
                gx = torch.bmm(y.reshape(m, T * B, 2 * H), w_cat).view(m, T, B, 2, G)
            bias = self._weights(f"bias_ih_l{layer}", idx) + self._weights(f"bias_hh_l{layer}", idx)
            w_hh_t = self._weights(f"weight_hh_l{layer}", idx).transpose(-1, -2).contiguous()
            y = _Recurrence.apply(gx, bias, w_hh_t)
        mean = y.reshape(m, T, B, 2 * H).mean(dim=1)
        return nn.functional.normalize(mean, dim=-1)

    def _first_projection(self, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """Layer-0 input projection of both directions (without biases), `m x T x B x 2 x 4H`.

        The kind one-hot and the numbers (16 columns) go through a dense matmul; the connection
        vectors are sparse 0/1 rows, so their projection is a sum of weight columns over the
        non-zero entries (`embedding_bag`), exact and far cheaper than the dense product.
        """
        m, B, T, D = x.shape
        G = _GATES * self.hidden_size
        w = self._weights("weight_ih_l0", idx)  # m x 2 x G x D
        xt = x.transpose(1, 2)  # m x T x B x D (view): rows in time-major order
        dense = transform_inputs(xt[..., :DENSE_COLUMNS], self.input_transform)
        dense = dense.reshape(m, T * B, DENSE_COLUMNS)
        w_dense = w[..., :DENSE_COLUMNS].permute(0, 3, 1, 2).reshape(m, DENSE_COLUMNS, 2 * G)
        parts = []
        for j in range(m):
            conn = xt[j, ..., DENSE_COLUMNS:].reshape(T * B, D - DENSE_COLUMNS)
            rows, cols = conn.nonzero(as_tuple=True)
            vals = conn[rows, cols]
            offsets = torch.searchsorted(rows, torch.arange(T * B, device=rows.device))
            # one table row per connection column, both directions side by side
            table = w[j, :, :, DENSE_COLUMNS:].permute(2, 0, 1).reshape(D - DENSE_COLUMNS, 2 * G)
            proj = nn.functional.embedding_bag(
                cols, table, offsets, mode="sum", per_sample_weights=vals.to(table.dtype)
            )  # TB x 2G
            parts.append(torch.addmm(proj, dense[j], w_dense[j]))
        return (parts[0].unsqueeze(0) if m == 1 else torch.stack(parts)).view(m, T, B, 2, G)
