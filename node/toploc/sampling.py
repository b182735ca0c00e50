"""The sampling proof: Gumbel-max sampling with counter-based noise, and its verifier.

The last stage picks each token as `argmax(logits/T + G)` over the top-k/top-p-filtered vocabulary, where
`G[position, v]` is Gumbel noise that depends on nothing but `(seed, position, v)`. The noise is made by
a counter-based integer hash (no RNG state), so a validator that replays the job regenerates exactly the
same noise on any device, in any batch layout, and can check every sampled token against its own
recomputed logits. The seed is the orchestrator's (PROTOCOL I1), so a worker cannot shop for noise.

The hash is Chris Wellons' `triple32` (a 32-bit bijective mixer with very low bias), evaluated in int64
torch arithmetic on values kept below 2**32. Multiplications by 32-bit constants are split into 16-bit
halves so no intermediate ever exceeds 2**49: the result is exact and bit-identical on every backend,
with no reliance on overflow behaviour. Noise for vocabulary id v at a position is
`triple32(triple32(v + k_v) ^ triple32(position ^ k_p))`, with k_v, k_p derived from the 64-bit seed.
The top 24 bits give `u = (bits + 0.5) / 2**24`, strictly inside (0, 1), and `G = -log(-log(u))` is
computed in float64 and rounded to float32.

Positions are absolute indices in the sequence of the token being generated: P for the first generated
token of a P-token prompt. Verification rows follow the same convention: `verify_sampling(logits, tokens,
..., first_position)` takes `logits[i]` as the replayed logits that predict `tokens[i]`, generated at
position `first_position + i` (the replay's logits at sequence index `first_position + i - 1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from node.protocol.job import SamplingParams
from node.toploc.thresholds import SAMPLING

_MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x9E3779B9
_POSITION_SALT = 0x85EBCA6B
_UNIFORM_BITS = 24
_BLOCK_ELEMENTS = 1 << 16
_VERIFY_ROWS = 128
_VERIFY_HEAD = 128  # ids per row taken in descending order first (SmolLM2 at T 0.7, top-p 0.95: nuclei <= ~50)
_SAMPLE_HEAD = 128  # ids per row sample_next takes first; rows it cannot settle widen it
_HEAD_GROWTH = 16  # rows the head cannot settle retry with a 16x wider one, then with a full sort


def _mul32(x, constant: int):
    """`x * constant mod 2**32` for x in [0, 2**32), without any intermediate above 2**49."""
    low = x * (constant & 0xFFFF)
    high = (x * (constant >> 16)) & 0xFFFF
    return (low + (high << 16)) & _MASK32


def _triple32(x):
    """Wellons' triple32 mixer. Works on Python ints and on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 17)
    x = _mul32(x, 0xED5AD4BB)
    x = x ^ (x >> 11)
    x = _mul32(x, 0xAC4C1B51)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x31848BAB)
    x = x ^ (x >> 14)
    return x


def _seed_keys(seed: int) -> tuple[int, int]:
    if not (isinstance(seed, int) and 0 <= seed < 2**64):
        raise ValueError("seed must be an integer in [0, 2**64)")
    low, high = seed & _MASK32, seed >> 32
    vocab_key = _triple32(low ^ _triple32(high ^ _SEED_SALT))
    position_key = _triple32(vocab_key ^ _POSITION_SALT ^ _triple32(high))
    return vocab_key, position_key


def _mul32_(x: torch.Tensor, constant: int, scratch: torch.Tensor) -> None:
    """In place: x = x * constant mod 2**32 (same arithmetic as _mul32, no allocation)."""
    torch.mul(x, constant >> 16, out=scratch)
    scratch.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    x.mul_(constant & 0xFFFF).add_(scratch).bitwise_and_(_MASK32)


def _xorshift_(x: torch.Tensor, shift: int, scratch: torch.Tensor) -> None:
    torch.bitwise_right_shift(x, shift, out=scratch)
    x.bitwise_xor_(scratch)


def _triple32_(x: torch.Tensor) -> None:
    """In-place triple32 on an int64 tensor of 32-bit values: the hot path of the noise."""
    scratch = torch.empty_like(x)
    _xorshift_(x, 17, scratch)
    _mul32_(x, 0xED5AD4BB, scratch)
    _xorshift_(x, 11, scratch)
    _mul32_(x, 0xAC4C1B51, scratch)
    _xorshift_(x, 15, scratch)
    _mul32_(x, 0x31848BAB, scratch)
    _xorshift_(x, 14, scratch)


def _check_positions(positions: torch.Tensor) -> torch.Tensor:
    positions = torch.as_tensor(positions, dtype=torch.int64)
    if positions.dim() != 1:
        raise ValueError("positions must be a 1-D tensor")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) > _MASK32):
        raise ValueError("positions must be in [0, 2**32)")
    return positions


def _bits_block(per_id: torch.Tensor, per_position: torch.Tensor) -> torch.Tensor:
    block = per_id.unsqueeze(0) ^ per_position.unsqueeze(1)
    _triple32_(block)
    return block


def _row_keys(seed: int, positions: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab_key, position_key = _seed_keys(seed)
    ids = torch.arange(vocab, dtype=torch.int64, device=positions.device)
    return _triple32((ids + vocab_key) & _MASK32), _triple32(positions ^ position_key)


def noise_bits(seed: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """The raw 32-bit hash values [N, V] (int64 holding uint32): the integer stream behind the noise."""
    positions = _check_positions(positions)
    per_id, per_position = _row_keys(seed, positions, vocab)
    return _bits_block(per_id, per_position)


def gumbel_noise(seed: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [N, V] float32 on positions' device, a pure function of (seed, position, id)."""
    positions = _check_positions(positions)
    per_id, per_position = _row_keys(seed, positions, vocab)
    out = torch.empty((positions.numel(), vocab), dtype=torch.float32, device=positions.device)
    # Blocks of rows keep the int64 working set small (fresh 100 MB temporaries cost more than the math).
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(vocab, 1)) if positions.device.type == "cpu" else len(out)
    for start in range(0, positions.numel(), rows_per_block):
        out[start : start + rows_per_block] = _gumbel_from_bits(_bits_block(per_id, per_position[start : start + rows_per_block]))
    return out


def gumbel_pairs(seed: int, positions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`gumbel_noise(seed, ...)[position, id]` for (position, id) pairs only: positions and ids broadcast
    together (e.g. positions [N, 1] with ids [N, M]); float32 of the broadcast shape."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    positions = torch.as_tensor(positions, dtype=torch.int64, device=ids.device)
    _check_positions(positions.reshape(-1))
    vocab_key, position_key = _seed_keys(seed)
    bits = (ids + vocab_key).bitwise_and_(_MASK32)
    _triple32_(bits)
    per_position = positions ^ position_key
    _triple32_(per_position)
    bits = bits ^ per_position
    _triple32_(bits)
    return _gumbel_from_bits(bits)


def gumbel_at(seed: int, position: int, ids: torch.Tensor) -> torch.Tensor:
    """The noise of `gumbel_noise(seed, [position], V)[0, ids]` for some ids only (float32, ids' shape)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    positions = _check_positions(torch.tensor([position], device=ids.device))
    vocab_key, position_key = _seed_keys(seed)
    bits = _triple32((ids + vocab_key) & _MASK32) ^ _triple32(positions ^ position_key)
    _triple32_(bits)
    return _gumbel_from_bits(bits)


def _gumbel_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)) with u = (top 24 bits + 0.5) / 2**24, in float64, rounded to float32 (bits is consumed)."""
    uniform = bits.bitwise_right_shift_(32 - _UNIFORM_BITS).to(torch.float64)
    uniform.add_(0.5).mul_(1.0 / (1 << _UNIFORM_BITS))
    return uniform.log_().neg_().log_().neg_().to(torch.float32)


def candidates(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The ids (ascending) that survive top-k then top-p for one row of temperature-scaled scores [V].

    Ties are kept together, so the set never depends on sort order: top-k keeps every id whose score
    reaches the k-th largest; top-p keeps every id whose strictly-more-probable mass (in the softmax over
    the top-k survivors) is below top_p.
    """
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        ids = (scores >= kth).nonzero().flatten()
    else:
        ids = torch.arange(vocab, device=scores.device)
    if params.top_p < 1.0:
        kept = scores[ids].double()
        ids = ids[_mass_strictly_above_each(kept) < params.top_p]
    return ids


def filter_mask(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`candidates` for every row of scores [B, V], as a bool mask [B, V]."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        keep[row, candidates(scores[row], params)] = True
    return keep


def sample_next(
    logits: torch.Tensor, params: SamplingParams, seed: int, positions: torch.Tensor
) -> torch.LongTensor:
    """The next token per row of logits [B, V]: argmax at temperature 0 (lowest id on ties), otherwise
    `argmax(logits/T + G)` over the top-k/top-p-filtered ids (`candidates`; lowest id on ties).
    `positions[b]` is the absolute position of the token being generated for row b. Noise is drawn only
    for the head of each row's order, where the filtered set lies (see `_sample_from_head`)."""
    if logits.dim() != 2:
        raise ValueError("logits must be [batch, vocab]")
    positions = torch.as_tensor(positions, dtype=torch.int64, device=logits.device)
    if positions.shape != (logits.shape[0],):
        raise ValueError("positions must have one entry per row of logits")
    scores = logits.float()
    if params.temperature == 0.0:
        return scores.argmax(dim=-1)
    scores = scores / params.temperature
    if params.top_k == 0 and params.top_p == 1.0:  # nothing filtered: one vectorised draw for the batch
        return (scores + gumbel_noise(seed, positions, scores.shape[-1])).argmax(dim=-1)
    return _sample_from_head(scores, params, seed, positions, _SAMPLE_HEAD)


def _sample_from_head(
    scores: torch.Tensor, params: SamplingParams, seed: int, positions: torch.Tensor, head: int
) -> torch.LongTensor:
    """`sample_next` for temperature-scaled scores [B, V] from each row's `head` best ids, for the whole
    batch at once, instead of a sort of the whole vocabulary per row.

    The filtered set is a prefix of the descending order (ties ordered by ascending id, as `candidates`
    sorts them), and the top-p test of an id needs only the mass of the ids before it: the head gives
    both exactly once it reaches past the set, i.e. when the ids below the head are surely excluded
    (top-k: the head's last score is below the k-th; top-p: the mass strictly above the head's last
    score already reaches top_p). Rows it cannot settle (a flat distribution with a wide nucleus) retry
    with a 16x wider head, then row by row with `_sample_by_sorting`.
    """
    count, vocab = scores.shape
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    width = min(vocab, max(head, top_k + 1))
    head_scores, head_ids = torch.topk(scores, width, dim=-1)
    # descending scores, tied ids in ascending order: the order `_mass_strictly_above_each` sums in
    head_ids, by_id = head_ids.sort(dim=-1)
    head_scores, order = head_scores.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
    head_ids = head_ids.gather(-1, order)
    whole = width == vocab
    keep = torch.ones_like(head_scores, dtype=torch.bool)
    settled = torch.ones(count, dtype=torch.bool, device=scores.device)
    hopeless = torch.zeros_like(settled)
    if top_k:
        kth = head_scores[:, top_k - 1 : top_k]
        keep &= head_scores >= kth
        settled &= head_scores[:, -1] < kth.squeeze(1)  # every id that reaches the k-th is in the head
    if params.top_p < 1.0:
        if top_k:
            probs = torch.softmax(torch.where(keep, head_scores.double(), float("-inf")), dim=-1)
        else:
            probs = torch.softmax(scores.double(), dim=-1).gather(-1, head_ids)
        before = torch.cumsum(probs, dim=-1) - probs
        index = torch.arange(width, device=scores.device).expand(count, -1)
        group_start = torch.ones_like(keep)
        group_start[:, 1:] = head_scores[:, 1:] != head_scores[:, :-1]
        starts = torch.cummax(torch.where(group_start, index, 0), dim=-1).values
        strictly_above = before.gather(-1, starts)  # tied ids share the mass above their group
        keep &= strictly_above < params.top_p
        if not top_k:  # ids below the head have at least the last head id's mass above them
            settled = strictly_above[:, -1] >= params.top_p
            # a row the wider head cannot settle either (its next ids weigh at most the last one each)
            # goes straight to the sort
            wider_mass = before[:, -1] + probs[:, -1] * (width * _HEAD_GROWTH - width + 1)
            hopeless = ~settled & (wider_mass < params.top_p)
    if whole:
        settled[:] = True
    perturbed = head_scores + gumbel_pairs(seed, positions.unsqueeze(1), head_ids)
    perturbed = torch.where(keep, perturbed, float("-inf"))
    best = perturbed.max(dim=-1, keepdim=True).values
    chosen = torch.where(perturbed == best, head_ids, vocab).min(dim=-1).values
    if width * _HEAD_GROWTH > vocab // _HEAD_GROWTH:  # a wider head would be no small part of the row
        hopeless = ~settled
    for rows, retry in ((settled | hopeless).logical_not(), _sample_from_head), (hopeless, _sample_by_sorting):
        rows = rows.nonzero().flatten()
        if rows.numel():
            chosen[rows] = retry(scores[rows], params, seed, positions[rows], width * _HEAD_GROWTH)
    return chosen


def _sample_by_sorting(
    scores: torch.Tensor, params: SamplingParams, seed: int, positions: torch.Tensor, head: int = 0
) -> torch.LongTensor:
    """`sample_next` row by row from `candidates` (a sort of the whole row): the reference the head
    path reproduces, and its fallback for the rows it cannot settle."""
    chosen = []
    for row in range(scores.shape[0]):
        ids = candidates(scores[row], params)
        perturbed = scores[row, ids] + gumbel_at(seed, int(positions[row]), ids)
        chosen.append(ids[perturbed.argmax()])
    return torch.stack(chosen)


@dataclass(frozen=True)
class SamplingCheck:
    """The verdict on a run of sampled tokens, with the figures behind it.

    `score_gaps[i]`: how far (in logit units, i.e. scaled back by T) the claimed token's perturbed score
    falls short of the best surely-eligible one (temperature 0: of the largest logit); negative when it
    is the best by that much. `in_filter[i]`: whether it lies in the top-k/top-p set within the margin.
    A position fails when its gap exceeds `margin` or it is outside the filtered set.
    """

    ok: bool
    first_failure: int | None
    score_gaps: tuple[float, ...]
    in_filter: tuple[bool, ...]
    margin: float
    reason: str | None = None


def verify_sampling(
    logits: torch.Tensor,
    tokens: Sequence[int] | torch.Tensor,
    params: SamplingParams,
    seed: int,
    first_position: int,
    margin: float | None = None,
) -> SamplingCheck:
    """Check claimed tokens against replayed logits [N, V]; row i predicts tokens[i] at
    position first_position + i. `margin` (logit units) defaults to thresholds.SAMPLING.logit_margin."""
    margin = SAMPLING.logit_margin if margin is None else float(margin)
    if logits.dim() != 2:
        raise ValueError("logits must be [positions, vocab]")
    tokens = torch.as_tensor(tokens, dtype=torch.int64, device=logits.device).reshape(-1)
    count, vocab = logits.shape
    if tokens.numel() != count:
        raise ValueError(f"{tokens.numel()} tokens but {count} rows of logits")
    if count == 0:
        return SamplingCheck(True, None, (), (), margin)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError("a claimed token id is outside the vocabulary")
    if params.temperature == 0.0:
        rows = torch.arange(count, device=logits.device)
        gaps = logits.max(dim=-1).values.double() - logits[rows, tokens].double()
        in_filter = torch.ones(count, dtype=torch.bool, device=logits.device)
        return _verdict(gaps, in_filter, margin, "greedy")

    gaps, possibly = [], []
    for start in range(0, count, _VERIFY_ROWS):  # row blocks bound the [rows, V] float64 temporaries
        block_gaps, block_possibly = _gumbel_gaps(
            logits[start : start + _VERIFY_ROWS], tokens[start : start + _VERIFY_ROWS], params, seed,
            first_position + start, margin,
        )
        gaps.append(block_gaps)
        possibly.append(block_possibly)
    return _verdict(torch.cat(gaps), torch.cat(possibly), margin, "gumbel")


def _gumbel_gaps(
    logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams, seed: int, first_position: int,
    margin: float, head: int = _VERIFY_HEAD, positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_gumbel_gaps_exact` from each row's `head` best ids instead of a sort of the whole vocabulary.

    Every id the gap needs (the surely-eligible ones) is a prefix of the descending order, and the top-p
    tests only need the probability mass above a threshold: both are exact from the head of the order
    whenever the head's own mass already settles them (then no id below the head can be surely eligible,
    and a claimed token below it is surely outside the nucleus). Rows the head cannot settle (a flat
    distribution with a nucleus wider than the head) are computed by `_gumbel_gaps_exact`. Noise is
    hashed only for the ids that can be the best one, and for the claimed token.
    """
    count, vocab = logits.shape
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    filtered_p = params.top_p < 1.0
    if not top_k and not filtered_p:  # nothing filtered: every id can be the best, all the noise is needed
        return _gumbel_gaps_exact(logits.double(), tokens, params, seed, first_position, margin, positions=positions)
    width = min(vocab, max(head, top_k + 1))
    temperature = params.temperature
    slack = margin / temperature
    rows = torch.arange(count, device=logits.device)
    if positions is None:
        positions = first_position + rows
    head_logits, head_ids = torch.topk(logits.float(), width, dim=-1)  # descending; same order as logits/T
    head_scores = head_logits.double() / temperature
    claimed = logits[rows, tokens].double() / temperature
    possibly = torch.ones(count, dtype=torch.bool, device=logits.device)
    surely = torch.ones_like(head_scores, dtype=torch.bool)
    settled = torch.ones(count, dtype=torch.bool, device=logits.device)
    if top_k:
        kth = head_scores[:, top_k - 1]
        possibly &= claimed + slack >= kth
        surely &= head_scores - slack > head_scores[:, top_k].unsqueeze(1)
    if filtered_p:
        log_top_p = math.log(params.top_p)
        if top_k:
            scores = logits.double() / temperature
            scores = torch.where(scores + slack >= kth.unsqueeze(1), scores, float("-inf"))
            head_masked = torch.where(head_scores + slack >= kth.unsqueeze(1), head_scores, float("-inf"))
            normaliser = torch.logsumexp(scores, dim=-1, keepdim=True)
            del scores
            # the honest normaliser holds at least the k best ids: see _gumbel_gaps_exact
            understated = normaliser - torch.logsumexp(head_scores[:, :top_k], dim=-1, keepdim=True)
        else:
            # The softmax normaliser over the whole vocabulary without a float64 copy of it: float32 terms
            # (relative error ~1e-6, far inside the slack) summed in float64.
            head_masked = head_scores
            understated = 0.0
            top = head_logits[:, :1]
            terms = torch.exp((logits.float() - top) / temperature)
            normaliser = top.double() / temperature + torch.log(terms.sum(dim=-1, keepdim=True, dtype=torch.float64))
            del terms
        head_probs = torch.exp(head_masked - normaliser)  # 0 for ids top-k excluded
        # cumulative[:, m] = mass of the m best head ids; head_mass = all of the head
        cumulative = torch.cat([torch.zeros_like(head_probs[:, :1]), torch.cumsum(head_probs, dim=-1)], dim=-1)
        head_mass = cumulative[:, -1]
        ascending = torch.flip(head_masked, [-1]).contiguous()

        def mass_above(thresholds: torch.Tensor) -> torch.Tensor:
            """Head mass strictly above each threshold [rows, Q] (exact when threshold >= the head's last score)."""
            not_above = torch.searchsorted(ascending, thresholds.contiguous(), right=True)
            return cumulative.gather(-1, width - not_above)

        last = head_scores[:, -1]
        claimed_cut = claimed + slack
        claimed_above = mass_above(claimed_cut.unsqueeze(1)).squeeze(1)
        claimed_inside = claimed_cut >= last
        # below the head: the whole head's mass is above it, and that may already be too much
        claimed_excluded = torch.log(head_mass) - slack >= log_top_p
        possibly &= torch.where(claimed_inside, torch.log(claimed_above) - slack < log_top_p, ~claimed_excluded)
        # v is surely inside when the mass of the OTHER ids that may rank above it (v's drift against v)
        # stays below top_p; v's own probability must not count, or the last id of a nucleus never is.
        others = (mass_above(head_scores - slack) - head_probs).clamp_min(0.0)
        surely_p = torch.log(others) + understated + slack < log_top_p
        surely &= surely_p
        # ids whose threshold lies below the head's last score got only the head's part of that mass:
        # a row where such an id still looks surely eligible needs the ids below the head
        settled &= ~(surely_p & (head_scores - slack < last.unsqueeze(1))).any(dim=-1)
        # ids below the head are never surely eligible when even the head's mass exceeds the bound
        settled &= torch.log(head_mass) + slack >= log_top_p
        settled &= claimed_inside | claimed_excluded
    perturbed_head = head_scores + gumbel_pairs(seed, positions.unsqueeze(1), head_ids).double()
    best = torch.where(surely, perturbed_head, float("-inf")).max(dim=-1).values
    perturbed_claimed = claimed + gumbel_pairs(seed, positions, tokens).double()
    gaps = (best - perturbed_claimed) * temperature
    unsettled = (~settled).nonzero().flatten()
    if unsettled.numel():
        if width * _HEAD_GROWTH < vocab:  # a wider head for the few flat rows, then the full sort
            retry = _gumbel_gaps(
                logits[unsettled], tokens[unsettled], params, seed, 0, margin, head=width * _HEAD_GROWTH,
                positions=positions[unsettled],
            )
        else:
            retry = _gumbel_gaps_exact(
                    logits[unsettled].double(), tokens[unsettled], params, seed, 0, margin, positions=positions[unsettled]
            )
        gaps[unsettled], possibly[unsettled] = retry
    return gaps, possibly


def _gumbel_gaps_exact(
    scores: torch.Tensor, tokens: torch.Tensor, params: SamplingParams, seed: int, first_position: int, margin: float,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score gaps in logit units, whether each claimed token may lie in the filtered set) for rows of
    float64 logits, from a sort and the noise of the whole vocabulary; see verify_sampling. Row i is
    generated at `positions[i]` (default first_position + i)."""
    count, vocab = scores.shape
    rows = torch.arange(count, device=scores.device)
    temperature = params.temperature
    scores = scores / temperature
    slack = margin / temperature
    possibly = torch.ones(count, dtype=torch.bool, device=scores.device)  # the claimed token
    surely = torch.ones_like(scores, dtype=torch.bool)  # every id that was certainly eligible
    claimed = scores[rows, tokens]
    if 0 < params.top_k < vocab:
        top = torch.topk(scores, min(params.top_k + 1, vocab), dim=-1).values
        kth = top[:, params.top_k - 1]
        possibly &= claimed + slack >= kth
        surely &= scores - slack > top[:, params.top_k].unsqueeze(1)
        eligible = scores + slack >= kth.unsqueeze(1)  # generous normaliser for top-p
        # The honest normaliser sums at least the k best ids; where the generous one holds more, masses
        # measured against it are scaled up by the ratio before an id may count as surely inside.
        understated = torch.logsumexp(torch.where(eligible, scores, float("-inf")), dim=-1, keepdim=True)
        understated = understated - torch.logsumexp(top[:, : params.top_k], dim=-1, keepdim=True)
    else:
        eligible = torch.ones_like(scores, dtype=torch.bool)
        understated = 0.0
    if params.top_p < 1.0:
        log_top_p = math.log(params.top_p)
        masked = torch.where(eligible, scores, float("-inf"))
        above_claimed = _mass_strictly_above(masked, (claimed + slack).unsqueeze(1)).squeeze(1)
        possibly &= torch.log(above_claimed) - slack < log_top_p
        others_above = (_mass_strictly_above(masked, scores - slack) - torch.softmax(masked, dim=-1)).clamp_min(0.0)
        surely &= torch.log(others_above) + understated + slack < log_top_p
    if positions is None:
        positions = torch.arange(count, device=scores.device) + first_position
    perturbed = scores + gumbel_noise(seed, positions, vocab).double()
    best = torch.where(surely, perturbed, float("-inf")).max(dim=-1).values
    return (best - perturbed[rows, tokens]) * temperature, possibly


def _verdict(gaps: torch.Tensor, in_filter: torch.Tensor, margin: float, mode: str) -> SamplingCheck:
    passed = (gaps <= margin) & in_filter
    failures = (~passed).nonzero().flatten()
    first = int(failures[0]) if failures.numel() else None
    reason = None
    if first is not None:
        if not bool(in_filter[first]):
            reason = f"token {first} lies outside the top-k/top-p set"
        elif mode == "greedy":
            reason = f"token {first} is not the argmax (logit gap {float(gaps[first]):.4g} > {margin})"
        else:
            reason = f"token {first} is not the Gumbel argmax (score gap {float(gaps[first]):.4g} > {margin})"
    return SamplingCheck(
        ok=first is None,
        first_failure=first,
        score_gaps=tuple(float(g) for g in gaps.cpu()),
        in_filter=tuple(bool(b) for b in in_filter.cpu()),
        margin=margin,
        reason=reason,
    )


def _mass_strictly_above_each(scores: torch.Tensor) -> torch.Tensor:
    """For scores [K] (float64), the softmax mass of the ids scoring strictly more than each one."""
    probs = torch.softmax(scores, dim=-1)
    ordered, order = torch.sort(scores, descending=True, stable=True)
    sorted_probs = probs[order]
    before = torch.cumsum(sorted_probs, 0) - sorted_probs  # mass of everything sorted before
    # Tied scores get the mass before the first of their group (strictly higher scores only).
    index = torch.arange(ordered.numel(), device=scores.device)
    starts = torch.where(torch.cat([ordered.new_ones(1, dtype=torch.bool), ordered[1:] != ordered[:-1]]), index, 0)
    starts = torch.cummax(starts, 0).values
    mass = torch.empty_like(before)
    mass[order] = before[starts]
    return mass


def _mass_strictly_above(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per row, the softmax(scores) probability mass of ids whose score is strictly above each threshold.

    scores [B, V] (-inf = excluded), thresholds [B, Q] -> [B, Q] float64. Suffix sums over the ascending
    sort, so tiny masses keep their precision.
    """
    scores = scores.double()
    probs = torch.softmax(scores, dim=-1)
    ordered, order = torch.sort(scores, dim=-1, stable=True)
    sorted_probs = probs.gather(-1, order)
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_probs, [-1]), -1), [-1])
    suffix = torch.cat([suffix, torch.zeros_like(suffix[:, :1])], dim=-1)
    index = torch.searchsorted(ordered.contiguous(), thresholds.double().contiguous(), right=True)
    return suffix.gather(-1, index)
