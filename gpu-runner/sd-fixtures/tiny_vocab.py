"""A small CLIP-style BPE vocabulary (vocab.json + merges.txt) trained on a built-in caption corpus.

CLIP's files have a fixed layout that its tokenizer (and ours in TypeScript) relies on: the 256 byte-level
characters, the same 256 with the `</w>` end-of-word suffix, one token per merge in merge order, then
`<|startoftext|>` and `<|endoftext|>`. Words come from `tokenizers` with CLIP's own normalisation and
pre-tokenisation (the pipeline transformers' CLIPTokenizerFast converter builds); the merges are learnt from them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers.models.clip.tokenization_clip import bytes_to_unicode

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# CLIP's pre-tokenisation pattern (transformers/models/clip/tokenization_clip.py).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

SUBJECTS = [
    "a cat",
    "a dog",
    "an old man",
    "a young woman",
    "a red fox",
    "a lighthouse",
    "a castle",
    "a sailing ship",
    "a mountain village",
    "a bowl of fruit",
    "a vintage car",
    "a robot",
    "an astronaut",
    "a dragon",
    "a forest path",
    "a city street",
    "a bridge",
    "a waterfall",
    "a cup of coffee",
    "a bicycle",
    "a horse",
    "an owl",
    "a garden",
    "a teapot",
    "a portrait of a knight",
    "a small house",
    "a field of sunflowers",
    "a snowy peak",
    "a harbor",
]
SETTINGS = [
    "at sunset",
    "in the rain",
    "under a starry sky",
    "on a foggy morning",
    "in winter",
    "by the sea",
    "in a quiet room",
    "at night",
    "in spring",
    "in the desert",
    "on a busy market",
    "in soft morning light",
]
STYLES = [
    "oil painting",
    "watercolor",
    "photograph",
    "digital art",
    "pencil sketch",
    "anime style",
    "studio lighting",
    "highly detailed",
    "cinematic",
    "8k",
    "sharp focus",
    "trending on artstation",
    "pastel colors",
    "35mm film",
    "low poly",
    "pixel art",
    "ukiyo-e woodblock print",
    "concept art",
    "bokeh",
    "golden hour",
]
NEGATIVES = ["blurry", "low quality", "watermark", "deformed hands", "text", "jpeg artifacts", "ugly", "bad anatomy"]


def caption_corpus() -> list[str]:
    """Deterministic captions combining subjects, settings and styles (no randomness needed)."""
    lines: list[str] = []
    for i, subject in enumerate(SUBJECTS):
        for j, setting in enumerate(SETTINGS):
            style = STYLES[(i * 7 + j * 3) % len(STYLES)]
            extra = STYLES[(i + j * 5) % len(STYLES)]
            lines.append(f"{subject} {setting}, {style}, {extra}")
    lines += [", ".join(NEGATIVES[k:] + NEGATIVES[:k]) for k in range(len(NEGATIVES))]
    lines += ["It's a photo of the 2 cats; they're happy!", "Don't add text: 1024x1024 (masterpiece) [sketch]"]
    return lines


def _clip_words() -> Counter:
    """Corpus words as CLIP's tokenizer sees them: NFC, whitespace collapsed, lower-cased, CLIP's regex, byte-level."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words: Counter = Counter()
    for line in caption_corpus():
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)))
    return words


def train_merges(max_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE merges with CLIP's `</w>` suffix on each word's last symbol. Learnt here rather than by `tokenizers`'
    BpeTrainer, whose tie-breaking between equally frequent pairs changes from run to run; here ties go to the
    lexicographically smallest pair, and a pair whose result is already a token is skipped (CLIP's layout needs
    one new token per merge)."""
    counts = _clip_words()
    words = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in counts}
    known = set(bytes_to_unicode().values()) | {c + "</w>" for c in bytes_to_unicode().values()}
    merges: list[tuple[str, str]] = []
    skipped: set[tuple[str, str]] = set()
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                if pair not in skipped:
                    pairs[pair] += counts[w]
        best = min(pairs, key=lambda p: (-pairs[p], p), default=None)
        if best is None or pairs[best] < min_frequency:
            break
        if best[0] + best[1] in known:
            skipped.add(best)
            continue
        merges.append(best)
        known.add(best[0] + best[1])
        for w, symbols in words.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[w] = merged
    return merges


def write_vocab(dst: Path, max_merges: int = 480) -> dict[str, int]:
    """Writes vocab.json and merges.txt in CLIP's layout; returns the vocab."""
    byte_chars = list(bytes_to_unicode().values())
    merges = train_merges(max_merges)
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab


def clip_tokenizer(src: Path, pad: str):
    """A CLIPTokenizer over the written files; `pad` is EOS (SD1.x, SDXL's first) or "!" (OpenCLIP: SD2, SDXL's second)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab_file=str(src / "vocab.json"),
        merges_file=str(src / "merges.txt"),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad,
        model_max_length=77,
    )
