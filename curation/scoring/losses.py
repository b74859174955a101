"""Exact, batched assistant-token losses.

For each example, ``loss`` is what ``model(input_ids, labels=labels).loss`` gives for that example
alone (mean NLL in nats over the target tokens), but computed for many examples at once:

* batches are filled up to a token budget (batch x padded length) after sorting by length, so
  padding is small;
* right padding with plain causal attention: a real token only attends to earlier positions, which
  are all real, so no padding mask is needed and SDPA takes its fast causal path;
* a prefix that every example of a batch shares (a chat template's default system prompt) runs
  once; its keys and values are repeated for each row and the rest of every example attends to them. Causal
  attention makes this exact: a prefix position never sees what follows it;
* no autograd; the LM head runs only at the positions whose next token is a target, and the
  cross-entropy walks the vocabulary in tiles (``target_losses``), so peak memory does not grow
  with vocabulary x batch x length and the head's weight is read from cache, not memory.

The same forward pass also gives two embeddings of each example for free, from the decoder's final
hidden states (after the final norm, the ``hidden_states[-1]`` HF returns with
``output_hidden_states=True``), in float32:

* ``embedding``: the mean over its assistant (target) tokens (the map, diversity);
* ``rds``: RDS+ (Ivison et al., arXiv 2503.01807): the position-weighted mean over *every* token,
  position t (1-based) weighted by t, L2-normalised (target-aware selection);
* ``prompt_rds``: the same RDS+ pooling over the tokens before the final assistant turn
  (:attr:`curation.data.templates.Encoded.response_start`): the prompt a response was given, which
  a preference pair is embedded by.  Causal attention makes it equal to pooling the prompt alone.

A *plan* (lists of indices, one batch each) replaces the length-sorted batching: a preference
pair's two responses form one batch, whose shared prompt (earlier assistant turns included) runs
once (:func:`shared_prompt`) and whose two responses run as two rows on its cache (on a CPU as two
forward passes, :func:`rows_on_prefix`, so that neither is padded to the other's length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from curation.data.templates import Encoded


@dataclass
class ExampleLoss:
    """Loss of one example: the sum and count over target tokens, and each token's loss."""

    loss_sum: float
    n_tokens: int
    token_losses: np.ndarray  # (n_tokens,) float32, in sequence order
    positions: np.ndarray  # (n_tokens,) int32, index of each target token in input_ids
    embedding: np.ndarray | None = None  # (hidden,) float32: mean final hidden state over the targets
    rds: np.ndarray | None = None  # (hidden,) float32, unit norm: position-weighted mean over all tokens
    prompt_rds: np.ndarray | None = None  # (hidden,) float32, unit norm: the same over the tokens before the final turn

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.n_tokens if self.n_tokens else None


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices into batches whose padded size (rows x longest) fits ``batch_tokens``.

    Examples are sorted by length (longest first, so an out-of-memory shows up at once) and cut
    greedily; an example longer than the budget gets a batch of its own.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * longest > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def common_prefix(encoded: Sequence[Encoded], batch: Sequence[int], cap: int) -> int:
    """Length of the token prefix that all examples of ``batch`` share, at most ``cap``."""
    first = encoded[batch[0]].input_ids
    n = min(cap, *(len(encoded[i].input_ids) for i in batch))
    for i in batch[1:]:
        diff = np.flatnonzero(encoded[i].input_ids[:max(n, 0)] != first[:max(n, 0)])
        if len(diff):
            n = int(diff[0])
    return max(n, 0)


def shared_prefix(encoded: Sequence[Encoded], batch: Sequence[int]) -> int:
    """Length of the token prefix that all examples of ``batch`` share and that can run once.

    It stops before the first position whose hidden state a target needs (the one before the
    earliest target token of the batch), so every loss comes from the per-row pass.
    """
    caps = [int(np.argmax(e.target)) - 1 if e.target.any() else len(e.input_ids) for e in (encoded[i] for i in batch)]
    return common_prefix(encoded, batch, min(caps))


def shared_prompt(encoded: Sequence[Encoded], batch: Sequence[int]) -> int:
    """Length of the token prefix that all examples of a planned ``batch`` (a pair's responses)
    share, up to the shortest prompt (:attr:`Encoded.response_start`): the whole prompt runs once,
    earlier assistant turns included (their losses and the hidden state that predicts each
    response's first token come from the prefix's pass)."""
    return common_prefix(encoded, batch, min(encoded[i].response_start for i in batch))


def check_plan(plan: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """``plan`` as lists, refused unless it holds every index below ``n`` exactly once."""
    batches = [[int(i) for i in b] for b in plan]
    flat = sorted(i for b in batches for i in b)
    if flat != list(range(n)) or not all(batches):
        raise ValueError(f"a plan must hold each of the {n} examples exactly once, in non-empty batches")
    return batches


def score_examples(
    model,
    encoded: Sequence[Encoded],
    batch_tokens: int = 1024,
    vocab_tile: int = 2048,
    pos_chunk: int = 4096,
    on_batch: Callable[[int, int], None] | None = None,
    compile: bool = False,
    share_prefix: bool = True,
    plan: Sequence[Sequence[int]] | None = None,
) -> list[ExampleLoss]:
    """Score tokenised examples with ``model``; results are in the order of ``encoded``.

    ``plan`` (indices into ``encoded``, each once) gives the batches instead of the length-sorted
    budget: each batch runs its shared prompt once (:func:`shared_prompt`), then its rows.
    ``on_batch(n_examples, n_tokens)`` is called after each batch (for progress bars).
    ``compile`` runs the decoder through ``torch.compile`` (fuses the element-wise work around the
    matmuls, after a one-off compilation). ``share_prefix`` runs a prefix common to a whole batch
    once (exact; off only to measure what it saves; not combined with ``compile``).

    The default budget keeps a batch's activations in a CPU's cache; ``vocab_tile`` and
    ``pos_chunk`` shape the LM head + cross-entropy (see ``target_losses``).  The README's
    benchmark section gives the measurements behind these defaults (``make bench``).
    """
    import torch

    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    body = compiled_decoder(model) if compile else model.get_decoder()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    results: list[ExampleLoss | None] = [None] * len(encoded)
    lengths = [len(e.input_ids) for e in encoded]
    batches = plan_batches(lengths, batch_tokens) if plan is None else check_plan(plan, len(encoded))
    with torch.inference_mode():
        for batch in batches:
            B, T = len(batch), max(lengths[i] for i in batch)
            ids = torch.zeros((B, T), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.from_numpy(encoded[i].input_ids)
            ids = ids.to(device)
            # Not with compile: the cached second call recompiles for every new shape.
            P = 0
            if share_prefix and B > 1 and not compile:
                P = min((shared_prefix if plan is None else shared_prompt)(encoded, batch), T - 1)
            prefix = None  # (P, H): the shared prefix's hidden states, computed once
            if P:
                first = body(input_ids=ids[:1, :P], use_cache=True)
                cache, prefix = first.past_key_values, first.last_hidden_state[0]
                if plan is not None and device.type == "cpu" and len({lengths[i] for i in batch}) > 1:
                    hidden = rows_on_prefix(body, ids, cache, [lengths[i] for i in batch], P)  # (B, T - P, H)
                else:
                    cache.batch_repeat_interleave(B)
                    positions = torch.arange(P, T, device=device).expand(B, -1)
                    hidden = body(input_ids=ids[:, P:], past_key_values=cache, position_ids=positions,
                                  use_cache=True).last_hidden_state  # (B, T - P, H)
                del cache, first
            else:
                hidden = body(input_ids=ids).last_hidden_state  # (B, T, H)
            # Position t-1 predicts token t: gather the hidden states before each target token.
            rows, cols = [], []
            for row, i in enumerate(batch):
                pos = np.flatnonzero(encoded[i].target)
                rows.append(np.full(len(pos), row))
                cols.append(pos)
            rows_t = torch.from_numpy(np.concatenate(rows)).to(device)
            cols_t = torch.from_numpy(np.concatenate(cols)).to(device)
            h = hidden_at(hidden, prefix, rows_t, cols_t - 1, P)  # (N, H): position t-1 predicts target t
            labels = ids[rows_t, cols_t]  # (N,)
            embeddings = target_means(hidden_at(hidden, prefix, rows_t, cols_t, P), rows_t, B)  # (B, H) float32
            rds = position_weighted_means(hidden, prefix, [lengths[i] for i in batch], P)  # (B, H) float32
            # Every prompt holds the shared prefix (P <= response_start), as position_weighted_means needs.
            prompt_rds = position_weighted_means(hidden, prefix, [encoded[i].response_start for i in batch], P)
            del hidden
            losses = target_losses(head, h, labels, softcap, vocab_tile, pos_chunk)
            losses_np = losses.cpu().numpy()
            start = 0
            for row, i in enumerate(batch):
                n = len(cols[row])
                tl = losses_np[start : start + n]
                start += n
                results[i] = ExampleLoss(
                    loss_sum=float(tl.astype(np.float64).sum()), n_tokens=n,
                    token_losses=tl.copy(), positions=cols[row].astype(np.int32),
                    embedding=embeddings[row].copy() if n else None, rds=rds[row].copy(),
                    prompt_rds=prompt_rds[row].copy(),
                )
            if on_batch is not None:
                on_batch(B, sum(lengths[i] for i in batch))
    return results  # type: ignore[return-value]


def rows_on_prefix(body, ids, cache, lengths: list[int], P: int):
    """``(B, T - P, H)``: each row's positions ``P..lengths[row]`` run as a forward pass of its own
    on the shared prefix's cache (a copy for all but the last row), zeros after the row's end.

    A planned batch on a CPU: a pair's two responses often differ in length by half or more, and
    a padded batch would compute the difference for nothing, while a second call costs little."""
    import copy

    import torch

    outs = []
    for row, n in enumerate(lengths):
        past = cache if row == len(lengths) - 1 else copy.deepcopy(cache)
        positions = torch.arange(P, n, device=ids.device)[None]
        outs.append(body(input_ids=ids[row:row + 1, P:n], past_key_values=past, position_ids=positions,
                         use_cache=True).last_hidden_state[0])  # (n - P, H)
    hidden = outs[0].new_zeros((len(lengths), max(lengths) - P, outs[0].shape[-1]))
    for row, h in enumerate(outs):
        hidden[row, : len(h)] = h
    return hidden


def hidden_at(hidden, prefix, rows, pos, P: int):
    """``(N, H)``: the final hidden state of row ``rows[k]`` at position ``pos[k]``, from the per-row
    pass ``hidden`` (B, T - P, H) or, at a position inside the shared prefix (a planned batch's
    earlier assistant turns, the prompt's last token), from ``prefix`` (P, H)."""
    if prefix is None or not len(pos) or int(pos.min()) >= P:
        return hidden[rows, pos - P]
    inside = pos < P
    h = hidden[rows, (pos - P).clamp(min=0)]
    h[inside] = prefix[pos[inside]].to(h.dtype)
    return h


def target_means(h, rows, n_rows: int) -> np.ndarray:
    """Per row, the float32 mean of the hidden states ``h`` (N, H) whose row index is ``rows``
    (N,): ``(n_rows, H)``, zeros for a row without any."""
    import torch

    sums = torch.zeros((n_rows, h.shape[1]), dtype=torch.float32, device=h.device)
    sums.index_add_(0, rows, h.float())
    counts = torch.bincount(rows, minlength=n_rows).clamp(min=1).to(torch.float32)
    return (sums / counts[:, None]).cpu().numpy()


def position_weighted_means(hidden, prefix, lengths: list[int], P: int) -> np.ndarray:
    """RDS+ embeddings ``(B, H)`` float32 of unit norm: per row, the mean of its final hidden states
    at every real position t (0-based), weighted by t + 1.  ``hidden`` (B, T - P, H) holds positions
    P.. of each row (right padding after ``lengths[row]``), ``prefix`` (P, H) the positions the
    rows share (None when P == 0)."""
    import torch

    B, S, _ = hidden.shape
    pos = torch.arange(P, P + S, device=hidden.device, dtype=torch.float32)  # (S,)
    lens = torch.tensor(lengths, device=hidden.device, dtype=torch.float32)  # (B,)
    w = (pos + 1)[None, :] * (pos[None, :] < lens[:, None])  # (B, S): t + 1 at real positions, 0 in padding
    sums = torch.einsum("bs,bsh->bh", w, hidden.float())  # (B, H)
    if prefix is not None:
        wp = torch.arange(1, P + 1, device=hidden.device, dtype=torch.float32)  # (P,)
        sums = sums + (wp[:, None] * prefix.float()).sum(0)[None, :]
    means = sums / (lens * (lens + 1) / 2)[:, None]  # sum of the weights 1..L = L(L+1)/2
    return torch.nn.functional.normalize(means, dim=1).cpu().numpy()


def target_losses(head, h, labels, softcap=None, vocab_tile: int = 2048, pos_chunk: int = 4096):
    """Cross-entropy of ``labels`` under ``head(h)``, without materialising all the logits.

    The vocabulary is walked in tiles of ``vocab_tile`` rows of the head's weight, each multiplied
    with up to ``pos_chunk`` positions at once; a tile's log-sum-exp and the target logits that fall
    in it are kept, and the tiles' log-sum-exps are combined at the end (exact up to float
    rounding). A tile stays in cache while every position streams past it, instead of every chunk
    of positions reading the whole weight from memory. Logits are upcast to float32 before the softmax, as HF does.
    """
    import torch

    W, b = head.weight, getattr(head, "bias", None)
    V = W.shape[0]
    if len(labels) and int(labels.max()) >= V:
        raise ValueError(f"token id {int(labels.max())} is outside the model's vocabulary ({V})")
    out = torch.empty(len(labels), dtype=torch.float32, device=h.device)
    for s in range(0, len(labels), pos_chunk):
        hs, ls = h[s : s + pos_chunk], labels[s : s + pos_chunk]
        lses = torch.empty((len(ls), -(-V // vocab_tile)), dtype=torch.float32, device=h.device)
        target = torch.zeros(len(ls), dtype=torch.float32, device=h.device)
        for j, v in enumerate(range(0, V, vocab_tile)):
            n = min(vocab_tile, V - v)
            logits = torch.nn.functional.linear(hs, W[v : v + n], None if b is None else b[v : v + n]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            lses[:, j] = torch.logsumexp(logits, dim=1)
            inside = (ls >= v) & (ls < v + n)
            picked = logits.gather(1, (ls - v).clamp(0, n - 1)[:, None])[:, 0]
            target = torch.where(inside, picked, target)  # no host sync (GPU)
        out[s : s + pos_chunk] = torch.logsumexp(lses, dim=1) - target
    return out


def compiled_decoder(model):
    """The model's decoder wrapped by ``torch.compile`` (dynamic shapes), built once per model."""
    import torch

    body = getattr(model, "_curation_compiled_decoder", None)
    if body is None:
        body = torch.compile(model.get_decoder(), dynamic=True)
        # Not a plain attribute: nn.Module would register it and change the state dict.
        object.__setattr__(model, "_curation_compiled_decoder", body)
    return body


def reference_loss(model, enc: Encoded) -> float | None:
    """The loss HF computes for one example alone: ``model(input_ids, labels=labels).loss``.

    The slow, obviously-correct definition that the batched scorer is tested against.
    """
    import torch

    if not enc.target.any():
        return None
    device = next(model.parameters()).device
    ids = torch.from_numpy(enc.input_ids.astype(np.int64))[None].to(device)
    labels = ids.clone()
    labels[0, torch.from_numpy(~enc.target).to(device)] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)


def check_head_path(model, vocab_probe: int = 16) -> None:
    """Verify that body + output head reproduces the model's own logits.

    Models that transform logits in ways the scorer does not know (scales, caps) would otherwise
    give silently wrong losses; this raises instead.
    """
    import torch

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, vocab_probe), generator=g).to(device)
    with torch.inference_mode():
        full = model(input_ids=ids).logits.float()
        h = model.get_decoder()(input_ids=ids).last_hidden_state
        ours = model.get_output_embeddings()(h).float()
        softcap = getattr(model.config, "final_logit_softcapping", None)
        if softcap:
            ours = torch.tanh(ours / softcap) * softcap
    tol = 1e-3 if full.dtype == torch.float32 and h.dtype == torch.float32 else 5e-2
    err = (full - ours).abs().max().item()
    if err > tol * max(1.0, full.abs().max().item()):
        raise RuntimeError(
            f"{type(model).__name__}: decoder + output head does not reproduce the model's logits "
            f"(max difference {err:.3g}); this architecture is not supported by the fast scorer"
        )
