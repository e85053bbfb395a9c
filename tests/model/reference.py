"""The models' computations written out directly from their parameters, the slow and obvious way.

Each function reads only ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm`` parameters of a built model and
recomputes what the model's own code (``recbole_elastic/model/``) computes, without calling that code: per-head
attention with an explicit softmax matrix, the interest memory scored over all ``n_keys ** 2`` slots, the readout
taken from the full per-position output, CausalELASTIC's running softmax as one ordinary softmax per prefix. A
model that disagrees with these has a bug (or these have one). Everything here assumes eval mode (no dropout,
BatchNorm on its running statistics), except where attention dropout's keep factors are passed in.
"""

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def layer_norm(x, norm):
    return F.layer_norm(x, (x.size(-1),), norm.weight, norm.bias, norm.eps)


def attention_heads(attention, queries, context, context_mask=None, keep=None, bias=None):
    """Per head, softmax(q_h k_h^T / sqrt(d) + bias_h) over the unmasked context (``bias`` ``[heads, Q, C]`` if
    given), each weight times ``keep`` ``[B, heads, Q, C]`` if given (attention dropout's keep factors), times v_h;
    the heads concatenated ``[B, Q, H]``, before the output projection."""
    heads = attention.n_heads
    batch_size, n_queries, hidden = queries.shape
    d = hidden // heads
    out = torch.zeros(batch_size, n_queries, hidden)
    q_all, k_all, v_all = attention.query(queries), attention.key(context), attention.value(context)
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        scores = q_all[..., part] @ k_all[..., part].transpose(1, 2) / math.sqrt(d)  # [B, Q, C]
        if bias is not None:
            scores = scores + bias[h]
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if keep is not None:
            weights = weights * keep[:, h]
        out[..., part] = weights @ v_all[..., part]
    return out


def softmax_attention(attention, queries, context, context_mask=None):
    """Multi-head softmax attention of ``queries`` ``[B, Q, H]`` over ``context`` ``[B, C, H]``, explicitly:
    weights = softmax(q_h k_h^T / sqrt(d)) per head over the unmasked context, out = weights v_h, heads
    concatenated, output projection, residual, LayerNorm."""
    attended = attention_heads(attention, queries, context, context_mask)
    return layer_norm(queries + attention.dense(attended), attention.LayerNorm)


def feed_forward(ffn, x, activation, norm_first=False):
    """RecBole's position-wise FFN: LayerNorm(x + W2 act(W1 x)); pre-LN: x + W2 act(W1 LayerNorm(x))."""
    if norm_first:
        return x + ffn.dense_2(ACTIVATIONS[activation](ffn.dense_1(layer_norm(x, ffn.LayerNorm))))
    return layer_norm(x + ffn.dense_2(ACTIVATIONS[activation](ffn.dense_1(x))), ffn.LayerNorm)


def dispatcher_block(block, sequence, interests, mask, activation="gelu"):
    """One LDA block at every position: interests attend to the unmasked sequence (aggregate), then every
    position attends to the k updated interests (dispatch). Returns the sequence ``[B, N, H]`` and interests."""
    interests = softmax_attention(block.aggregate, interests, sequence, mask)
    interests = feed_forward(block.aggregate_ffn, interests, activation)
    sequence = softmax_attention(block.dispatch, sequence, interests)
    sequence = feed_forward(block.dispatch_ffn, sequence, activation)
    return sequence, interests


def memory_query(memory, summary):
    """The memory's queries ``[B, heads, key_dim]``: two-layer MLP, then BatchNorm on its running statistics."""
    first, _, second = memory.query_net
    query = second(F.gelu(first(summary)))
    norm = memory.query_norm
    if memory.query_norm_kind == "layer":  # each head's query over its own key_dim features
        query = query.view(summary.size(0), memory.n_heads, memory.key_dim)
        centred = query - query.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias
    if norm is not None:
        query = (query - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    return query.view(summary.size(0), memory.n_heads, memory.key_dim)


def all_slot_scores(memory, query):
    """Score of every one of the ``n_keys ** 2`` slots ``[B, heads, n_keys ** 2]``: slot ``i * n_keys + j``
    scores ``q_1 . k1_i + q_2 . k2_j`` (the query's halves against the head's two sub-key tables)."""
    half = memory.key_dim // 2
    first = torch.einsum("bhd,hnd->bhn", query[..., :half], memory.sub_keys[:, 0])
    second = torch.einsum("bhd,hnd->bhn", query[..., half:], memory.sub_keys[:, 1])
    return (first[..., :, None] + second[..., None, :]).flatten(2)


def memory_tokens(memory, query):
    """Brute-force retrieval: top-k of all slots per head, softmax over those k scores, weighted sum of the
    value rows. Returns the interest tokens ``[B, heads, H]`` and the slots ``[B, heads, topk]``."""
    scores, slots = all_slot_scores(memory, query).topk(memory.topk, dim=-1)
    weights = torch.softmax(scores, dim=-1)
    tokens = (weights[..., None] * memory.values.weight[slots]).sum(-2)
    return tokens, slots


def embed(model, item_seq):
    positions = model.position_embedding.weight[: item_seq.size(1)]
    return layer_norm(model.item_embedding.weight[item_seq] + positions, model.LayerNorm)


def elastic_retrieval(model, item_seq):
    """ELASTIC's input ``[B, N, H]``, its mask ``[B, N]`` (padding False, position 0 always True) and the
    interest memory's tokens ``[B, k, H]`` and slots ``[B, k, topk]`` for the masked mean of the input."""
    mask = item_seq != 0
    mask[:, 0] = True
    sequence = embed(model, item_seq)
    weights = mask.unsqueeze(-1).float()
    summary = (sequence * weights).sum(1) / weights.sum(1)
    tokens, slots = memory_tokens(model.interest_memory, memory_query(model.interest_memory, summary))
    return sequence, mask, tokens, slots


def elastic_all_positions(model, item_seq):
    """ELASTIC's last-block output at every position ``[B, N, H]``."""
    if model.use_interest_memory:
        sequence, mask, interests, _ = elastic_retrieval(model, item_seq)
    else:
        mask = item_seq != 0
        mask[:, 0] = True
        sequence = embed(model, item_seq)
        interests = model.shared_interests.expand(item_seq.size(0), -1, -1)
    for block in model.dispatcher_blocks:
        sequence, interests = dispatcher_block(block, sequence, interests, mask, model.hidden_act)
    return sequence


def linrec_all_positions(model, item_seq, causal=False):
    """LinRec's last-layer output at every position ``[B, N, H]``, with the N x N matrix Q_hat K_hat^T (lower
    triangular with ``causal``: CausalLinRec, whose padding is always masked)."""
    hidden_states = embed(model, item_seq)
    key_mask = item_seq != 0 if causal or not model.include_padding else None
    encoder = model.trm_encoder
    for attention, ffn in zip(encoder.attention_layers, encoder.feed_forward_layers):
        heads, hidden = attention.n_heads, hidden_states.size(-1)
        d = hidden // heads
        q_all, k_all = attention.query(hidden_states), attention.key(hidden_states)
        v_all = attention.value(hidden_states)
        out = torch.zeros_like(hidden_states)
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            q_hat = F.elu(q_all[..., part])
            q_hat = q_hat / q_hat.norm(dim=-1, keepdim=True)
            k_hat = F.elu(k_all[..., part])
            k_hat = k_hat / k_hat.norm(dim=-1, keepdim=True)
            scores = q_hat @ k_hat.transpose(1, 2)  # [B, N, N]
            if causal:
                scores = scores.tril()
            if key_mask is not None:
                scores = scores * key_mask[:, None, :]
            out[..., part] = scores @ v_all[..., part] / math.sqrt(d)
        hidden_states = layer_norm(hidden_states + attention.dense(out), attention.LayerNorm)
        hidden_states = feed_forward(ffn, hidden_states, model.hidden_act)
    return hidden_states


def sequence_output(model, item_seq, item_seq_len):
    """The model's output ``[B, H]``: its all-positions output read at position ``item_seq_len - 1``."""
    if hasattr(model, "dispatcher_blocks"):
        all_positions = elastic_all_positions(model, item_seq)
    else:
        all_positions = linrec_all_positions(model, item_seq, causal=hasattr(model, "forward_all_positions"))
    return all_positions[torch.arange(item_seq.size(0)), item_seq_len - 1]


def causal_aggregate(aggregate, queries, interests, sequence, mask, keep=None):
    """CausalELASTIC's aggregate at every position t, one prefix at a time: the k position-independent queries
    ``[k, H]`` attend with softmax to ``sequence[:, :t + 1]`` (padding masked; ``keep`` ``[B, heads, k, N]``
    scales each key's weight), the result goes through the output projection and is added to position t's own
    interests ``interests[:, t]``, then LayerNorm. ``interests`` ``[B, N, k, H]`` -> ``[B, N, k, H]``. With
    recency slopes, key s's score at position t is lowered by slope * (t - s), as ALiBi writes it."""
    batch_size, length = mask.shape
    queries = queries.expand(batch_size, -1, -1)
    out = torch.zeros_like(interests)
    for t in range(length):
        prefix_keep = None if keep is None else keep[..., : t + 1]
        bias = None
        if aggregate.recency_slopes is not None:
            distance = t - torch.arange(t + 1, dtype=torch.float)  # [t + 1]
            bias = -aggregate.recency_slopes.unsqueeze(-1) * distance  # [heads, k, t + 1]
        attended = attention_heads(aggregate, queries, sequence[:, : t + 1], mask[:, : t + 1], prefix_keep, bias)
        out[:, t] = layer_norm(interests[:, t] + aggregate.dense(attended), aggregate.LayerNorm)
    return out


def causal_dispatcher_block(block, sequence, interests, mask, activation="gelu", interest_ffn=True):
    """One causal LDA block at every position t: the aggregate over the prefix up to t updates position t's
    interests (then the FFN if ``interest_ffn``), and position t alone attends to its own k interests (dispatch),
    then the FFN. Returns the sequence ``[B, N, H]`` and interests ``[B, N, k, H]``."""
    interests = causal_aggregate(block.aggregate, block.interest_queries, interests, sequence, mask)
    if interest_ffn:
        interests = feed_forward(block.aggregate_ffn, interests, activation)
    dispatched = [
        softmax_attention(block.dispatch, sequence[:, t : t + 1], interests[:, t])[:, 0]
        for t in range(sequence.size(1))
    ]
    return feed_forward(block.dispatch_ffn, torch.stack(dispatched, dim=1), activation), interests


def causal_elastic_all_positions(model, item_seq, interest_ffn=True):
    """CausalELASTIC's last-block output at every position ``[B, N, H]`` (N within the position table): position t
    retrieves its interests with the masked mean of the input up to t (padded positions get zeros), then each
    block as :func:`causal_dispatcher_block`."""
    mask = item_seq != 0
    mask[:, 0] = True
    sequence = embed(model, item_seq)
    batch_size, length, hidden = sequence.shape
    if model.use_interest_memory:
        memory = model.interest_memory
        interests = torch.zeros(batch_size, length, model.n_interests, hidden)
        for t in range(length):
            weights = mask[:, : t + 1].unsqueeze(-1).float()
            summary = (sequence[:, : t + 1] * weights).sum(1) / weights.sum(1)
            tokens, _ = memory_tokens(memory, memory_query(memory, summary))
            interests[:, t] = torch.where(mask[:, t, None, None], tokens, 0.0)
    else:
        interests = model.shared_interests.expand(batch_size, length, -1, -1)
    for block in model.dispatcher_blocks:
        sequence, interests = causal_dispatcher_block(block, sequence, interests, mask, model.hidden_act, interest_ffn)
    return sequence


def chunked_elastic_all_positions(model, items, activation="gelu"):
    """ChunkedELASTIC's output ``[L, H]`` at every position of one sequence ``items`` (no padding), position by
    position: boundary j's interests from the items before position C j (retrieval from their mean embedding, 0 for
    j = 0; per block, one ordinary softmax of the k queries over the block's input before C j, with the recency
    bias if the model has one), then position t attends to boundary t // C's interests and its last C items.
    Pre-LN (``norm_first``): every stage reads LayerNorm of its input (the dispatch's for the items, its
    ``interest_norm`` for the interests) and adds to it unnormalised; the output is LayerNorm of the last block's."""
    chunk, hidden, pre = model.chunk_size, model.hidden_size, model.norm_first
    x = embed(model, torch.tensor([items]))[0]  # [L H]
    length = len(items)
    interests = []
    for j in range((length - 1) // chunk + 1):
        if not model.use_interest_memory:
            interests.append(model.shared_interests)
            continue
        summary = x[: chunk * j].mean(0) if j else torch.zeros(hidden)
        memory = model.interest_memory
        interests.append(memory_tokens(memory, memory_query(memory, summary.unsqueeze(0)))[0][0])
    for block in model.dispatcher_blocks:
        aggregate, dispatch = block.aggregate, block.dispatch
        heads = aggregate.n_heads
        d = hidden // heads
        queries = aggregate.query(aggregate.interest_queries)  # [k H]
        block_input = layer_norm(x, dispatch.LayerNorm) if pre else x
        keys, values = dispatch.key(block_input), dispatch.value(block_input)  # [L H]: both stages read them
        updated = []
        for j, tokens in enumerate(interests):
            attended = torch.zeros_like(tokens)
            for h in range(heads if j else 0):
                part = slice(h * d, (h + 1) * d)
                scores = queries[:, part] @ keys[: chunk * j, part].T / math.sqrt(d)  # [k, C j]
                if aggregate.recency_slopes is not None:  # - slope * (t - s), t dropped: + slope * s
                    scores = scores + aggregate.recency_slopes[h].unsqueeze(1) * torch.arange(chunk * j)
                attended[:, part] = torch.softmax(scores, dim=-1) @ values[: chunk * j, part]
            tokens = tokens + aggregate.dense(attended)
            tokens = tokens if pre else layer_norm(tokens, aggregate.LayerNorm)
            if not isinstance(block.aggregate_ffn, torch.nn.Identity):
                tokens = feed_forward(block.aggregate_ffn, tokens, activation, pre)
            updated.append(tokens)
        interests = updated
        outputs = []
        for t in range(length):
            context = interests[t // chunk]
            if pre:
                context = layer_norm(context, dispatch.interest_norm)
            if dispatch.local:
                context = torch.cat([context, block_input[max(0, t - chunk + 1) : t + 1]])
            if pre:
                attended = attention_heads(dispatch, block_input[t].view(1, 1, -1), context.unsqueeze(0))
                outputs.append(x[t] + dispatch.dense(attended)[0, 0])
            else:
                outputs.append(softmax_attention(dispatch, x[t].view(1, 1, -1), context.unsqueeze(0))[0, 0])
        x = feed_forward(block.dispatch_ffn, torch.stack(outputs), activation, pre)
    return layer_norm(x, model.output_norm) if pre else x
