"""The audio front end: a waveform window to the log-mel spectrogram or MFCC a model was trained on.

One function, ``audio_features``, used by the training toolchain (convert.dataset) and by the device
(edge.audio), with every parameter taken from the model card's ``audio`` section: the same numbers in,
the same features out. Pure numpy (no librosa, no numba on the device); the test suite checks agreement
with librosa where it is installed. A front end with a background floor (``background = "floor"``) keeps
state from one window to the next: ``AudioFrontEnd`` holds it, and both the dataset builder and the
device feed it the windows of a sound in order.

Conventions, chosen to match librosa with ``center=False``: frames of ``win_length`` samples every
``hop_length`` (none padded), a periodic Hann window zero-padded to ``n_fft``, the power spectrum, a mel
filterbank (Slaney's scale and area normalization, or HTK's), then ``10 log10(max(mel, amin))`` dB or
``ln(mel + offset)`` (YAMNet's), MFCC as the orthonormal DCT-II of the dB log-mel, then the normalization.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge.card import AudioSpec, pitch_quefrencies


def hz_to_mel(hz: np.ndarray | float, scale: str) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney: linear below 1 kHz, logarithmic above
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    linear = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, linear)


def mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def mel_filterbank(rate: int, n_fft: int, bands: int, fmin: float, fmax: float, scale: str) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular filters; Slaney's are area-normalized, HTK's peak at 1."""
    fft_hz = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), bands + 2), scale)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if scale == "slaney":
        weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def sparse_filterbank(rate: int, n_fft: int, bands: int, fmin: float, fmax: float, scale: str):
    """The filterbank's non-zero weights band by band: (FFT bins, weights, where each band starts, empty bands)."""
    weights = mel_filterbank(rate, n_fft, bands, fmin, fmax, scale)
    band_of, bin_of = np.nonzero(weights)  # row-major: grouped by band
    starts = np.searchsorted(band_of, np.arange(bands))
    empty = np.bincount(band_of, minlength=bands) == 0
    return bin_of, weights[band_of, bin_of], np.minimum(starts, max(0, bin_of.size - 1)), empty


def apply_filterbank(power: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """``power @ filters.T`` without BLAS: a numpy built with OpenBLAS spreads this small product over
    every core, which on a loaded 2-core machine made it 150 times slower (12 ms against 0.08)."""
    bins, weights, starts, empty = sparse_filterbank(spec.rate, spec.n_fft, spec.mel_bands, spec.fmin, spec.fmax,
                                                     spec.mel_scale)
    mel = np.add.reduceat(power[:, bins] * weights, starts, axis=1)
    mel[:, empty] = 0.0
    return mel


@lru_cache(maxsize=8)
def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """The periodic Hann window, centred in ``n_fft`` as librosa pads it."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    padded = np.zeros(n_fft, dtype=np.float64)
    start = (n_fft - win_length) // 2
    padded[start:start + win_length] = window
    padded.setflags(write=False)
    return padded


@lru_cache(maxsize=8)
def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II as a (n_out, n_in) matrix."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    basis.setflags(write=False)
    return basis.astype(np.float32)


def frame_count(samples: int, spec: AudioSpec) -> int:
    return 0 if samples < spec.win_length else 1 + (samples - spec.win_length) // spec.hop_length


def power_spectrogram(waveform: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """(frames, n_fft // 2 + 1) power spectra of the un-padded frames."""
    x = np.asarray(waveform, dtype=np.float32)
    frames = frame_count(x.size, spec)
    if frames == 0:
        raise ValueError(f"{x.size} samples are fewer than one window of {spec.win_length}")
    start = (spec.n_fft - spec.win_length) // 2
    # frames of n_fft samples whose middle win_length the window keeps, as librosa frames them
    padded = np.pad(x, (start, spec.n_fft - spec.win_length - start))
    strided = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[::spec.hop_length][:frames]
    windowed = strided * hann_window(spec.win_length, spec.n_fft).astype(np.float32)
    return np.abs(np.fft.rfft(windowed, axis=1)).astype(np.float32) ** 2


def log_mel(waveform: np.ndarray, spec: AudioSpec, power: np.ndarray | None = None) -> np.ndarray:
    """(frames, mel_bands) log-mel spectrogram, before normalization (of ``power`` when given)."""
    mel = apply_filterbank(power_spectrogram(waveform, spec) if power is None else power, spec)
    if spec.log == "db":
        return (10.0 * np.log10(np.maximum(mel, spec.amin))).astype(np.float32)
    return np.log(mel + spec.log_offset).astype(np.float32)


@lru_cache(maxsize=8)
def pitch_bases(spec: AudioSpec) -> tuple[tuple[int, int, np.ndarray], ...]:
    """For each of ``pitch_bands`` equal parts of fmin-fmax: its FFT bins (first, last + 1) and the
    (bins, quefrencies) matrix that takes their dB to the harmonic ripple's depth at each quefrency.

    The cepstrum of the band alone: its dB less their tapered mean, under a Hann taper summing to 1, through
    the inverse real FFT at the wanted quefrencies only (a matrix: the FFT of every quefrency cost 5 times
    more). A ripple ``A cos(2 pi k q / n_fft)`` dB gives ``2 A``, its depth from peak to valley."""
    quefrencies, _ = pitch_quefrencies(spec.rate, spec.pitch_fmin, spec.pitch_fmax, spec.pitch_bins)
    fft_hz = np.linspace(0.0, spec.rate / 2.0, spec.n_fft // 2 + 1)
    edges = np.linspace(spec.fmin, spec.fmax, spec.pitch_bands + 1)
    bases = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = np.flatnonzero((fft_hz > low) & (fft_hz < high))
        first, stop = int(inside[0]), int(inside[-1]) + 1
        k = np.arange(first, stop)
        taper = np.sin(np.pi * (fft_hz[k] - low) / (high - low)) ** 2
        taper /= taper.sum()
        cosines = np.cos(2.0 * np.pi * np.outer(k, quefrencies) / spec.n_fft)
        halves = np.where((k == 0) | (k == spec.n_fft // 2), 1.0, 2.0)  # irfft counts the inner bins twice
        basis = 2.0 * (halves * taper)[:, None] * (cosines - taper @ cosines)
        basis = basis.astype(np.float32)
        basis.setflags(write=False)
        bases.append((first, stop, basis))
    return tuple(bases)


def pitch_salience(power: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """(frames, pitch_bands * pitch_bins) how strongly each frame is pitched at a cry's fundamental, band by band.

    The cepstrum of the log power spectrum: harmonics of f0 ripple the dB spectrum with a period of f0, which
    shows at the quefrency rate / f0 samples. Each band is transformed on its own, so a cry's top harmonics
    above a TV's band are seen even where the TV buries its low ones. A bin holds the deepest ripple (dB, peak
    to valley) over its whole periods. Independent of the level and of a smooth spectral tilt; a broadband
    noise or a fan leaves it near 0, a man's or woman's speech (f0 under the range) too, and steady notes
    light one bin for long.
    """
    _, starts = pitch_quefrencies(spec.rate, spec.pitch_fmin, spec.pitch_fmax, spec.pitch_bins)
    db = 10.0 * np.log10(np.maximum(power, spec.amin))
    ripples = [np.einsum("fk,kq->fq", db[:, first:stop], basis)  # no BLAS, as apply_filterbank
               for first, stop, basis in pitch_bases(spec)]
    return np.concatenate([np.maximum.reduceat(ripple, starts, axis=1) for ripple in ripples], axis=1)


def normalize_fixed(features: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """``features`` (..., feature_size) less the card's training mean and over its scale: the device's windows
    and ``cryedge dataset build``'s, through this one function.

    The mean is the spectrum's; the pitch channels (0: not pitched) are only scaled. In float32, as the models
    were trained: float64 arithmetic moved the features by up to 3e-7, enough for ``demo-audio build`` to
    train other weights than the bundled model's."""
    mean = np.where(np.arange(features.shape[-1]) < spec.spectrum_size, spec.mean, 0.0).astype(np.float32)
    return (features.astype(np.float32, copy=False) - mean) / np.float32(spec.std)


class BackgroundFloor:
    """The background under the log-mel, band by band, followed causally one frame at a time.

    The floor moves towards each new frame: by ``1 - exp(-frame / floor_fall_seconds)`` of the gap when the
    frame is below it, by ``1 - exp(-frame / floor_rise_seconds)`` when above. A quiet moment (a breath
    between two cries, a pause in the TV's speech) pulls it down within a tenth of a second; a cry lifts it
    only over seconds. Subtracted from the log-mel, it leaves what stands above a steady fan, hiss or hum,
    at any microphone gain. The first frame after a reset starts it.
    """

    def __init__(self, spec: AudioSpec):
        frame_seconds = spec.hop_length / spec.rate
        self.rise = 1.0 - np.exp(-frame_seconds / spec.floor_rise_seconds)
        self.fall = 1.0 - np.exp(-frame_seconds / spec.floor_fall_seconds)
        self.level: np.ndarray | None = None

    def reset(self) -> None:
        self.level = None

    def follow(self, frames: np.ndarray) -> np.ndarray:
        """Move through ``frames`` (frames, bands) in time order; the floor after the last of them."""
        level = np.array(frames[0], dtype=np.float64) if self.level is None else self.level
        for frame in np.asarray(frames, dtype=np.float64):
            gap = frame - level
            level = level + gap * np.where(gap > 0.0, self.rise, self.fall)
        self.level = level
        return level.astype(np.float32)


def audio_features(waveform: np.ndarray, spec: AudioSpec, floor: BackgroundFloor | None = None) -> np.ndarray:
    """(frames, mel_bands or n_mfcc) float32 features of one window, normalized as the card says.

    With ``background = "floor"`` the log-mel minus ``floor`` as it stands at the window's last frame, after
    following the frames new since the previous window (every frame of the first one). ``floor`` None: a
    fresh one, which is the first window after a reset; windows in a row need one ``floor`` (``AudioFrontEnd``).
    """
    power = power_spectrogram(waveform, spec)
    features = log_mel(waveform, spec, power)
    if spec.background == "floor":
        floor = floor if floor is not None else BackgroundFloor(spec)
        fresh = features if floor.level is None else features[-spec.hop_frames:]
        features = features - floor.follow(fresh)
    if spec.features == "mfcc":
        features = np.einsum("fm,km->fk", features, dct_matrix(spec.n_mfcc, spec.mel_bands))  # no BLAS, as above
    if spec.pitch_bins:
        features = np.concatenate([features, pitch_salience(power, spec)], axis=1)
    if spec.normalization == "fixed":
        features = normalize_fixed(features, spec)
    elif spec.normalization == "patch":
        features = (features - features.mean()) / max(float(features.std()), 1e-6)
    return features.astype(np.float32)


class AudioFrontEnd:
    """The card's front end over the windows of one sound, in order: what the model sees for each.

    Keeps the state a front end carries between windows (the background floor); ``reset`` after a gap in
    the sound. The dataset builder and the device both go through it, window by window.
    """

    def __init__(self, spec: AudioSpec):
        self.spec = spec
        self.floor = BackgroundFloor(spec) if spec.background == "floor" else None

    def reset(self) -> None:
        if self.floor is not None:
            self.floor.reset()

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        return audio_features(waveform, self.spec, self.floor)
