"""The listening initialization of the small GaMMA's audio side (``gamma-rt train``): fixed filters, a clock,
and the rhythm banks, so that frozen (or as a start for training end to end) the fused features carry chroma,
timbre, onsets, time, and the onsets' periodogram at beat and bar rates.

Channels of each expert, d 224 with ``rhythm`` (d 48 without):
    0-11    pitch classes over 200-5000 Hz        12-15  band energies       16-19  band onsets
    20-31   sharp pitch classes over 1-5 kHz      32     the clock (RAMP)
    33-128  the beat bank's cos/sin               129-190  the bar bank's cos/sin
    191-    random mel projections (timbre), as the d 48 experts' 33-47
With ``rhythm`` the experts own disjoint channels (rhythm_split): the temporal expert writes both banks
(33-190) and the router's two gate channels (the last two) and nothing else, the global expert everything
else (listening_channels); the router gives the first BANK_TOKENS tokens of every window to the banks and
the rest to the listening channels (route_bank_tokens).
"""

from __future__ import annotations

import numpy as np

RAMP = 32  # the experts' clock channel (see listen_init)
# The rhythm banks (rhythm_init): log-spaced frequencies (lo Hz, hi Hz, count) of the onsets' periodogram,
# beats of 54-198 BPM and bars (and half notes) of 12-72 per minute, both in the temporal expert.
# Each bank has channels of its own (cos, sin of each frequency), the beat bank's first, so the router's mix
# of the two experts keeps both apart from the listening channels.
BEAT_BANK_HZ = (0.9, 3.3, 48)
BAR_BANK_HZ = (0.2, 1.2, 31)
RHYTHM_SHARPNESS = 0.3  # small: the attention weights stay near-linear in the onset strength
RHYTHM_GAIN = 30.0
RHYTHM_NORM_GAIN = 1.0  # the rhythm expert's final layer norm on the banks (rhythm_split)
RHYTHM_POOL = 6  # 8.3 tokens a second at the projector: beats up to 250 BPM are resolved
BANKS_END = RAMP + 1 + 2 * (BEAT_BANK_HZ[2] + BAR_BANK_HZ[2])  # the first channel above both banks
RECTIFIER_DIRECTIONS = 6  # per bank frequency, projector rows that sum to its magnitude (phase-free)
# The router's split by token (route_bank_tokens): the first BANK_TOKENS tokens of every window carry the banks
# alone and the rest the listening channels alone (0: the even mix of both on every token). The banks are
# nearly one vector per song; on every token they crowd the listening channels out of the decoder's view.
BANK_TOKENS = 12
ROUTER_SHARPNESS = 25.0  # the gate's logit per unit of (step - zero) after the rhythm expert's norm
GATE_NORM_GAIN = 4.0  # that norm's gain on the step and zero channels


def bank_channels() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per bank ("beat", "bar"; both the temporal expert's), (frequencies Hz, its cos/sin channels interleaved)."""
    out, first = {}, RAMP + 1
    for name, bank in (("beat", BEAT_BANK_HZ), ("bar", BAR_BANK_HZ)):
        out[name] = np.geomspace(*bank), np.arange(first, first + 2 * bank[2])
        first += 2 * bank[2]
    return out


def _mel_centres(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each mel bin of the front end."""
    from gamma_rt.runtime.mel import mel_filters

    fb = mel_filters(cfg.audio.n_mels, cfg.audio.sample_rate, cfg.audio.n_fft)  # (n_mels, n_fft // 2 + 1)
    hz = np.fft.rfftfreq(cfg.audio.n_fft, 1 / cfg.audio.sample_rate)
    return hz[np.argmax(fb, axis=1)]


def _chroma(cfg, lo: float, hi: float, width: float) -> np.ndarray:
    """(12, n_mels) pitch-class filters, zero-mean over the classes: how much of each mel bin's passband
    (its STFT bins, by the filter's weights) lies within ``width`` semitones of each class, in [lo, hi) Hz."""
    from gamma_rt.runtime.mel import mel_filters

    fb = mel_filters(cfg.audio.n_mels, cfg.audio.sample_rate, cfg.audio.n_fft)  # (n_mels, n_fft // 2 + 1)
    hz = np.maximum(np.fft.rfftfreq(cfg.audio.n_fft, 1 / cfg.audio.sample_rate), 1.0)
    pitch = 12 * np.log2(hz / 440.0) + 69
    inside = (hz >= lo) & (hz < hi)
    member = np.stack([np.maximum(0, 1 - np.abs((pitch - p + 6) % 12 - 6) / width) * inside for p in range(12)])
    chroma = member @ fb.T / np.maximum(fb.sum(1), 1e-9)  # (12, n_mels)
    chroma = chroma / np.maximum(chroma.sum(1, keepdims=True), 1e-9)
    return chroma - chroma.mean(0, keepdims=True)


def listening_filters(cfg) -> np.ndarray:
    """(32, n_mels, 3) conv1 filters: 12 pitch classes over 200-5000 Hz, 4 band energies, 4 band onsets (next
    frame minus previous), 12 sharp pitch classes over 1-5 kHz, where the STFT's 40 Hz bins part a semitone
    (the major/minor third is heard there)."""
    f = np.maximum(_mel_centres(cfg), 1.0)
    bands = np.stack([(f >= lo) & (f < hi) for lo, hi in ((0, 200), (200, 1000), (1000, 4000), (4000, 9000))])
    bands = bands / np.maximum(bands.sum(1, keepdims=True), 1)
    out = np.zeros((32, len(f), 3))
    out[:12, :, 1] = _chroma(cfg, 200, 5000, 0.5) * 8.0
    out[12:16, :, 1] = bands
    out[16:20, :, 2], out[16:20, :, 0] = bands * 4.0, -bands * 4.0
    out[20:32, :, 1] = _chroma(cfg, 1000, 5000, 0.35) * 6.0
    return out


def listen_init(model, cfg, rhythm: bool = False) -> None:
    """Give both experts the listening filters and near-zero residual branches (see the module docstring);
    ``rhythm``: and the rhythm banks, a periodogram of the onsets at beat and bar rates (rhythm_init)."""
    import torch

    from ...weights import sinusoids

    filters = torch.tensor(listening_filters(cfg), dtype=torch.float32)
    with torch.no_grad():
        for expert in (model.temporal_encoder, model.global_encoder):
            d = expert.conv1.weight.shape[0]
            expert.conv1.weight.normal_(0, 0.02)
            expert.conv1.weight[: len(filters)] = filters
            expert.conv1.bias.zero_()
            expert.conv2.weight.zero_()
            expert.conv2.weight[torch.arange(d), torch.arange(d), 1] = 1.0
            expert.conv2.bias.zero_()
            positions = 0.1 * sinusoids(*expert.embed_positions.weight.shape)
            # A clock: channel RAMP is silent in conv1 and rises 0 -> 2 over the window, so every token knows
            # its time (an event's second is where the instrument's tokens begin or end).
            expert.conv1.weight[RAMP] = 0.0
            positions[:, RAMP] = torch.linspace(0, 2, positions.shape[0])
            expert.embed_positions.weight.copy_(positions)
            for layer in expert.layers:
                layer.self_attn.out_proj.weight.normal_(0, 0.01)
                layer.fc2.weight.normal_(0, 0.01)
        for block in model.fusion.blocks:
            block.injector.out_proj.weight.normal_(0, 0.01)
            block.extractor.out_proj.weight.normal_(0, 0.01)
        model.fusion.ffn[2].weight.normal_(0, 0.01)
        if rhythm:
            rhythm_split(model, cfg)


def gate_channels(d: int) -> np.ndarray:
    """The rhythm expert's two channels the router reads (route_bank_tokens): a step, +1 on the window's first
    BANK_TOKENS tokens and -1 after, and a channel that is zero before the norm; the last two of d."""
    return np.array([d - 2, d - 1])


def listening_channels(d: int, bank_tokens: int = BANK_TOKENS) -> np.ndarray:
    """The channels the listening expert owns with ``rhythm`` (all but the banks'): its filters, the clock and
    the random mel projections above the banks (but the router's gate channels, with ``bank_tokens``)."""
    return np.r_[0:RAMP + 1, BANKS_END:gate_channels(d)[0] if bank_tokens else d]


def rhythm_split(model, cfg, bank_tokens: int = BANK_TOKENS) -> None:
    """``rhythm``: give the experts disjoint channels. The temporal expert becomes the rhythm banks alone
    (both, rhythm_init) and the global expert the listening channels alone; each expert's final layer norm
    passes its own channels and zeroes the rest, so the router hands the projector both, apart: evenly mixed
    on every token with ``bank_tokens`` 0, else on tokens of their own (route_bank_tokens).

    Why: one layer norm over the banks and the listening channels together lets the banks' energy set the
    listening channels' scale, token by token, and key is lost (bench/results/FINDINGS.md, the feature
    probe). Here the listening expert's layer norm sees only its own channels (and zeros), as the d 48
    experts' does, and the banks' layer norm only the banks."""
    import torch

    from ...weights import sinusoids

    filters = torch.tensor(listening_filters(cfg), dtype=torch.float32)
    d = model.global_encoder.conv1.weight.shape[0]
    owned = torch.as_tensor(listening_channels(d, bank_tokens))
    banks = bank_channels()
    freqs = np.concatenate([f for f, _ in banks.values()])
    channels = np.concatenate([c for _, c in banks.values()])
    with torch.no_grad():
        listener, rhythm = model.global_encoder, model.temporal_encoder
        listener.conv1.weight[RAMP + 1:BANKS_END] = 0.0
        positions = torch.zeros_like(listener.embed_positions.weight)
        positions[:, owned] = 0.1 * sinusoids(positions.shape[0], len(owned))
        positions[:, RAMP] = torch.linspace(0, 2, positions.shape[0])
        listener.embed_positions.weight.copy_(positions)
        for layer in listener.layers:
            layer.self_attn.out_proj.weight[RAMP + 1:BANKS_END] = 0.0
            layer.fc2.weight[RAMP + 1:BANKS_END] = 0.0
        # The listening expert's norm divides by the rms over all d channels, the banks' zeros included:
        # sqrt(owned / d) of its own channels' rms. This gain gives them the d 48 experts' scale, doubled
        # for the router's even mix (not with bank_tokens: there each token is one expert's alone).
        _own(listener, owned, (1.0 if bank_tokens else 2.0) * (len(owned) / d) ** 0.5)
        rhythm.conv1.weight.zero_()
        rhythm.conv1.weight[16:20] = filters[16:20]  # the band onsets, the periodogram's keys
        rhythm.embed_positions.weight.zero_()
        rhythm_init(rhythm, freqs, channels)
        _own(rhythm, torch.as_tensor(channels), RHYTHM_NORM_GAIN * (0.5 if bank_tokens else 1.0))
        model.fusion.router.gate.weight.zero_()
        model.fusion.router.gate.bias.zero_()
        magnitude_init(model.projector, channels)
        if bank_tokens:
            route_bank_tokens(model, bank_tokens)
        # The fusion's residual branches start at zero in the banks, so nothing leaks into them.
        for linear in _fusion_branches(model):
            linear.weight[RAMP + 1:BANKS_END] = 0.0
            linear.bias[RAMP + 1:BANKS_END] = 0.0


def route_bank_tokens(model, bank_tokens: int) -> None:
    """Make the router send the first ``bank_tokens`` tokens of every window (at the projector's pooling) to
    the rhythm expert and the rest to the listening expert, with the experts' channels disjoint (rhythm_split).

    The rhythm expert carries a step in one gate channel (+1 before, -1 after; its position table, kept
    exact through its layers) and zero in the other. Its final norm gives (x - mean) / rms * GATE_NORM_GAIN
    in both, so their difference is step * GATE_NORM_GAIN / rms: the step's sign whatever the token's
    statistics. The router's gate reads that difference, ROUTER_SHARPNESS to the logit: softmax weights
    within 1e-4 of 0 or 1 while the rhythm expert's rms stays under 10 (it is 1-6 on training songs)."""
    import torch

    rhythm = model.temporal_encoder
    d = rhythm.conv1.weight.shape[0]
    step, zero = (int(c) for c in gate_channels(d))
    frames = bank_tokens * model.projector.pool_stride
    with torch.no_grad():
        rhythm.conv1.weight[[step, zero]] = 0.0
        rhythm.conv1.bias[[step, zero]] = 0.0
        rhythm.embed_positions.weight[:, [step, zero]] = 0.0
        rhythm.embed_positions.weight[:frames, step] = 1.0
        rhythm.embed_positions.weight[frames:, step] = -1.0
        for layer in rhythm.layers:
            for linear in (layer.self_attn.out_proj, layer.fc2):
                linear.weight[[step, zero]] = 0.0
                linear.bias[[step, zero]] = 0.0
        rhythm.layer_norm.weight[[step, zero]] = GATE_NORM_GAIN
        gate = model.fusion.router.gate  # logits over (temporal, global) from cat(temporal, global)
        gate.weight[0, step], gate.weight[0, zero] = ROUTER_SHARPNESS, -ROUTER_SHARPNESS
        for linear in _fusion_branches(model):  # nothing may move the gate channels before or after the router
            linear.weight[[step, zero]] = 0.0
            linear.bias[[step, zero]] = 0.0
        model.projector.linear_1.weight[:, [step, zero]] = 0.0


def _fusion_branches(model) -> list:
    """The fusion's residual output projections: its FFN's and each block's injector and extractor."""
    blocks = model.fusion.blocks
    return [model.fusion.ffn[2]] + [b.injector.out_proj for b in blocks] + [b.extractor.out_proj for b in blocks]


def _own(expert, channels, gain: float) -> None:
    """The expert's final layer norm passes ``channels`` (times ``gain``) and writes zero in the others."""
    expert.layer_norm.weight.zero_()
    expert.layer_norm.weight[channels] = gain
    expert.layer_norm.bias.zero_()


def rhythm_init(expert, freqs: np.ndarray, channels: np.ndarray, sharpness: float = RHYTHM_SHARPNESS,
                gain: float = RHYTHM_GAIN) -> None:
    """Make the expert's first attention a periodogram of the onsets at ``freqs`` (Hz), into ``channels``
    (cos and sin of each frequency, interleaved).

    The position table holds cos and sin of 2 pi f t in those channels and nothing in the other bank's
    (conv1 writes nothing in either; above the banks it keeps its random filters). The attention's query
    is a constant (its bias), its key the frame's onset strength (the band-onset filters), so every token's
    weights are softmax(sharpness * onset) over the window, near-linear in the onsets at this sharpness; the
    values are the sinusoid channels, so each token receives sum_t w_t exp(2 pi i f t): the onset envelope's
    Fourier coefficient at each frequency (plus a leak). Its magnitude peaks at the beat (BEAT_BANK_HZ) and
    the bar (BAR_BANK_HZ), both in the temporal expert (rhythm_split); the rate is 50 Hz, so beats up to 25 Hz
    are resolved before any pooling. The projector's first rows take the magnitudes (magnitude_init).
    """
    import torch

    d = expert.conv1.weight.shape[0]
    if channels[-1] >= d:
        raise ValueError(f"{len(freqs)} rhythm frequencies need d_model > {int(channels[-1])}, not {d}")
    seconds = torch.arange(expert.embed_positions.weight.shape[0], dtype=torch.float64) * 0.02  # 50 Hz
    phase = 2 * torch.pi * torch.tensor(freqs)[None] * seconds[:, None]
    layer = expert.layers[0]
    attn = layer.self_attn
    channels = torch.as_tensor(channels)
    with torch.no_grad():
        expert.conv1.weight[RAMP:BANKS_END] = 0.0
        expert.embed_positions.weight[:, RAMP + 1:BANKS_END] = 0.0
        expert.embed_positions.weight[:, channels[0::2]] = torch.cos(phase).float()
        expert.embed_positions.weight[:, channels[1::2]] = torch.sin(phase).float()
        attn.q_proj.weight.zero_()
        attn.q_proj.bias.zero_()
        attn.q_proj.bias[0] = sharpness / attn.scaling
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[0, 16:20] = 1.0  # the band onsets (listening_filters)
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.zero_()
        attn.v_proj.weight[channels, channels] = 1.0
        attn.out_proj.weight.zero_()
        attn.out_proj.weight[channels, channels] = gain
        attn.out_proj.bias.zero_()
        layer.fc2.weight.zero_()
        layer.fc2.bias.zero_()


def magnitude_init(projector, channels: np.ndarray, directions: int = RECTIFIER_DIRECTIONS,
                   scale: float = 1.0) -> None:
    """The projector's first rows: for each (cos, sin) pair of ``channels``, ``directions`` GELUs of its
    projection on equally spaced angles. Their sum is even in the projection, so the linear parts cancel
    and what is left grows with the frequency's magnitude whatever the beat's phase (at small inputs, as
    its square: the sum of cos^2 over the angles is constant). At this scale they are no louder than the
    rows that carry the listening channels (key, instruments); see the body for those."""
    import torch

    pairs = channels.reshape(-1, 2)
    angles = 2 * np.pi * np.arange(directions) / directions
    rows = len(pairs) * directions
    weight = projector.linear_1.weight
    if rows + 2 * RAMP > weight.shape[0]:
        raise ValueError(f"{len(pairs)} bank frequencies need a projector hidden_dim of {rows + 2 * RAMP} or more")
    with torch.no_grad():
        weight[:rows] = 0.0
        projector.linear_1.bias[:rows] = 0.0
        # The other rows read the listening channels, the clock and the random projections, not the banks:
        # the first of them copy each listening channel, both signs, so key and timbre reach the decoder as
        # plainly as the rhythm does.
        weight[rows:, channels] = 0.0
        copies = slice(rows, rows + 2 * RAMP)
        weight[copies] = 0.0
        projector.linear_1.bias[copies] = 0.0
        for i in range(RAMP):
            weight[rows + 2 * i, i], weight[rows + 2 * i + 1, i] = scale, -scale
        for i, (c, s) in enumerate(pairs):
            for k, angle in enumerate(angles):
                weight[i * directions + k, c] = scale * np.cos(angle)
                weight[i * directions + k, s] = scale * np.sin(angle)
